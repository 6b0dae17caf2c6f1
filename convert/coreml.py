"""Core ML artifacts through coremltools 9: mlprogram .mlpackage (fp32 / fp16 ImageType, fp32 TensorType), int8
weights (linear_quantize_weights), 8- and 6-bit palettized weights (k-means), and the legacy neuralnetwork .mlmodel.

ImageType takes RGB pixels in [0, 255]; its single scale (1/255) folds the pixel scaling, and the per-channel
(x - mean) / std, which ImageType's scalar scale cannot express, is a fused multiply-add in front of the net."""

from __future__ import annotations

import hashlib
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


def _metadata(mlmodel, arch, image: bool):
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


def _convert(net, arch, image: bool, precision: str, target: str):
    import coremltools as ct

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
    return _metadata(mlmodel, arch, image)


def _save(mlmodel, path: Path) -> Path:
    with atomic_path(path, suffix=path.suffix) as tmp:
        mlmodel.save(str(tmp))
    return path


def _optimize(mlmodel, kind: str):
    import coremltools.optimize.coreml as cto

    if kind == "int8-weights":
        cfg = cto.OptimizationConfig(global_config=cto.OpLinearQuantizerConfig(mode="linear_symmetric",
                                                                                dtype="int8"))
        return cto.linear_quantize_weights(mlmodel, cfg), "coremltools linear_quantize_weights (int8, symmetric)"
    nbits = {"palettized-8bit": 8, "palettized-6bit": 6}[kind]
    # k-means palettization needs scikit-learn, which is not a dependency here: fall back to uniform lookup tables
    try:
        import sklearn  # noqa: F401

        mode = "kmeans"
    except ImportError:
        mode = "uniform"
    cfg = cto.OptimizationConfig(global_config=cto.OpPalettizerConfig(mode=mode, nbits=nbits))
    return cto.palettize_weights(mlmodel, cfg), f"coremltools palettize_weights ({mode}, {nbits}-bit)"


def _io(arch, image: bool, mlmodel) -> tuple[list, list]:
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


_FP16 = {}  # (weights digest, arch) -> the fp16 ImageType program, shared by the compressed variants


def _digest(net, arch) -> str:
    h = hashlib.sha256(json.dumps(arch.to_dict(), sort_keys=True).encode())
    for v in net.state_dict().values():
        h.update(v.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


def _fp16_base(net, arch):
    key = _digest(net, arch)
    if key not in _FP16:
        _FP16.clear()
        _FP16[key] = _convert(net, arch, True, "fp16", "mlprogram")
    return _FP16[key]


def export_coreml(net, arch, outdir: Path, kinds, log=print):
    """Yield (path, format, precision, quantizer, inputs, outputs) for each requested Core ML artifact.
    kinds from: fp32, fp16, fp32-tensor, int8-weights, palettized-8bit, palettized-6bit, neuralnetwork."""
    d = outdir / "coreml"
    for kind in kinds:
        if kind in ("fp32", "fp16"):
            m = _fp16_base(net, arch) if kind == "fp16" else _convert(net, arch, True, kind, "mlprogram")
            yield _save(m, d / f"model_{kind}.mlpackage"), "coreml-mlprogram", kind, None, *_io(arch, True, m)
        elif kind == "fp32-tensor":
            m = _convert(net, arch, False, "fp32", "mlprogram")
            yield (_save(m, d / "model_fp32_tensor.mlpackage"), "coreml-mlprogram", "fp32", None,
                   *_io(arch, False, m))
        elif kind in ("int8-weights", "palettized-8bit", "palettized-6bit"):
            # compressed weights decompress to fp16 compute: start from the fp16 program (converted once)
            m, q = _optimize(_fp16_base(net, arch), kind)
            name = {"int8-weights": "int8w", "palettized-8bit": "pal8", "palettized-6bit": "pal6"}[kind]
            yield _save(m, d / f"model_{name}.mlpackage"), "coreml-mlprogram", kind, q, *_io(arch, True, m)
        elif kind == "neuralnetwork":
            m = _convert(net, arch, True, "fp32", "neuralnetwork")
            yield _save(m, d / "model.mlmodel"), "coreml-neuralnetwork", "fp32", None, *_io(arch, True, m)
        else:
            raise ValueError(f"unknown Core ML artifact {kind!r}")
