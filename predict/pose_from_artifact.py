"""Top-down pose estimation on real images with one artifact, configured by the file's own metadata alone
(runtime.metadata.read: input size, layout, dtype, quantization, normalization, keypoint names, skeleton) - no
checkpoint, no manifest. Each person box (COCO detection results, or the whole image) becomes a crop exactly as
the data pipeline makes it (posekit.transforms), the artifact runs through runtime.runners for its format
(ai_edge_litert, onnxruntime, Core ML's runtime on macOS or runtime's reference executor elsewhere), and the heatmaps
decode to image keypoints as in evaluation (posekit.evaluate.keypoints_from_heatmaps)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from posekit import manifest
from posekit.errors import UserError
from posekit.evaluate import VIS_THRESH, keypoints_from_heatmaps, to_coco_results
from posekit.io import atomic_path, atomic_write_json
from posekit.transforms import MAX_PIXELS, box_to_center_scale, get_affine, read_image
from runtime import metadata

# a model folder (artifacts/<model>) runs its first artifact of this list that exists
PREFERENCE = (("tflite", "int8"), ("tflite", "fp32"), ("onnx", "fp32"), ("coreml-mlprogram", "fp32"),
              ("coreml-neuralnetwork", "fp32"))


def resolve_model(path) -> Path:
    """An artifact file (or .mlpackage), or a model folder whose manifest.json names the artifacts."""
    p = Path(path)
    if p.is_dir() and p.suffix != ".mlpackage":
        if not (p / "manifest.json").is_file():
            raise UserError(f"{p}: a model folder needs manifest.json (or pass an artifact file)")
        arts = manifest.load(p)["artifacts"]  # the one reader: schema, every file on disk and inside the folder
        for fmt, prec in PREFERENCE:
            for a in arts:
                if a["format"] == fmt and a["precision"] == prec:
                    return p / a["file"]
        raise UserError(f"{p / 'manifest.json'}: none of its artifacts is one of "
                        f"{', '.join(f'{f} {q}' for f, q in PREFERENCE)}")
    if not p.exists():
        raise UserError(f"{p}: no such model file or folder")
    return p


def read_facts(path: Path) -> dict:
    """The file's own metadata; for a file converted before metadata was embedded, its manifest entry (the
    manifest.json of the model folder holding it), with a note."""
    try:
        return metadata.read(path)
    except UserError as e:
        for mf in (path.parent / "manifest.json", path.parent.parent / "manifest.json"):
            if not mf.is_file():
                continue
            try:
                m = json.loads(mf.read_text())
                rel = path.resolve().relative_to(mf.parent.resolve()).as_posix()
                entry = next(a for a in m["artifacts"] if a["file"] == rel)
            except (json.JSONDecodeError, KeyError, TypeError, ValueError, StopIteration):
                continue
            print(f"note: {e}; using {mf}")
            return {**metadata.facts(m, entry), "format": metadata.suffix_format(path)}
        raise


class Predictor:
    """`predictor(image_rgb, boxes)` -> keypoints (N, J, 3): x, y in image pixels and the heatmap peak."""

    def __init__(self, model, threads: int = 1):
        from runtime.artifact_check import check_artifact
        from runtime.runners import make_runner

        self.path = resolve_model(model)
        check_artifact(self.path, *manifest.listing(self.path))  # listed bytes and a whole file, before any runtime
        self.facts = f = read_facts(self.path)
        fmt = f["format"]
        if fmt == "coreml":
            fmt = "coreml-neuralnetwork" if self.path.suffix == ".mlmodel" else "coreml-mlprogram"
        self.norm = f["normalization"]
        entry = {"file": self.path.name, "format": fmt, "precision": f.get("precision") or "?",
                 "inputs": [{**f["input"], "normalization_folded": bool(self.norm.get("folded"))}],
                 "outputs": [f["output"]]}
        self.runner = make_runner(entry, self.path.parent, {"normalization": self.norm}, threads)
        self.in_file = bool(f.get("keypoints"))  # a decoded file (issue 28): its own `keypoints` output is used
        if self.in_file:
            from runtime.decoded import KeypointRunner

            self.runner = KeypointRunner(self.runner)
        self.input_size = tuple(f["input_size"])
        self.names, self.skeleton = f["keypoint_names"], f.get("skeleton", [])

    def crops(self, image: np.ndarray, boxes) -> tuple[np.ndarray, list, list]:
        """Normalized NCHW crops of `boxes` (x, y, w, h) with the file's mean/std, their affines and scales."""
        H, W = self.input_size
        mean = np.asarray(self.norm["mean"], np.float32)
        std = np.asarray(self.norm["std"], np.float32)
        if self.norm.get("color") == "BGR":
            image = image[..., ::-1]
        xs, affines, scales = [], [], []
        for box in boxes:
            center, scale = box_to_center_scale(box, self.input_size)
            M = get_affine(center, scale, self.input_size)
            crop = cv2.warpAffine(image, M, (int(W), int(H)), flags=cv2.INTER_LINEAR,
                                  borderMode=cv2.BORDER_CONSTANT)
            x = (crop.astype(np.float32) * np.float32(self.norm["scale"]) - mean) / std
            xs.append(x.transpose(2, 0, 1))
            affines.append(M)
            scales.append(scale)
        return np.ascontiguousarray(np.stack(xs), np.float32), affines, scales

    def __call__(self, image: np.ndarray, boxes) -> np.ndarray:
        x, affines, _ = self.crops(image, boxes)
        if self.in_file:  # (x, y, score) in crop pixels from the file: only the crop -> image mapping is left
            from posekit.transforms import to_image

            kp = self.runner.both(x)[1]
            for k, M in zip(kp, affines):
                k[:, :2] = to_image(k[:, :2].astype(np.float64), np.asarray(M, np.float64))
            return kp
        return keypoints_from_heatmaps(self.runner(x), affines)


