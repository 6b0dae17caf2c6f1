"""Decoded artifacts: files whose graph ends in the keypoint decode (model/decode.py) and that output `keypoints`
(1, J, 3) = (x, y, score) in input-crop pixels beside `heatmaps`. How to tell one (`is_decoded`), how to run one
for both outputs (`KeypointRunner`, over runtime/runners.py's runner of its format). Which ops of a .tflite are the
network and which the decode tail after it: runtime.tflite_flatbuffer.split_ops."""

from __future__ import annotations

import numpy as np

from posekit.errors import UserError

KEYPOINTS = "keypoints"
HEATMAPS = "heatmaps"


def is_decoded(entry: dict) -> bool:
    """A manifest entry (or facts' outputs list) with a `keypoints` output."""
    return any(o.get("name") == KEYPOINTS for o in entry.get("outputs") or [])


class KeypointRunner:
    """runner(x) -> heatmaps as runtime/runners.py's runners give them (NCHW float32), keeping each call's in-file
    keypoints in `.keypoints`; both(x) -> (heatmaps, keypoints (N, J, 3) float32). base: runtime.runners.make_runner's
    runner for the entry (it prepares the input and finishes the heatmaps; this asks its engine for both outputs)."""

    def __init__(self, base):
        self.base, self.path, self.engine, self.label = base, base.path, base.engine, base.label
        self.keypoints: list[np.ndarray] = []

    def _both(self, x):
        b = self.base
        name = type(b).__name__
        if name == "TFLiteRunner":
            if b.sig is None:
                raise UserError(f"{self.path}: a decoded .tflite needs its serving signature (heatmaps, keypoints)")
            out = b.sig(**{b.iname: x})
            return out[HEATMAPS], out[KEYPOINTS]
        if name == "OnnxRunner":
            return tuple(b.sess.run([HEATMAPS, KEYPOINTS], {b.iname: x}))
        if name == "CoreMLRunner":
            if b.native and b.inp.get("kind") == "image":  # MLModel.predict takes a PIL image there
                from PIL import Image

                hwc = x[0] if b.inp.get("layout", "NCHW") == "NHWC" else x[0].transpose(1, 2, 0)
                x = Image.fromarray(np.clip(hwc, 0, 255).astype(np.uint8))
            out = b.model.predict({b.name: x})
            return np.asarray(out[HEATMAPS]), np.asarray(out[KEYPOINTS])
        raise UserError(f"{self.path}: no decoded runner for {name}")

    def both(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = np.asarray(x, np.float32)
        step = self.base.batch if self.base.batch > 0 else len(x)
        hms, kps = [], []
        for i in range(0, len(x), step):
            hm, kp = self._both(self.base.prepare(x[i:i + step]))
            hms.append(self.base.finish(hm))
            kps.append(np.asarray(kp, np.float32))
        return np.concatenate(hms), np.concatenate(kps)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        hm, kp = self.both(x)
        self.keypoints.append(kp)
        return hm

