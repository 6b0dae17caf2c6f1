"""The Core ML format, shared layer: PyTorch module -> coremltools 9 MLModel (mlprogram fp32 / fp16, ImageType or
TensorType input, or the legacy neuralnetwork), with the keypoint metadata, saved atomically. Weight compression
(int8, palettized) is quantize/coreml.py's.

ImageType takes RGB pixels in [0, 255]; its single scale (1/255) folds the pixel scaling, and the per-channel
(x - mean) / std, which ImageType's scalar scale cannot express, is a fused multiply-add in front of the net."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from posekit.io import atomic_path
from posekit.keypoints import MEAN, STD, keypoint_info

AUTHOR = "posenas (EfficientPose-style pose network)"
LICENSE = "Apache-2.0"


class Normalize(nn.Module):
    """x in [0, 1] RGB -> (x - mean) / std, as one per-channel multiply-add."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        std = torch.tensor(STD).view(1, 3, 1, 1)
        self.register_buffer("a", 1 / std)
        self.register_buffer("b", -torch.tensor(MEAN).view(1, 3, 1, 1) / std)

    def forward(self, x):
        return self.net(x * self.a + self.b)


def add_metadata(mlmodel, arch, image: bool):
    info = keypoint_info(arch.num_joints)
    mlmodel.author = AUTHOR
    mlmodel.license = LICENSE
    mlmodel.short_description = (f"{arch.name}: single-person pose heatmaps ({arch.num_joints} joints, stride 4) "
                                 f"from a {arch.input_size[0]}x{arch.input_size[1]} RGB crop")
    norm = {"color": "RGB", "scale": 1 / 255, "mean": list(MEAN), "std": list(STD), "folded": image}
    md = {"keypoint_names": json.dumps(info["names"]), "skeleton": json.dumps(info["skeleton"]),
          "flip_pairs": json.dumps(info["flip_pairs"]), "heatmap_stride": "4", "num_joints": str(arch.num_joints),
          "input_size": json.dumps(list(arch.input_size)), "normalization": json.dumps(norm)}
    mlmodel.user_defined_metadata.update(md)
    mlmodel.input_description["image"] = ("RGB image, pixels 0-255 (normalization folded in)" if image else
                                          "RGB crop, (x / 255 - mean) / std, NCHW float32")
    mlmodel.output_description["heatmaps"] = f"(1, {arch.num_joints}, H/4, W/4) joint heatmaps"
    return mlmodel


def coreml_program(net, arch, image: bool, precision: str = "fp32", target: str = "mlprogram"):
    """Trace and convert `net`; image: ImageType input (RGB 0-255, normalization folded) else TensorType."""
    from posekit.coreml_import import ct

    h, w = arch.input_size
    model = Normalize(net).eval() if image else net.eval()
    scale = 1 / 255 if image else None
    with torch.no_grad():
        traced = torch.jit.trace(model, torch.rand(1, 3, h, w))
    inp = (ct.ImageType(name="image", shape=(1, 3, h, w), scale=scale, bias=[0, 0, 0],
                        color_layout=ct.colorlayout.RGB) if image else
           ct.TensorType(name="image", shape=(1, 3, h, w)))
    kw = {"convert_to": target, "inputs": [inp], "outputs": [ct.TensorType(name="heatmaps")]}
    if target == "mlprogram":
        kw["compute_precision"] = ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32
        kw["minimum_deployment_target"] = ct.target.iOS16
    else:
        kw["minimum_deployment_target"] = ct.target.iOS14
    mlmodel = ct.convert(traced, **kw)
    return add_metadata(mlmodel, arch, image)


def save_mlmodel(mlmodel, path: Path) -> Path:
    """Save an MLModel (.mlpackage directory or .mlmodel) atomically."""
    with atomic_path(path, suffix=path.suffix) as tmp:
        mlmodel.save(str(tmp))
    return path


def io_entries(arch, image: bool, mlmodel) -> tuple[list, list]:
    """Manifest I/O entries; the output dtype as the converted spec declares it."""
    h, w = arch.input_size
    j = arch.num_joints
    arr = mlmodel.get_spec().description.output[0].type.multiArrayType
    fp16_io = arr.dataType == arr.ArrayDataType.Value("FLOAT16")
    inp = {"name": "image", "shape": [1, 3, h, w], "dtype": "uint8" if image else "float32", "layout": "NCHW",
           "kind": "image" if image else "tensor", "quantization": None, "normalization_folded": image}
    out = {"name": "heatmaps", "shape": [1, j, h // 4, w // 4], "dtype": "float16" if fp16_io else "float32",
           "layout": "NCHW", "quantization": None}
    return [inp], [out]
