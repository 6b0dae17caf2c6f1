"""The target registry: every artifact convert/quantize can write, as data (name, format, precision, file,
exporter, groups, deconv rewrite). `--targets`, the pipeline's dispatch and the manifest entries all read it."""

from __future__ import annotations

from dataclasses import dataclass

from model.rewrites import FORMAT_REWRITE, REWRITES
from posekit.errors import UserError


@dataclass(frozen=True)
class Target:
    name: str  # what --targets takes
    format: str  # manifest "format"
    precision: str  # manifest "precision"
    file: str  # path under artifacts/<model>/
    exporter: str  # convert/pipeline.py EXPORTERS key
    groups: tuple[str, ...]  # the --targets groups it belongs to ("all" is implicit)
    kind: str = ""  # exporter argument (Core ML variant, quantization recipe)
    deconv: str = ""  # the deploy graph's depthwise-deconv rewrite: model/deploy.py FORMAT_REWRITE says which and why

    def __post_init__(self):
        if self.deconv not in REWRITES:
            raise ValueError(f"target {self.name}: deconv {self.deconv!r} is not one of {REWRITES}")

    @property
    def quantized(self) -> bool:
        return "quantized" in self.groups

    @property
    def in_worker(self) -> bool:
        """Run in the second process (Core ML, ONNX) while TFLite converts in the main one."""
        return self.exporter in ("coreml", "onnx", "coreml-kp", "onnx-kp")


def _t(name, fmt, precision, file, exporter, groups, kind=""):
    deconv = FORMAT_REWRITE[exporter if exporter == "tflite-tf" else fmt]
    return Target(name, fmt, precision, file, exporter, tuple(groups.split()), kind, deconv)


TARGETS = [
    _t("tflite-fp32", "tflite", "fp32", "tflite/model_fp32.tflite", "tflite", "tflite"),
    _t("tflite-fp16", "tflite", "fp16", "tflite/model_fp16.tflite", "tflite-quant", "tflite quantized", "fp16"),
    _t("tflite-int8", "tflite", "int8", "tflite/model_int8.tflite", "tflite-int8", "tflite quantized"),
    _t("tflite-int8-dynamic", "tflite", "int8-dynamic", "tflite/model_int8_dynamic.tflite", "tflite-quant",
       "tflite quantized", "int8-dynamic"),
    _t("coreml-fp32", "coreml-mlprogram", "fp32", "coreml/model_fp32.mlpackage", "coreml", "coreml", "fp32"),
    _t("coreml-fp16", "coreml-mlprogram", "fp16", "coreml/model_fp16.mlpackage", "coreml", "coreml", "fp16"),
    _t("coreml-fp32-tensor", "coreml-mlprogram", "fp32", "coreml/model_fp32_tensor.mlpackage", "coreml", "coreml",
       "fp32-tensor"),
    _t("coreml-int8-weights", "coreml-mlprogram", "int8-weights", "coreml/model_int8w.mlpackage", "coreml",
       "coreml quantized", "int8-weights"),
    _t("coreml-palettized-8bit", "coreml-mlprogram", "palettized-8bit", "coreml/model_pal8.mlpackage", "coreml",
       "coreml quantized", "palettized-8bit"),
    _t("coreml-palettized-6bit", "coreml-mlprogram", "palettized-6bit", "coreml/model_pal6.mlpackage", "coreml",
       "coreml quantized", "palettized-6bit"),
    _t("coreml-neuralnetwork", "coreml-neuralnetwork", "fp32", "coreml/model.mlmodel", "coreml", "coreml",
       "neuralnetwork"),
    _t("onnx", "onnx", "fp32", "onnx/model.onnx", "onnx", "onnx"),
    # the second TFLite path, through TensorFlow (the optional `tf` extra): not in "all"
    _t("tflite-tf-fp32", "tflite", "fp32", "tflite/model_tf_fp32.tflite", "tflite-tf", "tf", "fp32"),
    _t("tflite-tf-int8", "tflite", "int8", "tflite/model_tf_int8.tflite", "tflite-tf", "tf", "int8"),
    # decoded: the keypoint decode in the graph (model/decode.py), output `keypoints` beside `heatmaps` (issue 28)
    _t("tflite-fp32-kp", "tflite", "fp32", "tflite/model_fp32_kp.tflite", "tflite-kp", "kp"),
    _t("tflite-int8-kp", "tflite", "int8", "tflite/model_int8_kp.tflite", "tflite-int8-kp", "kp"),
    _t("coreml-fp16-kp", "coreml-mlprogram", "fp16", "coreml/model_fp16_kp.mlpackage", "coreml-kp", "kp",
       "fp16"),
    _t("onnx-fp32-kp", "onnx", "fp32", "onnx/model_kp.onnx", "onnx-kp", "kp"),
]
# --decode: the decoded twin of each selected target that has one
DECODED_TWIN = {"tflite-fp32": "tflite-fp32-kp", "tflite-int8": "tflite-int8-kp", "coreml-fp16": "coreml-fp16-kp",
                "onnx": "onnx-fp32-kp"}
BY_NAME = {t.name: t for t in TARGETS}
GROUPS = {"all": [t.name for t in TARGETS if "tf" not in t.groups and "kp" not in t.groups]}
for _target in TARGETS:
    for _g in _target.groups:
        GROUPS.setdefault(_g, []).append(_target.name)


def get(name: str) -> Target:
    return BY_NAME[name]


def expand(names, decode: bool = False) -> list[Target]:
    """--targets values (group or target names) -> targets in registry order, each once; decode: with the decoded
    twin (DECODED_TWIN) of each."""
    want = []
    for n in names:
        if n not in GROUPS and n not in BY_NAME:
            raise UserError(f"--targets {n!r}: unknown (one of {', '.join(list(GROUPS) + list(BY_NAME))})")
        want += GROUPS.get(n, [n])
    if decode:
        want += [DECODED_TWIN[n] for n in want if n in DECODED_TWIN]
    return [t for t in TARGETS if t.name in want]