def image_id_of(path: Path, index: int) -> int:
    """COCO file names are the image id (000000397133.jpg -> 397133); other files are numbered from 1."""
    return int(path.stem) if path.stem.isdigit() else index + 1


def read_boxes(path, min_score: float) -> dict[int, list[tuple[list[float], float]]]:
    """COCO detection results json -> {image_id: [(bbox, score), ...]} of persons (category 1) at >= min_score."""
    path = Path(path)
    try:
        dets = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: no such detection results file") from None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise UserError(f"{path}: malformed json: {e}") from None
    if not isinstance(dets, list):
        raise UserError(f"{path}: expected a list of {{image_id, category_id, bbox, score}} (COCO detection results)")
    out: dict[int, list] = {}
    for i, d in enumerate(dets):
        if not isinstance(d, dict):
            raise UserError(f"{path}: [{i}]: expected an object {{image_id, category_id, bbox, score}}")
        for field in ("image_id", "bbox"):
            if field not in d:
                raise UserError(f"{path}: [{i}].{field}: missing")
        box, score = d["bbox"], d.get("score", 1.0)
        if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)):
            raise UserError(f"{path}: [{i}].bbox: expected [x, y, w, h] numbers, got {box!r}")
        if box[2] <= 0 or box[3] <= 0:
            raise UserError(f"{path}: [{i}].bbox: width and height must be > 0, got {box!r}")
        if not isinstance(score, (int, float)):
            raise UserError(f"{path}: [{i}].score: expected a number, got {score!r}")
        if not isinstance(d["image_id"], int):
            raise UserError(f"{path}: [{i}].image_id: expected an integer, got {d['image_id']!r}")
        if d.get("category_id", 1) == 1 and score >= min_score:
            out.setdefault(d["image_id"], []).append(([float(v) for v in box], float(score)))
    return out


