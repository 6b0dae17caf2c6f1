"""Top-down pose datasets: COCO keypoints (pycocotools) and MPII (the HRNet json list), one person per item.

Each item is a dict::

    image    float32 (3, H, W)   RGB, normalized with posekit.keypoints MEAN/STD
    heatmaps float32 (J, H/4, W/4) Gaussian targets (sigma: posekit.heatmap.sigma_for), zeros without ground truth
    weights  float32 (J, 1)      1 for a labelled joint whose Gaussian falls in the map, else 0
    meta     dict of numbers / arrays (default_collate-able): index, image_id, center, scale, score, area,
             rotation, flip, joints (J, 3) image coords + visibility, affine (2, 3) image -> input

Per-sample faults (missing, empty or truncated image file, person with no labelled joint, box outside the image)
are skipped while the index is built, counted in `.skipped` (the first few named in `.skipped_names`), and
summarised in one warning that names them. A malformed annotation file, record or field (a keypoint that is not a
number, a missing bbox, a joint count that does not match) is a UserError naming the file, the record and the field.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from posekit import heatmap
from posekit.errors import UserError
from posekit.io import require_file
from posekit.keypoints import (
    COCO_FLIP_PAIRS,
    COCO_UPPER_BODY,
    DEFAULT_COCO,
    DEFAULT_MPII,
    MPII_FLIP_PAIRS,
    MPII_UPPER_BODY,
)
from posekit.transforms import (  # noqa: F401  (re-exported: other stages import them from posekit.data)
    apply_affine,
    box_to_center_scale,
    fit_aspect,
    get_affine,
    image_problem,
    load_image_crop,
    read_image,
    to_image,
)

SKIP_NAMES = 3  # skipped records named in the summary warning, per reason
_NUMBER = (int, float)


def check_numbers(v, n: int | None, file, field: str, what: str = "numbers") -> list:
    """v as a list of n finite JSON numbers (n None: any length), else a UserError naming file and field."""
    if not isinstance(v, (list, tuple)):
        raise UserError(f"{file}: {field}: expected a list of {n or ''}{' ' if n else ''}{what}, got "
                        f"{'null' if v is None else type(v).__name__}")
    if n is not None and len(v) != n:
        raise UserError(f"{file}: {field}: expected {n} {what}, got {len(v)}")
    if not set(map(type, v)) <= {int, float}:  # bool, str, None, lists: not numbers (C-speed set check first)
        j = next(j for j, x in enumerate(v) if type(x) not in _NUMBER)
        raise UserError(f"{file}: {field}[{j}]: expected a number, got {json.dumps(v[j])}")
    if float in set(map(type, v)) and not all(map(math.isfinite, v)):
        j = next(j for j, x in enumerate(v) if not math.isfinite(x))
        raise UserError(f"{file}: {field}[{j}]: expected a finite number, got {v[j]}")
    return list(v)


def read_json(path, what: str = "annotation file"):
    p = require_file(path, what)
    try:
        return json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise UserError(f"{p}: malformed {what}: {e}") from None


class TopDown(Dataset):
    """Shared item pipeline; subclasses fill `self.samples` (dicts: path, image_id, center, scale, joints, score,
    area) and `flip_pairs` / `upper_body`."""

    flip_pairs: tuple = ()
    upper_body: tuple = ()

    def __init__(self, input_size, train: bool, num_joints: int, sigma: float | None = None,
                 scale_factor: float = 0.35, rot_factor: float = 45.0, rot_prob: float = 0.6, flip: bool = True,
                 half_body_prob: float = 0.3, cache_images: bool = False):
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.heatmap_size = (self.input_size[0] // heatmap.STRIDE, self.input_size[1] // heatmap.STRIDE)
        self.train, self.num_joints = train, num_joints
        self.sigma = sigma or heatmap.sigma_for(self.heatmap_size)
        self.scale_factor, self.rot_factor, self.rot_prob = scale_factor, rot_factor, rot_prob
        self.flip, self.half_body_prob = flip, half_body_prob
        self.cache = {} if cache_images else None
        self.samples: list[dict] = []
        self.skipped: Counter = Counter()
        self.skipped_names: dict[str, list[str]] = {}

    # ---- index helpers ------------------------------------------------------------------------------------
    def _skip(self, reason: str, name):
        self.skipped[reason] += 1
        names = self.skipped_names.setdefault(reason, [])
        if len(names) < SKIP_NAMES:
            names.append(str(name))

    def _image_ok(self, path: Path) -> bool:
        why = image_problem(path)  # also a JPEG/PNG cut short: libjpeg would decode it with grey rows
        if why in ("missing", "empty"):
            self._skip("missing or empty image file", path)
        elif why:
            self._skip("unreadable image file", f"{path} ({why})")
        return why is None

    def _clip_box(self, box, width, height, record=""):
        """Clip (x, y, w, h) to the image; None (counted) when nothing of it is inside."""
        x, y, w, h = (float(v) for v in box)
        x1, y1 = max(0.0, x), max(0.0, y)
        x2, y2 = min(width - 1.0, x + max(0.0, w - 1)), min(height - 1.0, y + max(0.0, h - 1))
        if x2 <= x1 or y2 <= y1:
            self._skip("box outside the image", record)
            return None
        return [x1, y1, x2 - x1 + 1, y2 - y1 + 1]

    def _finish_index(self, src, limit):
        if limit:
            self.samples = self.samples[:limit]
        if self.skipped:
            parts = []
            for k, n in sorted(self.skipped.items()):
                names = self.skipped_names.get(k, [])
                more = ", ..." if n > len(names) else ""
                parts.append(f"{n} {k}" + (f": {', '.join(names)}{more}" if names else ""))
            warnings.warn(f"{src}: skipped {sum(self.skipped.values())} samples (" + "; ".join(parts) + ")",
                          stacklevel=3)
        if not self.samples:
            raise UserError(f"{src}: no usable person samples")

    # ---- items --------------------------------------------------------------------------------------------
    def __len__(self):
        return len(self.samples)

    def _image(self, path):
        if self.cache is not None and path in self.cache:
            return self.cache[path]
        img = read_image(path)
        if self.cache is not None:
            self.cache[path] = img
        return img

    def __getitem__(self, idx):
        for k in range(len(self)):
            s = self.samples[(idx + k) % len(self)]
            try:
                img = self._image(s["path"])
                break
            except UserError as e:  # corrupt despite a non-empty file: take the next sample, and say so
                warnings.warn(f"{e}; using another sample", stacklevel=2)
        else:
            raise UserError(f"{self.ann_file}: no readable image among {len(self)} samples")
        idx = (idx + k) % len(self)
        joints = s["joints"].copy()
        center, scale = s["center"].copy(), s["scale"].copy()
        rot, flip = 0.0, False
        if self.train:
            center, scale, rot, flip = self._augment(joints, center, scale)
        crop, M = load_image_crop(img, center, scale, self.input_size, rot, flip)
        pts = apply_affine(joints[:, :2], M)
        vis = joints[:, 2] > 0
        if flip:
            for a, b in self.flip_pairs:
                pts[[a, b]], vis[[a, b]] = pts[[b, a]], vis[[b, a]]
        hms, wts = heatmap.encode(pts, vis, self.heatmap_size, self.sigma)
        meta = {"index": idx, "image_id": s["image_id"], "center": center.astype(np.float32),
                "scale": scale.astype(np.float32), "score": np.float32(s["score"]),
                "area": np.float32(s["area"]), "rotation": np.float32(rot), "flip": flip,
                "joints": joints.astype(np.float32), "affine": M.astype(np.float32)}
        return {"image": torch.from_numpy(crop), "heatmaps": torch.from_numpy(hms), "weights": torch.from_numpy(wts),
                "meta": meta}

    def _augment(self, joints, center, scale):
        """Half-body, random scale / rotation / horizontal flip (SimpleBaseline's recipe); torch RNG so that
        DataLoader worker seeding and checkpointed RNG state make it reproducible."""
        r = torch.rand(6).tolist()
        vis = joints[:, 2] > 0
        if vis.sum() > 8 and r[0] < self.half_body_prob and self.upper_body:
            hb = self._half_body(joints, vis, upper_first=r[1] < 0.5)
            if hb is not None:
                center, scale = hb
        sf, rf = self.scale_factor, self.rot_factor
        scale = scale * float(np.clip(torch.randn(1).item() * sf + 1, 1 - sf, 1 + sf))
        rot = float(np.clip(torch.randn(1).item() * rf, -2 * rf, 2 * rf)) if r[2] < self.rot_prob else 0.0
        flip = self.flip and r[3] < 0.5
        return center, scale, rot, flip

    def _half_body(self, joints, vis, upper_first: bool):
        upper = [j for j in range(self.num_joints) if vis[j] and j in self.upper_body]
        lower = [j for j in range(self.num_joints) if vis[j] and j not in self.upper_body]
        sel = upper if (upper_first and len(upper) > 2) or len(lower) < 2 else lower
        if len(sel) < 2:
            return None
        p = joints[sel, :2]
        lo, hi = p.min(0), p.max(0)
        center = ((lo + hi) / 2).astype(np.float32)
        scale = fit_aspect(hi - lo, self.input_size) * 1.5
        return center, scale


class CocoPose(TopDown):
    """COCO keypoints, top-down: one item per person box.

    root: a COCO tree (`train2017/`, `val2017/`, `annotations/person_keypoints_{split}.json`), default the bundled
    data/coco-mini. boxes: "gt" (annotated persons with at least one labelled joint, crowds excluded) or the path of
    a person detection results json (COCO results format; the standard top-down evaluation). train: augment.
    """

    flip_pairs = COCO_FLIP_PAIRS
    upper_body = COCO_UPPER_BODY

    def __init__(self, root=DEFAULT_COCO, split: str = "train2017", input_size=(256, 192), train: bool = True,
                 boxes="gt", num_joints: int = 17, det_score_thresh: float = 0.0, limit: int | None = None, **kw):
        super().__init__(input_size, train, num_joints, **kw)
        self.root, self.split = Path(root), split
        self.ann_file = self.root / "annotations" / f"person_keypoints_{split}.json"
        self.coco = load_coco(self.ann_file)
        cats = self.coco.loadCats(self.coco.getCatIds(catNms=["person"])) or self.coco.loadCats(self.coco.getCatIds())
        nk = len(cats[0].get("keypoints", [])) if cats else 0
        if nk != num_joints:
            raise UserError(f"{self.ann_file}: categories[0].keypoints: the data has {nk} joints, the model "
                            f"{num_joints} (num_joints mismatch)")
        self.cat_id = cats[0]["id"]
        self.boxes = boxes
        if str(boxes) == "gt":
            self._index_gt()
        else:
            self._index_dets(boxes, det_score_thresh)
        self._finish_index(self.ann_file, limit)

    def _img(self, image_id):
        info = self.coco.imgs[image_id]
        return info, self.root / self.split / info["file_name"]

    def _index_gt(self):
        for image_id in sorted(self.coco.imgs):
            info, path = self._img(image_id)
            anns = [a for a in self.coco.imgToAnns.get(image_id, []) if a.get("category_id") == self.cat_id
                    and not a.get("iscrowd", 0)]
            if not anns or not self._image_ok(path):
                continue
            for a in anns:  # load_coco checked every field
                kps = np.asarray(a["keypoints"], np.float32).reshape(-1, 3)
                if not (kps[:, 2] > 0).any():
                    self._skip("persons with no labelled joint", f"annotation {a['id']}")
                    continue
                box = self._clip_box(a["bbox"], info["width"], info["height"], f"annotation {a['id']}")
                if box is None:
                    continue
                self._add(path, image_id, box, kps, 1.0, a.get("area", box[2] * box[3]))

    def _index_dets(self, det_file, thresh):
        dets = read_json(det_file, "detection results file")
        if not isinstance(dets, list):
            raise UserError(f"{det_file}: malformed detection results file: expected a list of "
                            "{image_id, category_id, bbox, score}")
        zeros = np.zeros((self.num_joints, 3), np.float32)
        checked = {}
        for i, d in enumerate(dets):
            if not isinstance(d, dict):
                raise UserError(f"{det_file}: [{i}]: expected an object with image_id, bbox [x, y, w, h] and score")
            for key in ("image_id", "bbox"):
                if key not in d:
                    raise UserError(f"{det_file}: [{i}].{key}: missing")
            image_id, cat = d["image_id"], d.get("category_id", self.cat_id)
            box = check_numbers(d["bbox"], 4, det_file, f"[{i}].bbox")
            score = check_numbers([d.get("score", 1.0)], 1, det_file, f"[{i}].score")[0]
            if cat != self.cat_id or score < thresh:
                continue
            if image_id not in self.coco.imgs:
                self._skip("detections on images not in the split", f"[{i}] image_id {image_id!r}")
                continue
            info, path = self._img(image_id)
            if image_id not in checked:
                checked[image_id] = self._image_ok(path)
            if not checked[image_id]:
                continue
            box = self._clip_box(box, info["width"], info["height"], f"detection [{i}]")
            if box is not None:
                self._add(path, image_id, box, zeros, score, box[2] * box[3])

    def _add(self, path, image_id, box, joints, score, area):
        center, scale = box_to_center_scale(box, self.input_size)
        self.samples.append({"path": path, "image_id": int(image_id), "center": center, "scale": scale,
                             "joints": joints, "score": float(score), "area": float(area)})


def load_coco(ann_file, evaluation: bool = False):
    """A pycocotools COCO index from a keypoints json, with a one-line UserError for a malformed file (evaluation:
    also the fields COCOeval reads: area, num_keypoints)."""
    from pycocotools.coco import COCO

    d = read_json(ann_file)
    for key in ("images", "annotations", "categories"):
        if not isinstance(d, dict) or not isinstance(d.get(key), list):
            raise UserError(f"{ann_file}: {key}: missing or not a list (not a COCO keypoints file)")
    check_coco(d, ann_file, evaluation)
    coco = COCO()  # built from the parsed dict: no prints, and our own error messages
    coco.dataset = d
    with contextlib.redirect_stdout(io.StringIO()):  # createIndex prints progress
        coco.createIndex()
    return coco


def check_coco(d: dict, ann_file, evaluation: bool = False):
    """Every record a reader of a COCO keypoints file uses, checked once: a UserError names the file, the record
    (images[i] (id N), annotations[i] (id N), categories[i]) and the field."""

    def rec(key, i, r):
        return f"{key}[{i}]" + (f" (id {r['id']})" if isinstance(r, dict) and "id" in r else "")

    def need(key, i, r, field, ok, what):
        if not isinstance(r, dict):
            raise UserError(f"{ann_file}: {key}[{i}]: expected an object, got {json.dumps(r)[:40]}")
        if field not in r:
            raise UserError(f"{ann_file}: {rec(key, i, r)}.{field}: missing")
        if not ok(r[field]):
            raise UserError(f"{ann_file}: {rec(key, i, r)}.{field}: expected {what}, got {json.dumps(r[field])[:40]}")
        return r[field]

    def is_int(v):
        return type(v) is int

    def is_pos(v):
        return type(v) in _NUMBER and math.isfinite(v) and v > 0

    def unique_id(section, i, r, seen: set, what: str) -> int:
        v = need(section, i, r, "id", is_int, "an integer")
        if v in seen:
            raise UserError(f"{ann_file}: {rec(section, i, r)}.id: duplicate {what} id {v}")
        seen.add(v)
        return v

    joints = {}
    for i, c in enumerate(d["categories"]):
        cid = need("categories", i, c, "id", is_int, "an integer")
        kp = c.get("keypoints")
        if kp is not None and not (isinstance(kp, list) and all(isinstance(k, str) for k in kp)):
            raise UserError(f"{ann_file}: {rec('categories', i, c)}.keypoints: expected a list of joint names")
        joints[cid] = len(kp or [])
    images = set()
    for i, im in enumerate(d["images"]):
        unique_id("images", i, im, images, "image")
        need("images", i, im, "file_name", lambda v: isinstance(v, str) and v.strip(), "a file name")
        need("images", i, im, "width", is_pos, "a positive number")
        need("images", i, im, "height", is_pos, "a positive number")
    ann_ids = set()
    for i, a in enumerate(d["annotations"]):
        unique_id("annotations", i, a, ann_ids, "annotation")
        where = rec("annotations", i, a)
        if need("annotations", i, a, "image_id", is_int, "an integer") not in images:
            raise UserError(f"{ann_file}: {where}.image_id: {a['image_id']} is not in images")
        cat = need("annotations", i, a, "category_id", is_int, "an integer")
        if cat not in joints:
            raise UserError(f"{ann_file}: {where}.category_id: {cat} is not in categories")
        need("annotations", i, a, "bbox", lambda v: True, "")
        box = check_numbers(a["bbox"], 4, ann_file, f"{where}.bbox")
        if box[2] < 0 or box[3] < 0:
            raise UserError(f"{ann_file}: {where}.bbox: negative width or height {box[2:]}")
        k = joints[cat]
        if k:
            need("annotations", i, a, "keypoints", lambda v: True, "")
            kps = a["keypoints"]
            if isinstance(kps, list) and len(kps) != 3 * k:
                n = f"{len(kps) // 3} joints" if len(kps) % 3 == 0 else "not a multiple of 3"
                raise UserError(f"{ann_file}: {where}.keypoints: {len(kps)} values ({n}), expected {3 * k} "
                                f"({k} joints x (x, y, v) as categories' keypoints names)")
            check_numbers(kps, 3 * k, ann_file, f"{where}.keypoints", "values")
        for key in ("area", "num_keypoints") if evaluation else ():
            need("annotations", i, a, key, lambda v: True, "")
        for key in ("area", "score", "num_keypoints"):
            if key in a and not (type(a[key]) in _NUMBER and math.isfinite(a[key])):
                raise UserError(f"{ann_file}: {where}.{key}: expected a finite number, got {json.dumps(a[key])[:40]}")


class MpiiPose(TopDown):
    """MPII in the HRNet json list format: [{image, center, scale, joints[16][2], joints_vis[16]}, ...].

    root holds `images/` and `annot/{split}.json`. MPII's center/scale are 1-based MATLAB values with scale =
    person height / 200; converted as HRNet does (center y += 15 * scale, scale * 1.25, 0-based).
    """

    flip_pairs = MPII_FLIP_PAIRS
    upper_body = MPII_UPPER_BODY

    def __init__(self, root=DEFAULT_MPII, split: str = "valid", input_size=(256, 256), train: bool = True,
                 num_joints: int = 16, limit: int | None = None, **kw):
        super().__init__(input_size, train, num_joints, **kw)
        self.root, self.split = Path(root), split
        self.ann_file = self.root / "annot" / f"{split}.json"
        entries = read_json(self.ann_file)
        if not isinstance(entries, list):
            raise UserError(f"{self.ann_file}: malformed MPII file: expected a list of "
                            "{image, center, scale, joints, joints_vis}")
        self.gt = []  # (joints (16, 2) 0-based, visible (16,)) per kept sample, for pckh()
        f = self.ann_file
        for i, e in enumerate(entries):
            if not isinstance(e, dict):
                raise UserError(f"{f}: [{i}]: expected an object with image, center [x, y], scale, joints")
            for key in ("image", "center", "scale", "joints"):
                if key not in e:
                    raise UserError(f"{f}: [{i}].{key}: missing")
            name = e["image"]
            if not isinstance(name, str) or not name.strip():
                raise UserError(f"{f}: [{i}].image: expected a file name, got {json.dumps(name)[:40]}")
            rows = e["joints"]
            if not isinstance(rows, list):
                raise UserError(f"{f}: [{i}].joints: expected a list of [x, y], got {json.dumps(rows)[:40]}")
            if len(rows) != num_joints:
                raise UserError(f"{f}: [{i}].joints: the data has {len(rows)} joints, the model {num_joints} "
                                "(num_joints mismatch)")
            joints = np.asarray([check_numbers(r, 2, f, f"[{i}].joints[{j}]") for j, r in enumerate(rows)],
                                np.float32).reshape(-1, 2) - 1
            vis = np.asarray(check_numbers(e.get("joints_vis", [1] * num_joints), num_joints, f, f"[{i}].joints_vis"),
                             np.float32)
            c = np.asarray(check_numbers(e["center"], 2, f, f"[{i}].center"), np.float32) - 1
            s = check_numbers([e["scale"]], 1, f, f"[{i}].scale")[0]
            if s <= 0:
                raise UserError(f"{f}: [{i}].scale: expected a positive number, got {s}")
            path = self.root / "images" / name
            if not self._image_ok(path):
                continue
            if not (vis > 0).any() and train:
                self._skip("persons with no labelled joint", f"[{i}]")
                continue
            if c[0] > 0:
                c[1] += 15 * s
            scale = fit_aspect((s * 200 * 1.25, s * 200 * 1.25), self.input_size)
            kps = np.concatenate([joints, vis[:, None]], 1)
            self.samples.append({"path": path, "image_id": i, "center": c, "scale": scale, "joints": kps,
                                 "score": 1.0, "area": float(scale[0] * scale[1]), "entry": i})
            self.gt.append((joints, vis))
        self._finish_index(self.ann_file, limit)
        self.gt = self.gt[: len(self.samples)]



def check_pose_data(num_joints: int, root=None):
    """Read and check the annotation files (and that their images exist) that calibration and held-out crops will
    come from, as convert's calibration_batches / eval_batches pick them, so that a stage refuses bad data before
    it writes anything (convert: no arch.yaml or model_fp32.tflite left without a manifest)."""
    with warnings.catch_warnings():  # skipped persons are fine for calibration crops
        warnings.simplefilter("ignore", UserWarning)
        if num_joints == 17:
            for split in ("train2017", "val2017"):
                CocoPose(root or DEFAULT_COCO, split, (64, 48), train=False, num_joints=num_joints)
        elif num_joints == 16:
            MpiiPose(root or DEFAULT_MPII, "valid", (64, 64), train=False, num_joints=num_joints)
        else:
            raise UserError(f"calibration data: no bundled dataset with {num_joints} joints (give --data)")
