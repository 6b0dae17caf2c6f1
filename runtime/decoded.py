"""Decoded artifacts: files whose graph ends in the keypoint decode (model/decode.py) and that output `keypoints`
(1, J, 3) = (x, y, score) in input-crop pixels beside `heatmaps`. How to tell one (`is_decoded`), how to run one
for both outputs (`KeypointRunner`, over parity's runner of its format), and which ops of a .tflite are the
network and which the decode tail after it (`split_ops`: the int8 file must be integer up to the heatmaps)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from posekit.errors import UserError

KEYPOINTS = "keypoints"
HEATMAPS = "heatmaps"


def is_decoded(entry: dict) -> bool:
    """A manifest entry (or facts' outputs list) with a `keypoints` output."""
    return any(o.get("name") == KEYPOINTS for o in entry.get("outputs") or [])


class KeypointRunner:
    """runner(x) -> heatmaps as parity's runners give them (NCHW float32), keeping each call's in-file keypoints
    in `.keypoints`; both(x) -> (heatmaps, keypoints (N, J, 3) float32). base: parity.runners.make_runner's runner
    for the entry (it prepares the input and finishes the heatmaps; this asks its engine for both outputs)."""

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


def split_ops(path) -> tuple[Counter, Counter]:
    """({'OP:dtype': n} of the network: every op the `heatmaps` output depends on, {'OP:dtype': n} of the decode
    tail: the rest), from the .tflite's first subgraph. dtype: the op's first output's."""
    from ai_edge_litert import schema_py_generated as s

    from posekit.litert import builtin_name

    m = s.Model.GetRootAs(Path(path).read_bytes(), 0)
    sg = m.Subgraphs(0)
    types = {v: k.lower() for k, v in vars(s.TensorType).items() if not k.startswith("_")}
    ops = [sg.Operators(i) for i in range(sg.OperatorsLength())]
    producer = {int(t): i for i, op in enumerate(ops) for t in op.OutputsAsNumpy()}
    sig = m.SignatureDefs(0)
    outs = {sig.Outputs(i).Name().decode(): sig.Outputs(i).TensorIndex() for i in range(sig.OutputsLength())}
    if HEATMAPS not in outs:
        raise UserError(f"{path}: the signature has no {HEATMAPS!r} output")
    net, todo = set(), [producer[outs[HEATMAPS]]]
    while todo:  # the heatmaps' ancestors
        i = todo.pop()
        if i in net:
            continue
        net.add(i)
        todo += [producer[int(t)] for t in ops[i].InputsAsNumpy() if t >= 0 and int(t) in producer]

    def tag(i):
        op = ops[i]
        o = op.OutputsAsNumpy()
        return f"{builtin_name(m, op)}:{types[sg.Tensors(int(o[0])).Type()] if len(o) else '-'}"

    return (Counter(tag(i) for i in range(len(ops)) if i in net),
            Counter(tag(i) for i in range(len(ops)) if i not in net))