def draw(image_rgb: np.ndarray, people: np.ndarray, boxes, skeleton, thresh: float = VIS_THRESH) -> np.ndarray:
    """The image (BGR, for cv2.imwrite) with each person's box, skeleton and confident keypoints."""
    img = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR)
    t = max(1, round(max(img.shape[:2]) / 400))
    for k, box in zip(people, boxes):
        x, y, w, h = (int(round(v)) for v in box)
        cv2.rectangle(img, (x, y), (x + w, y + h), (200, 200, 200), 1)
        ok = k[:, 2] > thresh
        for a, b in skeleton:
            if ok[a] and ok[b]:
                cv2.line(img, (int(k[a, 0]), int(k[a, 1])), (int(k[b, 0]), int(k[b, 1])), (0, 200, 255), t,
                         cv2.LINE_AA)
        for j in np.flatnonzero(ok):
            cv2.circle(img, (int(k[j, 0]), int(k[j, 1])), t + 1, (0, 0, 255), -1, cv2.LINE_AA)
    return img


def meaningless(kp: np.ndarray, box, image_shape) -> list[str]:
    """Why one person's answer means nothing, as flags: the box lies outside the image, its crop holds (almost)
    no image pixel, or no joint is confident (every heatmap peak <= VIS_THRESH). [] for a sound answer."""
    h, w = image_shape[:2]
    x, y, bw, bh = box
    iw, ih = min(x + bw, w) - max(x, 0.0), min(y + bh, h) - max(y, 0.0)
    flags = []
    if iw <= 0 or ih <= 0:
        flags.append("box_outside_image")
    elif iw * ih < 1.0:
        flags.append("zero_area_crop")
    if not (kp[:, 2] > VIS_THRESH).any():
        flags.append("no_confident_joint")
    return flags


def predict(model, images, boxes_file=None, min_score: float = 0.5, out=Path("runs/predict"), overlay: bool = True,
            threads: int = 1, log=print, max_pixels: int = MAX_PIXELS) -> dict:
    """Run `model` on `images`; writes out/keypoints.json (COCO keypoint results; a person whose answer means
    nothing carries "flags", and a warning line is logged) and out/<image>_pose.png.
    Returns {"results": [...], "json": path, "overlays": [paths], "model": path, "boxes": {image_id: [...]}}."""
    pred = Predictor(model, threads)
    if pred.in_file:
        log(f"{pred.path}: using the keypoints decoded in the file (its `keypoints` output)")
    dets = read_boxes(boxes_file, min_score) if boxes_file else None
    out = Path(out)
    kps, metas, overlays, used, flags = [], [], [], {}, {}
    for i, p in enumerate(map(Path, images)):
        img = read_image(p, max_pixels)
        iid = image_id_of(p, i)
        if dets is None:
            people = [([0.0, 0.0, float(img.shape[1]), float(img.shape[0])], 1.0)]  # the whole image
        else:
            people = dets.get(iid, [])
        used[iid] = [b for b, _ in people]
        k = pred(img, [b for b, _ in people]) if people else np.zeros((0, len(pred.names), 3), np.float32)
        for n, (kp, (box, score)) in enumerate(zip(k, people)):
            why = meaningless(kp, box, img.shape)
            if why:
                log(f"warning: {p}: person {n} (box {[round(v, 1) for v in box]} in a {img.shape[1]}x{img.shape[0]} "
                    f"image): {', '.join(why)}; its keypoints mean nothing")
            flags.setdefault(iid, []).append(why)
            kps.append(kp)
            metas.append({"image_id": iid, "score": score,
                          "scale": box_to_center_scale(box, pred.input_size)[1]})
        if overlay:
            with atomic_path(out / f"{p.stem}_pose.png") as tmp:
                if not cv2.imwrite(str(tmp), draw(img, k, [b for b, _ in people], pred.skeleton)):
                    raise UserError(f"{out / f'{p.stem}_pose.png'}: cannot write the overlay")
            overlays.append(out / f"{p.stem}_pose.png")
        log(f"{p}: image_id {iid}, {len(people)} person(s)")
    results = to_coco_results(kps, metas)  # by image id, each image's persons in order (no NMS)
    for r in results:
        why = flags[r["image_id"]].pop(0)
        if why:
            r["flags"] = why
    path = atomic_write_json(out / "keypoints.json", results)
    return {"results": results, "json": path, "overlays": overlays, "model": pred.path, "boxes": used,
            "keypoints": kps, "predictor": pred}
