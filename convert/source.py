"""What to convert: a checkpoint, an arch file, or the default (the demo's trained checkpoint when it exists, else
EfficientPose-A with the MBV1 head, randomly initialized), plus real calibration crops from the bundled data."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from model import arch as arch_mod
from model.arch import Arch
from model.net import PoseNet, build
from posekit.errors import UserError
from posekit.io import sha256_file
from posekit.keypoints import DEFAULT_COCO, DEFAULT_MPII, REPO

DEMO_CKPT = REPO / "runs" / "demo" / "train" / "best.pt"
DEFAULT_ARCH = "efficientpose_a"


@dataclass
class Source:
    net: PoseNet
    arch: Arch
    checkpoint: str | None
    checkpoint_sha256: str | None
    arch_origin: str  # the arch file (or checkpoint) the arch came from
    random_init: bool
    note: str
    input_override: bool = False

    @property
    def name(self) -> str:
        return self.arch.name


def _size(s: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in s.lower().split("x"))
        return h, w
    except ValueError:
        raise UserError(f"--input {s!r}: expected HxW, e.g. 256x192") from None


def load_source(ckpt: str | None = None, arch: str | None = None, head: str | None = None,
                input_size: str | None = None) -> Source:
    """Resolve the model to convert. `head` switches the head type (plain/mbv1/mbv2) of an arch file (not of a
    checkpoint: its weights fix the head); `input_size` 'HxW' overrides the arch's input size."""
    if ckpt is None and arch is None and DEMO_CKPT.is_file():
        ckpt = str(DEMO_CKPT)
    if ckpt is not None:
        if arch is not None:
            raise UserError("give --ckpt or --arch, not both (a checkpoint carries its arch)")
        from model.checkpoint import load_checkpoint

        net, a, _ = load_checkpoint(ckpt)
        if head is not None and head != a.head.type:
            raise UserError(f"--head {head}: the checkpoint {ckpt} has a {a.head.type} head")
        src = Source(net, a, str(ckpt), sha256_file(ckpt), str(ckpt), False, f"trained checkpoint {ckpt}")
    else:
        path = arch_mod.resolve(arch or DEFAULT_ARCH)
        a = arch_mod.load(path)
        if arch is None and head is None:
            head = "mbv1"  # the default model: EfficientPose-A with the MBV1 head
        if head is not None and head != a.head.type:
            a.head.type = head
            a.name = f"{a.name}-{head}"
        a = a.copy()  # re-validate
        torch.manual_seed(0)
        src = Source(build(a).eval(), a, None, None, str(path), True,
                     f"random init of {path.name} (head {a.head.type}): conversion only, heatmaps meaningless")
    if input_size:
        h, w = _size(input_size)
        d = src.arch.to_dict()
        d["input_size"] = [h, w]
        new = arch_mod.from_dict(d, src="--input")
        net = build(new).eval()
        net.load_state_dict(src.net.state_dict())  # weights do not depend on the input size
        src.arch, src.net, src.input_override = new, net, True
    return src


def calibration_batches(arch: Arch, data: str | None = None, n: int = 32, split: str | None = None):
    """n real person crops (1, 3, H, W), normalized, from the COCO (17 joints) or MPII (16) data; the training
    split by default so that parity can evaluate on val. Evenly spread over the dataset, deterministic."""
    from posekit.data import CocoPose, MpiiPose

    if arch.num_joints == 17:
        ds = CocoPose(data or DEFAULT_COCO, split or "train2017", arch.input_size, train=False)
    elif arch.num_joints == 16:
        ds = MpiiPose(data or DEFAULT_MPII, split or "valid", arch.input_size, train=False)
    else:
        raise UserError(f"calibration data: no bundled dataset with {arch.num_joints} joints (give --data)")
    if len(ds) == 0:
        raise UserError(f"{data}: no person crops for calibration")
    idx = sorted({int(i * len(ds) / n) for i in range(min(n, len(ds)))})
    return [torch.as_tensor(ds[i]["image"])[None].float() for i in idx]


def eval_batches(arch: Arch, data: str | None = None, n: int = 8):
    """Held-out crops (the val split) to measure quantized parity on."""
    split = "val2017" if arch.num_joints == 17 else "valid"
    return calibration_batches(arch, data, n, split)
