"""Scoring: COCO OKS AP through pycocotools, MPII PCKh, and the one function every runtime is scored with.

`evaluate_model(predict_fn, ...)` runs any runtime (PyTorch, TFLite, ONNX Runtime, Core ML) on the same crops the
data pipeline makes, decodes with posekit.heatmap (argmax + quarter-pixel shift, optional flip test), projects the
keypoints back to the image, rescores, and evaluates with COCOeval(iouType="keypoints").
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

import numpy as np

from posekit import heatmap
from posekit.errors import UserError
from posekit.io import require_file
from posekit.keypoints import COCO_FLIP_PAIRS, COCO_SIGMAS, DEFAULT_COCO, DEFAULT_MPII, MPII_FLIP_PAIRS
from posekit.transforms import to_image

COCO_STATS = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")
VIS_THRESH = 0.2  # joints above this confidence count in the person score (SimpleBaseline's in_vis_thre)
OKS_NMS_THRESH = 0.9


def coco_eval(results: list[dict], ann_file, img_ids=None) -> dict:
    """OKS AP/AR of COCO keypoint results ([{image_id, category_id, keypoints [x, y, s]*J, score}]) against
    `ann_file`, restricted to `img_ids` when given. Returns {AP, AP50, AP75, APm, APl, AR, AR50, AR75, ARm, ARl}."""
    from pycocotools.cocoeval import COCOeval

    from posekit.data import load_coco

    if not results:
        return dict.fromkeys(COCO_STATS, 0.0)
    gt = load_coco(ann_file, evaluation=True)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress and summary table
        dt = gt.loadRes([dict(r) for r in results])
        ev = COCOeval(gt, dt, iouType="keypoints")
        if img_ids is not None:
            ev.params.imgIds = sorted({int(i) for i in img_ids})
        sig = np.array(COCO_SIGMAS) / 10.0
        if len(results[0]["keypoints"]) // 3 == len(sig):
            ev.params.kpt_oks_sigmas = sig
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {k: float(v) for k, v in zip(COCO_STATS, ev.stats)}


def _batches(dataset, batch_size: int, workers: int = 0):
    """Yield (images np (N,3,H,W), metas list[dict]) in dataset order."""
    if workers > 0:
        from torch.utils.data import DataLoader

        for b in DataLoader(dataset, batch_size, shuffle=False, num_workers=workers, collate_fn=list):
            yield np.stack([it["image"].numpy() for it in b]), b
        return
    for i in range(0, len(dataset), batch_size):
        b = [dataset[j] for j in range(i, min(i + batch_size, len(dataset)))]
        yield np.stack([it["image"].numpy() for it in b]), b


def _run(dataset, heatmap_fn, batch_size: int, workers: int = 0, progress: bool = False):
    """heatmap_fn(images, items) -> heatmaps; returns (keypoints (N,J,3) in image coords + confidence, metas)."""
    from tqdm import tqdm

    kps, metas = [], []
    it = _batches(dataset, batch_size, workers)
    for images, items in tqdm(it, total=-(-len(dataset) // batch_size), desc="eval", disable=not progress,
                              leave=False):
        hms = np.asarray(heatmap_fn(images, items), np.float32)
        kps += list(keypoints_from_heatmaps(hms, [it["meta"]["affine"] for it in items]))
        metas += [it["meta"] for it in items]
    return kps, metas


def keypoints_from_heatmaps(heatmaps, affines) -> np.ndarray:
    """Heatmaps (N, J, h, w) of crops made with `affines` (N of 2x3 image -> input, as load_image_crop returns)
    -> keypoints (N, J, 3): x, y in image pixels and the heatmap peak as confidence. Decoding and the coordinate
    convention of posekit.heatmap; use this rather than `coords * 4`."""
    hms = np.asarray(heatmaps, np.float32)
    coords, maxvals = heatmap.decode(hms)
    stride = heatmap.STRIDE
    out = np.empty(coords.shape[:2] + (3,), np.float32)
    for k, M in enumerate(affines):
        out[k, :, :2] = to_image(heatmap.heatmap_to_input(coords[k], stride), np.asarray(M, np.float64))
    out[..., 2] = maxvals[..., 0]
    return out


def oks_nms(kpts: list[np.ndarray], scores, areas, thresh: float = OKS_NMS_THRESH) -> list[int]:
    """Greedy NMS on object keypoint similarity (one image): indices kept, best first."""
    sig = np.array(COCO_SIGMAS) / 10.0 if len(kpts[0]) == len(COCO_SIGMAS) else np.full(len(kpts[0]), 0.08)
    var = (sig * 2) ** 2
    order = list(np.argsort(scores)[::-1])
    keep = []
    while order:
        i = order.pop(0)
        keep.append(i)
        rest = []
        for j in order:
            d2 = ((kpts[i][:, :2] - kpts[j][:, :2]) ** 2).sum(1)
            oks = np.exp(-d2 / var / ((areas[i] + areas[j]) / 2 + np.spacing(1)) / 2).mean()
            if oks <= thresh:
                rest.append(j)
        order = rest
    return keep


def oks_agreement(ref, pred, areas, labelled=None, sigmas=None) -> np.ndarray:
    """Per-person OKS of one runtime's keypoints against another's taken as ground truth (parity's
    "OKS-agreement": PyTorch's decoded keypoints as the truth, the artifact's as the detection).

    ref, pred: (N, J, >=2) keypoints in image pixels; areas: (N,) the person's area (COCO segmentation area, or the
    box area when none); labelled: (N, J) bool, the joints the annotation labels (all when None); sigmas: per-joint
    OKS sigmas (COCO's for 17 joints, 0.08 otherwise). Returns (N,) the mean over each person's labelled joints of
    exp(-d^2 / (2 s^2 k^2)), with s^2 the area and k = 2 sigma as pycocotools; NaN for a person with none labelled.
    """
    ref, pred = np.asarray(ref, np.float64), np.asarray(pred, np.float64)
    n, j = ref.shape[:2]
    if sigmas is None:
        sigmas = np.array(COCO_SIGMAS) / 10.0 if j == len(COCO_SIGMAS) else np.full(j, 0.08)
    var = (np.asarray(sigmas, np.float64) * 2) ** 2
    mask = np.ones((n, j), bool) if labelled is None else np.asarray(labelled, bool)
    d2 = ((ref[..., :2] - pred[..., :2]) ** 2).sum(-1)
    e = np.exp(-d2 / var[None] / (np.asarray(areas, np.float64)[:, None] + np.spacing(1)) / 2)
    with np.errstate(invalid="ignore"):
        return np.where(mask.any(1), (e * mask).sum(1) / np.maximum(mask.sum(1), 1), np.nan)


def mean_oks_agreement(ref, pred, areas, labelled=None, sigmas=None) -> float:
    """The mean over persons of `oks_agreement` (persons with no labelled joint left out; NaN when none is left):
    the one figure parity, the int8 selection and QAT report."""
    o = oks_agreement(ref, pred, areas, labelled, sigmas)
    return float(np.nanmean(o)) if np.isfinite(o).any() else float("nan")


def to_coco_results(kps, metas, cat_id: int = 1, nms: bool = False) -> list[dict]:
    """Per-person keypoints -> COCO results, scored box score x mean confidence of the confident joints;
    OKS NMS per image when `nms` (detection boxes give many overlapping crops of one person)."""
    by_img: dict[int, list] = {}
    for k, m in zip(kps, metas):
        conf = k[:, 2]
        good = conf[conf > VIS_THRESH]
        score = float(m["score"]) * (float(good.mean()) if len(good) else 0.0)
        by_img.setdefault(int(m["image_id"]), []).append((k, score, float(np.prod(m["scale"])) / 1.25**2))
    out = []
    for image_id, people in sorted(by_img.items()):
        keep = oks_nms([p[0] for p in people], [p[1] for p in people], [p[2] for p in people]) if nms \
            else range(len(people))
        for i in keep:
            k, score, _ = people[i]
            out.append({"image_id": image_id, "category_id": cat_id, "score": score,
                        "keypoints": [round(float(v), 3) for v in k.reshape(-1)]})
    return out


_WARNED: set = set()


def _coco_dataset(root, split, input_size, boxes, num_joints, limit=None):
    """The eval dataset; its skip summary is warned once per process (a trainer evaluates every epoch)."""
    from posekit.data import CocoPose  # posekit.data imports torch: deferred so scoring alone stays light

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = CocoPose(root, split, input_size, train=False, boxes=boxes, num_joints=num_joints, limit=limit)
    for w in caught:
        if str(w.message) not in _WARNED:
            _WARNED.add(str(w.message))
            warnings.warn(str(w.message), w.category, stacklevel=3)
    return ds


def _with_flip_test(predict_fn, flip: bool, flip_pairs):
    """Batch runner for _run: heatmaps of the images, averaged with the flipped images' (flipped back) when asked."""

    def fn(images, items):
        hm = np.asarray(predict_fn(np.ascontiguousarray(images, np.float32)), np.float32)
        if flip:
            hf = np.asarray(predict_fn(np.ascontiguousarray(images[..., ::-1], np.float32)), np.float32)
            hm = (hm + heatmap.flip_back(hf, flip_pairs)) / 2
        return hm

    return fn


def evaluate_model(predict_fn, root=DEFAULT_COCO, split: str = "val2017", input_size=(256, 192), boxes="gt",
                   flip: bool = True, flip_pairs=COCO_FLIP_PAIRS, return_predictions: bool = False,
                   batch_size: int = 16, num_joints: int = 17, limit: int | None = None, workers: int = 0,
                   progress: bool = False, return_keypoints: bool = False) -> dict:
    """COCO OKS AP of any runtime.

    predict_fn(batch np.float32 (N, 3, H, W) normalized) -> np.float32 heatmaps (N, J, H/4, W/4).
    boxes: "gt" or a person detection results json. flip: average with the flipped input's heatmaps.
    Returns {AP, AP50, AP75, APm, APl, AR, ..., "num_persons"} (+ "predictions": COCO results list when asked;
    + with return_keypoints, per person in dataset order: "keypoints" (N, J, 3) image pixels + confidence, "areas"
    (N,) the annotation's area, "labelled" (N, J) the joints it labels: what `oks_agreement` takes).
    """
    ds = _coco_dataset(root, split, input_size, boxes, num_joints, limit)

    fn = _with_flip_test(predict_fn, flip, flip_pairs)
    kps, metas = _run(ds, fn, batch_size, workers, progress)
    results = to_coco_results(kps, metas, ds.cat_id, nms=str(boxes) != "gt")
    stats = coco_eval(results, ds.ann_file, img_ids={int(m["image_id"]) for m in metas})
    stats["num_persons"] = len(ds)
    if return_predictions:
        stats["predictions"] = results
    if return_keypoints:
        stats["keypoints"] = np.stack(kps).astype(np.float32)
        stats["areas"] = np.array([float(m["area"]) for m in metas], np.float64)
        stats["labelled"] = np.stack([np.asarray(m["joints"])[:, 2] > 0 for m in metas])
    return stats


def gt_heatmap_ap(root=DEFAULT_COCO, split: str = "val2017", input_size=(256, 192), num_joints: int = 17) -> dict:
    """The ground truth rendered to heatmaps, decoded and evaluated through the same path as a model: checks that
    encode, decode, back-projection and COCOeval agree (AP close to 1)."""
    ds = _coco_dataset(root, split, input_size, "gt", num_joints)
    kps, metas = _run(ds, lambda images, items: np.stack([it["heatmaps"].numpy() for it in items]), 16)
    return coco_eval(to_coco_results(kps, metas, ds.cat_id), ds.ann_file, {int(m["image_id"]) for m in metas})


# ---- MPII ------------------------------------------------------------------------------------------------------
SC_BIAS = 0.6  # the official MPII evaluation: head size = 0.6 x head box diagonal


def load_headboxes(path) -> np.ndarray:
    """Head boxes (N, 2, 2) [[x1, y1], [x2, y2]] from the official `gt_valid.mat` (headboxes_src) or a json list
    of [x1, y1, x2, y2]."""
    p = require_file(path, "head-box file")
    if p.suffix == ".mat":
        from scipy.io import loadmat

        try:
            hb = np.asarray(loadmat(str(p))["headboxes_src"], np.float64)  # (2, 2, N)
        except (KeyError, ValueError, OSError) as e:
            raise UserError(f"{p}: headboxes_src: cannot read ({e})") from None
        return hb.transpose(2, 0, 1)
    from posekit.data import check_numbers, read_json

    d = read_json(p, "head-box file")
    if not isinstance(d, list) or not d:
        raise UserError(f"{p}: expected a list of [x1, y1, x2, y2] head boxes")
    hb = np.asarray([check_numbers(b, 4, p, f"[{i}]") for i, b in enumerate(d)], np.float64)
    return hb.reshape(-1, 2, 2)


def pckh(preds, joints, visible, headboxes, thr: float = 0.5) -> dict:
    """PCKh@thr: a joint is correct within thr x head size. preds/joints (N, 16, 2) in image pixels, visible
    (N, 16), headboxes (N, 2, 2). Returns {"PCKh": mean over the labelled joints but pelvis and thorax,
    "per_joint": [16 values]}."""
    if headboxes is None:
        raise UserError("PCKh needs the MPII head boxes (the official gt_valid.mat, or a json of [x1, y1, x2, y2] "
                        "per person): pass --headboxes; the bundled mpii-mini has none")
    preds, joints = np.asarray(preds, np.float64), np.asarray(joints, np.float64)
    visible = np.asarray(visible) > 0
    hb = np.asarray(headboxes, np.float64)
    if len(hb) != len(preds):
        raise UserError(f"head boxes: {len(hb)} boxes for {len(preds)} persons")
    size = np.linalg.norm(hb[:, 1] - hb[:, 0], axis=1) * SC_BIAS
    dist = np.linalg.norm(preds - joints, axis=2) / size[:, None]
    hit = (dist <= thr) & visible
    per_joint = hit.sum(0) / np.maximum(visible.sum(0), 1)
    # the mean leaves out pelvis and thorax (joints 6, 7), as the MPII tables and HRNet's evaluation do
    keep = np.ones(hit.shape[1], bool)
    keep[[6, 7]] = hit.shape[1] != 16
    return {"PCKh": float(hit[:, keep].sum() / max(visible[:, keep].sum(), 1)), "per_joint": per_joint.tolist()}


def evaluate_mpii(predict_fn, root=DEFAULT_MPII, split: str = "valid", input_size=(256, 256), headboxes=None,
                  flip: bool = True, batch_size: int = 16, return_predictions: bool = False) -> dict:
    """PCKh@0.5 of any runtime on an MPII json list; `headboxes` is a file (see load_headboxes) or an array."""
    from posekit.data import MpiiPose

    if headboxes is None:
        pckh(None, None, None, None)  # raises the clear message before any work
    ds = MpiiPose(root, split, input_size, train=False)
    hb = load_headboxes(headboxes) if isinstance(headboxes, (str, Path)) else np.asarray(headboxes)

    fn = _with_flip_test(predict_fn, flip, MPII_FLIP_PAIRS)
    kps, metas = _run(ds, fn, batch_size)
    entries = [ds.samples[int(m["index"])]["entry"] for m in metas]
    out = pckh(np.stack(kps)[..., :2], np.stack([g[0] for g in ds.gt]), np.stack([g[1] for g in ds.gt]),
               hb[entries])
    if return_predictions:
        out["predictions"] = np.stack(kps).tolist()
    return out
