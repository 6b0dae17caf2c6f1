"""The one checkpoint -> network loader, for every stage that needs the network an artifact is made from (convert,
parity, quantize's QAT export): a checkpoint, an arch file, or the default (the demo's trained checkpoint when it
exists, else EfficientPose-A with the MBV1 head, randomly initialized).

A random init is one recipe with one seed (`random_network`): kaiming weights from RANDOM_INIT_SEED, BatchNorm
statistics from real crops (the caller passes them: quantize.calibration's, so this layer reads no data), damped
residual branches. Convert builds it and parity rebuilds it the same way."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from model import arch as arch_mod
from model.arch import Arch
from model.net import PoseNet, build
from posekit.errors import UserError
from posekit.io import sha256_file
from posekit.paths import DEMO_CKPT

DEFAULT_ARCH = "efficientpose_a"
RANDOM_INIT_SEED = 0  # the one seed of a random init (convert makes it, parity rebuilds it)


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


def randomize(module: nn.Module, seed: int = RANDOM_INIT_SEED) -> nn.Module:
    """Random weights and BN statistics of a trained net's scale (the default init makes heads output ~0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                fan = m.weight[0].numel() if isinstance(m, nn.Conv2d) else m.weight.shape[1] * m.kernel_size[0] ** 2
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2 / fan) ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            elif isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return module


@torch.no_grad()
def damp_residuals(net: nn.Module, gain: float = 0.2) -> nn.Module:
    """Scale each residual branch's last BatchNorm: a random 26-block residual stack is chaotic (fp16 weight
    rounding alone costs it 30 dB SQNR), trained ones are not, and quantizer choice must be measured on the latter."""
    from .blocks import InvertedResidual

    for m in net.modules():
        if isinstance(m, InvertedResidual) and m.use_res:
            bn = m.conv[-1][1]
            bn.weight.mul_(gain)
            bn.bias.mul_(gain)
    return net


@torch.no_grad()
def recalibrate_bn(net: nn.Module, batches) -> nn.Module:
    """Set every BatchNorm's running statistics to their average over `batches` (real crops), so a randomly
    initialized net has the activation ranges of a trained one and int8 parity means something."""
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average
    net.train()
    for b in batches:
        net(b)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = 0.1
    return net.eval()


def random_network(net: nn.Module, crops) -> nn.Module:
    """The random init of `net` (built from its arch): RANDOM_INIT_SEED weights, BatchNorm statistics over `crops`
    (real NCHW batches), damped residual branches. The same net for the same arch and crops, wherever it is made."""
    recalibrate_bn(randomize(net), crops)
    return damp_residuals(net)


def _size(s) -> tuple[int, int]:
    from posekit.cli import parse_hxw  # the one HxW parser (the CLI has already checked it)

    try:
        return parse_hxw(s)
    except ValueError as e:
        raise UserError(f"--input: {e}") from None


def load_source(ckpt: str | None = None, arch: str | None = None, head: str | None = None,
                input_size: str | None = None, crops=None) -> Source:
    """Resolve the model to convert. `head` switches the head type (plain/mbv1/mbv2) of an arch file (not of a
    checkpoint: its weights fix the head); `input_size` 'HxW' overrides the arch's input size. `crops(arch)` gives
    the real crops a random init takes its BatchNorm statistics from (needed only without a checkpoint)."""
    if ckpt is None and arch is None and DEMO_CKPT.is_file():
        ckpt = str(DEMO_CKPT)
    if ckpt is not None:
        if arch is not None:
            raise UserError("give --ckpt or --arch, not both (a checkpoint carries its arch)")
        from .checkpoint import load_checkpoint

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
            a = a.replace(head=a.head.replace(type=head), name=f"{a.name}-{head}")
        src = Source(build(a), a, None, None, str(path), True,
                     f"random weights for {path.name} (head {a.head.type}; kaiming, BatchNorm statistics from real "
                     "crops): for conversion and parity, the heatmaps mean nothing")
    if input_size:
        h, w = _size(input_size)
        d = src.arch.to_dict()
        d["input_size"] = [h, w]
        new = arch_mod.from_dict(d, src="--input")
        net = build(new).eval()
        net.load_state_dict(src.net.state_dict())  # weights do not depend on the input size
        src.arch, src.net, src.input_override = new, net, True
    if src.random_init:
        if crops is None:
            raise UserError(f"{src.arch_origin}: a random init needs real crops for its BatchNorm statistics")
        random_network(src.net, crops(src.arch))
    return src
