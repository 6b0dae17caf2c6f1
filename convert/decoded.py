"""The decoded targets (-kp, issue 28): the network with the keypoint decode as part of the graph
(model/decode.py), output `keypoints` (1, J, 3) = (x, y, score) in input-crop pixels beside `heatmaps`, written as
fp32 and full-integer int8 .tflite, fp16 Core ML mlprogram and ONNX; each manifest entry carries a `decode` record
(the rule, units, the crop, and for int8 the float ops after the integer network)."""

from __future__ import annotations

import torch
from torch import nn

from model.decode import QUARTER, KeypointDecode
from posekit import manifest
from posekit.heatmap import STRIDE

KP_LAYOUT = "NJ3"


def decoded_net(net: nn.Module, arch) -> KeypointDecode:
    return KeypointDecode(net, arch.input_size).eval()


def decode_record(arch, float_ops: dict | None = None) -> dict:
    """The manifest's description of a decoded file's `keypoints` output."""
    h, w = arch.input_size
    rec = {"output": "keypoints", "shape": [1, arch.num_joints, 3], "layout": "[1, J, 3]: x, y, score per joint",
           "units": f"input-crop pixels of the {h}x{w} (HxW) input, pixel centres (pixel i is at coordinate i)",
           "score": "the heatmap peak (the joint's heatmap maximum)",
           "input_crop": {"size": [h, w], "note": "the person crop the input is (map back with its affine)"},
           "rule": f"arg-max per joint (first maximum), +-{QUARTER} heatmap pixel toward the higher neighbour off "
                   f"the border, x_in = (x_hm + 0.5) * {STRIDE} - 0.5 (posekit.heatmap.decode)",
           "heatmap_stride": STRIDE}
    if float_ops is not None:
        rec["float_ops_after_heatmaps"] = float_ops
    return rec


class DecodedSignature(nn.Module):
    """The .tflite signature of a decoded net: `image` NHWC in, {`heatmaps` NHWC, `keypoints` (1, J, 3)} out."""

    def __init__(self, decoded: KeypointDecode):
        super().__init__()
        self.decoded = decoded  # its tensors are named ...KeypointDecode_decoded;<n> (quantize/decoded.py)

    def forward(self, image):
        hm, kp = self.decoded(image.permute(0, 3, 1, 2))
        return {"heatmaps": hm.permute(0, 2, 3, 1), "keypoints": kp}


def _tflite_entry(out, t, path, quantizer=None, **extra):
    from runtime.tflite import io_entries

    ins, outs = io_entries(path)
    outs = [{**o, "layout": KP_LAYOUT} if o["name"] == "keypoints" else o for o in outs]
    return manifest.artifact(out, path, t.format, t.precision, quantizer, ins, outs, **extra)


def _fp32(net, arch, path, sample):
    from posekit.export_tflite import tflite_bytes, to_nhwc, write_tflite

    module = DecodedSignature(decoded_net(net, arch)).eval()
    with torch.no_grad():
        return write_tflite(tflite_bytes(module, to_nhwc(sample, True)), path)


def export_tflite_kp(t, net, arch, out, sample, batches, opts, log):
    path = _fp32(net, arch, out / t.file, sample)
    return [_tflite_entry(out, t, path, decode=decode_record(arch))], {}


def export_tflite_int8_kp(t, net, arch, out, sample, batches, opts, log):
    from quantize.decoded import RECIPE, quantize_decoded

    dst = out / t.file
    src = dst.with_name(f".{dst.name}.fp32.tflite")  # the decoded fp32 it starts from (a temp: convert's cleanup)
    try:
        _fp32(net, arch, src, sample)
        path, tail = quantize_decoded(src, dst, batches("calib"))
    finally:
        src.unlink(missing_ok=True)
    return [_tflite_entry(out, t, path, f"ai-edge-quantizer {RECIPE} (decode tail float)",
                          decode=decode_record(arch, tail))], {}


def export_coreml_kp(t, net, arch, out, sample, batches, opts, log):
    from posekit.coreml_import import ct
    from posekit.export_coreml import Normalize, add_metadata, io_entries, save_mlmodel

    h, w = arch.input_size
    model = Normalize(decoded_net(net, arch)).eval()
    with torch.no_grad():
        traced = torch.jit.trace(model, torch.rand(1, 3, h, w))
    inp = ct.ImageType(name="image", shape=(1, 3, h, w), scale=1 / 255, bias=[0, 0, 0],
                       color_layout=ct.colorlayout.RGB)
    ml = ct.convert(traced, convert_to="mlprogram", inputs=[inp],
                    outputs=[ct.TensorType(name="heatmaps"), ct.TensorType(name="keypoints")],
                    compute_precision=ct.precision.FLOAT16, minimum_deployment_target=ct.target.iOS16)
    ml = add_metadata(ml, arch, True)
    ml.output_description["keypoints"] = (f"(1, {arch.num_joints}, 3): x, y in input pixels of the {h}x{w} crop, "
                                          f"score = heatmap peak")
    ml.user_defined_metadata["keypoints"] = _json(decode_record(arch))
    path = save_mlmodel(ml, out / t.file)
    ins, outs = io_entries(arch, True, ml)
    kp = ml.get_spec().description.output[1].type.multiArrayType
    fp16 = kp.dataType == kp.ArrayDataType.Value("FLOAT16")
    outs.append({"name": "keypoints", "shape": [1, arch.num_joints, 3], "dtype": "float16" if fp16 else "float32",
                 "layout": KP_LAYOUT, "quantization": None})
    return [manifest.artifact(out, path, t.format, t.precision, None, ins, outs, decode=decode_record(arch))], {}


def export_onnx_kp(t, net, arch, out, sample, batches, opts, log):
    from posekit.export_onnx import export_onnx

    path, ins, outs, info = export_onnx(decoded_net(net, arch), arch, out / t.file, ("heatmaps", "keypoints"))
    return [manifest.artifact(out, path, t.format, t.precision, None, ins, outs, **info,
                              decode=decode_record(arch))], {}


def _json(d) -> str:
    import json

    return json.dumps(d)


EXPORTERS = {"tflite-kp": export_tflite_kp, "tflite-int8-kp": export_tflite_int8_kp, "coreml-kp": export_coreml_kp,
             "onnx-kp": export_onnx_kp}
