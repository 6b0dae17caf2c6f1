"""The in-graph keypoint decode (model/decode.py) against the Python decode (posekit.heatmap), and its lowerings."""

from pathlib import Path

import numpy as np
import pytest
import torch

from model.decode import KeypointDecode
from posekit.heatmap import decode, heatmap_to_input


def _python_keypoints(hm: np.ndarray) -> np.ndarray:
    c, v = decode(hm)
    return np.concatenate([heatmap_to_input(c), v], -1)


def _maps() -> torch.Tensor:
    """Random maps plus the rule's corner cases: peaks on each border and corner, ties (first maximum wins), equal
    neighbours (no shift), an all-equal map."""
    g = torch.Generator().manual_seed(0)
    hm = torch.rand(3, 17, 16, 12, generator=g)
    hm[1] = (hm[1] * 6).round() / 6  # many ties
    for j, (y, x) in enumerate([(0, 0), (15, 11), (0, 5), (15, 5), (7, 0), (7, 11)]):
        hm[2, j] = 0
        hm[2, j, y, x] = 1
    hm[2, 6] = 0.5
    hm[2, 7] = 0
    hm[2, 7, 5, 5] = 1
    hm[2, 7, 5, 4] = hm[2, 7, 5, 6] = 0.5  # equal neighbours in x: no x shift
    return hm


def test_decode_module_equals_python_decode_exactly():
    hm = _maps()
    _, kp = KeypointDecode(torch.nn.Identity(), (64, 48))(hm)
    assert np.array_equal(kp.numpy(), _python_keypoints(hm.numpy()).astype(np.float32))


@pytest.mark.parametrize("kw", [{"stride": 8}, {"shift": 0.0}])
def test_a_wrong_decode_differs(kw):
    hm = _maps()
    _, kp = KeypointDecode(torch.nn.Identity(), (64, 48), **kw)(hm)
    assert np.abs(kp.numpy()[..., :2] - _python_keypoints(hm.numpy())[..., :2]).max() >= 0.9


# ---- the README's Kotlin and Swift snippets against the files they read --------------------------------------------

def _readme_block(lang: str) -> str:
    import re

    from posekit.keypoints import REPO

    blocks = re.findall(rf"```{lang}\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    assert len(blocks) == 1, f"one {lang} block in README.md"
    return blocks[0]


def _kotlin_shape(code: str, var: str, env: dict) -> list[int]:
    """`val var = Array(1) { Array(H / 4) { ... FloatArray(J) } }` -> [1, H/4, ..., J] with env's values."""
    import re

    decl = re.search(rf"val {var} = (.*)", code).group(1)
    dims = []
    for d in re.findall(r"(?:Float)?Array\(([^)]*)\)", decl):
        name, *div = [t.strip() for t in d.split("/")]
        v = env[name] if name in env else int(name)
        dims.append(v // int(div[0]) if div else v)
    return dims


@pytest.mark.slow(40)
def test_readme_snippets_read_what_the_decoded_files_expose(tmp_path, one_thread):
    import re

    from convert import decoded, targets
    from runtime.tflite import SIGNATURE, interpreter, io_details
    from tests.parity_helpers import INPUT, tiny_arch, tiny_net

    net, arch = tiny_net().eval(), tiny_arch()
    (tmp_path / "tflite").mkdir()
    (tmp_path / "coreml").mkdir()
    kt, sw = _readme_block("kotlin"), _readme_block("swift")
    sample = torch.randn(1, 3, *INPUT)
    # Kotlin: the TFLite signature, its tensor names and shapes (J, H, W of the file the snippet would read)
    (tf,), _ = decoded.export_tflite_kp(targets.get("tflite-fp32-kp"), net, arch, tmp_path, sample, None, {}, print)
    io = io_details(tmp_path / tf["file"])
    _, h, w, _ = io["inputs"][0]["shape"]
    env = {"J": arch.num_joints, "H": h, "W": w}
    assert re.search(r'val J = (\d+)', kt).group(1) == "17"  # the COCO joints, as the files have
    assert SIGNATURE in kt and f'"{io["inputs"][0]["name"]}" to crop' in kt
    want = {o["name"]: o["shape"] for o in io["outputs"]}
    assert set(re.findall(r'"(\w+)" to (\w+)', kt)) == {("image", "crop"), ("heatmaps", "heatmaps"),
                                                         ("keypoints", "keypoints")}
    assert _kotlin_shape(kt, "crop", env) == io["inputs"][0]["shape"]
    for name in ("heatmaps", "keypoints"):
        assert _kotlin_shape(kt, name, env) == want[name], name
    assert list(interpreter(tmp_path / tf["file"]).get_signature_list()) == [SIGNATURE]
    # Swift: the Core ML file's feature names, the keypoints' shape and the image input
    (cm,), _ = decoded.export_coreml_kp(targets.get("coreml-fp16-kp"), net, arch, tmp_path, sample, None, {}, print)
    from posekit.coreml_import import ct

    spec = ct.models.MLModel(str(tmp_path / cm["file"]), skip_model_load=True).get_spec()
    outs = {o.name: list(o.type.multiArrayType.shape) for o in spec.description.output}
    inp = spec.description.input[0]
    assert re.findall(r'featureValue\(for: "(\w+)"\)', sw) == ["keypoints"]
    assert outs["keypoints"] == [1, arch.num_joints, 3]
    assert f'"{inp.name}": MLFeatureValue(pixelBuffer:' in sw and inp.type.WhichOneof("Type") == "imageType"
    assert {int(k) for k in re.findall(r"\[0, j, (\d)\]", sw)} == {0, 1, 2}
    assert f"{Path(cm['file']).stem}(configuration:" in sw


def test_decode_flag_adds_the_decoded_twin_of_each_target():
    from convert.targets import GROUPS, expand

    assert not any(n.endswith("-kp") for n in GROUPS["all"])  # `all` is unchanged; --decode or `kp` asks for them
    names = [t.name for t in expand(["tflite-int8", "onnx", "coreml-fp32"], decode=True)]
    assert names == ["tflite-int8", "coreml-fp32", "onnx", "tflite-int8-kp", "onnx-fp32-kp"]
    assert [t.name for t in expand(["kp"])] == ["tflite-fp32-kp", "tflite-int8-kp", "coreml-fp16-kp", "onnx-fp32-kp"]
