"""Small real artifacts for the parity tests: a tiny arch at 64x48, its checkpoint, Core ML models made with
coremltools directly, and the convert stage's artifacts made by its CLI. Plus the two ways to
break an artifact on purpose: flip one weight tensor's sign in a .tflite, change one scale in Core ML weights."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch

from model.arch import from_dict
from model.net import build

INPUT = (64, 48)


def tiny_arch(head: str = "mbv1", act: str = "relu"):
    return from_dict({
        "name": f"tiny-{head}", "num_joints": 17, "input_size": list(INPUT), "act": act,
        "stem": [{"op": "conv_k3", "out": 8, "stride": 2}],
        "blocks": [{"op": "ir_k3_e3", "out": 16, "stride": 2}, {"op": "ir_k5_e3", "out": 16, "stride": 1},
                   {"op": "ir_k3_e6", "out": 24, "stride": 2}, {"op": "ir_k3_e3", "out": 32, "stride": 2}],
        "tail": [], "head": {"type": head, "deconv": [16, 16], "kernel": 4, "sic": True}})


def tiny_net(head: str = "mbv1", act: str = "relu", seed: int = 0):
    """A tiny PoseNet with non-trivial BN statistics and head weights (the init's near-zero deconvs and final conv
    would make every comparison trivially small)."""
    torch.manual_seed(seed)
    net = build(tiny_arch(head, act)).eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
            elif isinstance(m, torch.nn.ConvTranspose2d):
                torch.nn.init.kaiming_normal_(m.weight)
        torch.nn.init.normal_(net.head.final.weight, std=0.1)
    return net


def coreml_convert(net, path: Path, precision: str = "fp32", target: str = "iOS16", neuralnetwork: bool = False,
                   image_input: dict | None = None):
    from posekit.coreml_import import ct

    x = torch.zeros(1, 3, *INPUT)
    ts = torch.jit.trace(net.eval(), x)
    inp = ct.ImageType(name="image", shape=x.shape, **image_input) if image_input else \
        ct.TensorType(name="image", shape=x.shape)
    kw = {"convert_to": "neuralnetwork"} if neuralnetwork else {
        "convert_to": "mlprogram", "minimum_deployment_target": getattr(ct.target, target),
        "compute_precision": ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32}
    m = ct.convert(ts, inputs=[inp], outputs=[ct.TensorType(name="heatmaps")], **kw)
    m.save(str(path))
    return m


def compress(mlmodel, how: str, path: Path):
    """int8-weights (linear, per channel) or palettized-<n>bit (uniform LUT: no scikit-learn needed)."""
    import coremltools.optimize.coreml as cto

    if how == "int8-weights":
        m = cto.linear_quantize_weights(mlmodel, cto.OptimizationConfig(
            global_config=cto.OpLinearQuantizerConfig(mode="linear_symmetric", weight_threshold=0)))
    else:
        nbits = int(how.split("-")[1].rstrip("bit"))
        m = cto.palettize_weights(mlmodel, cto.OptimizationConfig(
            global_config=cto.OpPalettizerConfig(nbits=nbits, mode="uniform", weight_threshold=0)))
    m.save(str(path))
    return m


def _entry(root: Path, file: str, fmt: str, precision: str, layout: str = "NCHW", quantizer=None) -> dict:
    from posekit.io import sha256_file

    p = root / file
    size = sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir() else p.stat().st_size
    shape = [1, 3, *INPUT] if layout == "NCHW" else [1, *INPUT, 3]
    oshape = [1, 17, INPUT[0] // 4, INPUT[1] // 4] if layout == "NCHW" else [1, INPUT[0] // 4, INPUT[1] // 4, 17]
    return {"file": file, "format": fmt, "precision": precision, "quantizer": quantizer, "size_bytes": size,
            "sha256": sha256_file(p),
            "inputs": [{"name": "image", "shape": shape, "dtype": "float32", "layout": layout, "kind": "tensor",
                        "quantization": None, "normalization_folded": False}],
            "outputs": [{"name": "heatmaps", "shape": oshape, "dtype": "float32", "layout": layout,
                         "quantization": None}]}


def write_manifest(root: Path, arch, entries: list[dict], ckpt: Path):
    from model.arch import dump
    from posekit.io import atomic_write_json, sha256_file
    from posekit.keypoints import MEAN, STD, keypoint_info
    from posekit.manifest import tool_versions

    info = keypoint_info(17)
    arch_file = dump(arch, root / "arch.yaml")
    atomic_write_json(root / "manifest.json", {
        "schema_version": 1, "model": arch.name, "created": "test", "tool_versions": tool_versions(),
        "source": {"checkpoint": str(ckpt), "checkpoint_sha256": sha256_file(ckpt), "arch_file": str(arch_file),
                   "arch_sha256": sha256_file(arch_file)},
        "arch": arch.to_dict(), "num_joints": 17, "keypoint_names": info["names"], "skeleton": info["skeleton"],
        "flip_pairs": info["flip_pairs"], "heatmap_stride": 4, "input_size": list(INPUT),
        "normalization": {"color": "RGB", "scale": 1 / 255, "mean": list(MEAN), "std": list(STD)},
        "artifacts": entries})


def run_parity(argv, capsys):
    """python -m parity in-process: (exit code, captured out/err); torch's thread count restored after it."""
    from parity.cli import main

    n = torch.get_num_threads()
    try:
        rc = main(argv)
    finally:
        torch.set_num_threads(n)
    return rc, capsys.readouterr()


# ---------------------------------------------------------------------------------------- deliberately broken copies
def _tflite_ops(buf: bytearray):
    """(Model, its first subgraph, each operator's builtin name) of a .tflite held in `buf` (views, not copies)."""
    from ai_edge_litert import schema_py_generated as s

    from runtime.tflite_flatbuffer import builtin_name

    m = s.Model.GetRootAs(buf, 0)
    g = m.Subgraphs(0)
    return m, g, [builtin_name(m, g.Operators(i)) for i in range(g.OperatorsLength())]


def flip_tflite_weight_sign(src: Path, dst: Path, op: str = "CONV_2D") -> str:
    """Copy a float .tflite, negating the weight tensor of its first `op`; returns that tensor's name."""
    buf = bytearray(src.read_bytes())
    m, g, ops = _tflite_ops(buf)
    for i, name in enumerate(ops):
        if name != op:
            continue
        t = g.Tensors(int(g.Operators(i).InputsAsNumpy()[1]))
        b = m.Buffers(t.Buffer())
        if b.DataLength():  # weights inside the flatbuffer: DataAsNumpy is a view into `buf`
            w = b.DataAsNumpy().view(np.float32)
            w *= -1
        else:  # weights appended after the flatbuffer (offset/size)
            start, n = int(b.Offset()), int(b.Size())
            w = np.frombuffer(buf, np.float32, n // 4, start).copy()
            buf[start:start + n] = (-w).tobytes()
        dst.write_bytes(bytes(buf))
        return t.Name().decode()
    raise AssertionError(f"no {op} in {src}")


def change_coreml_scale(src: Path, dst: Path, factor: float = -30.0) -> str:
    """Copy an int8-weights .mlpackage, multiplying one per-channel scale of its first dequantize op by `factor`
    inside weights/weight.bin; returns that op's output name."""
    from coremltools import proto

    from runtime.coreml_reference import blob_span

    shutil.copytree(src, dst)
    spec = proto.Model_pb2.Model()
    data = dst / "Data/com.apple.CoreML"
    spec.ParseFromString((data / "model.mlmodel").read_bytes())
    fn = spec.mlProgram.functions["main"]
    for op in fn.block_specializations[fn.opset].operations:
        if op.type == "constexpr_affine_dequantize":
            v = op.attributes["scale"]
        elif op.type == "constexpr_blockwise_shift_scale":
            v = op.inputs["scale"].arguments[0].value
        else:
            continue
        dtype = np.float16 if v.type.tensorType.dataType == proto.MIL_pb2.DataType.FLOAT16 else np.float32
        wfile = data / "weights/weight.bin"
        off, size = blob_span(wfile, v.blobFileValue.offset)
        raw = bytearray(wfile.read_bytes())
        sc = np.frombuffer(raw, dtype, size // np.dtype(dtype).itemsize, off).copy()
        sc[0] *= factor
        raw[off:off + size] = sc.astype(dtype).tobytes()
        wfile.write_bytes(bytes(raw))
        return op.outputs[0].name
    raise AssertionError(f"no dequantize op in {src}")


def flip_onnx_weight_sign(src: Path, dst: Path, index: int = 3) -> str:
    """Copy an .onnx, negating the weight initializer of its `index`-th Conv node; returns that node's output."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(src))
    inits = {t.name: t for t in m.graph.initializer}
    node = [n for n in m.graph.node if n.op_type == "Conv"][index]
    w = inits[node.input[1]]
    w.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(w), w.name))
    onnx.save(m, str(dst))
    return node.output[0]


BROKEN = {("tflite", "fp32"): ("broken_fp32.tflite", flip_tflite_weight_sign),
          ("onnx", "fp32"): ("broken.onnx", flip_onnx_weight_sign),
          ("coreml-mlprogram", "int8-weights"): ("broken_int8w.mlpackage", change_coreml_scale)}


def add_broken(root: Path) -> dict:
    """Broken copies of the tflite fp32, onnx fp32 and Core ML int8-weights artifacts, added to the manifest.
    Returns {format: (broken file, what was changed)}."""
    from posekit.io import sha256_file

    man = json.loads((root / "manifest.json").read_text())
    out = {}
    for a in list(man["artifacts"]):
        if (a["format"], a["precision"]) in BROKEN and a["format"] not in out:
            name, fn = BROKEN[a["format"], a["precision"]]
            dst = str(Path(a["file"]).parent / name)
            out[a["format"]] = (dst, fn(root / a["file"], root / dst))
            man["artifacts"].append({**a, "file": dst, "sha256": sha256_file(root / dst)})
    (root / "manifest.json").write_text(json.dumps(man, indent=1))
    return out


def change_tflite_weight_scale(src: Path, dst: Path, op_index: int | None = None, channel: int | None = 0,
                               factor: float = 1.5) -> dict:
    """Copy an int8 .tflite, multiplying the per-channel weight scale of one output channel (every channel when
    `channel` is None) of one CONV_2D (the `op_index`-th, default the middle one) by `factor` without touching its
    int8 values: the runtime then requantizes with a wrong scale. Returns {'op': operator index, 'tensor': name}."""
    buf = bytearray(src.read_bytes())
    m, g, ops = _tflite_ops(buf)
    convs = [i for i, name in enumerate(ops) if name == "CONV_2D"]
    i = convs[len(convs) // 2] if op_index is None else convs[op_index]
    t = g.Tensors(int(g.Operators(i).InputsAsNumpy()[1]))
    sc = t.Quantization().ScaleAsNumpy()  # a view into `buf`
    assert sc.size > 1, "expected per-channel weight scales"
    if channel is None:
        sc *= factor
    else:
        sc[channel] *= factor
    dst.write_bytes(bytes(buf))
    return {"op": i, "tensor": t.Name().decode()}


def change_coreml_palette_entry(src: Path, dst: Path, shift: float = 0.25) -> str:
    """Copy a palettized .mlpackage, moving the most used entry of its first palette by `shift` x the palette's
    range inside weights/weight.bin; returns that op's output name."""
    from coremltools import proto

    from runtime.coreml_reference import CoreMLProgram, blob_span, unpack_bits

    shutil.copytree(src, dst)
    impl = CoreMLProgram(dst)._impl
    data = dst / "Data/com.apple.CoreML"
    for op in impl.block.operations:
        if op.type != "constexpr_lut_to_dense":
            continue
        a = impl._args(op, impl.consts)
        lut_v = op.attributes["lut"] if "lut" in op.attributes else op.inputs["lut"].arguments[0].value
        dtype = np.float16 if lut_v.type.tensorType.dataType == proto.MIL_pb2.DataType.FLOAT16 else np.float32
        wfile = data / "weights/weight.bin"
        off, size = blob_span(wfile, lut_v.blobFileValue.offset)
        raw = bytearray(wfile.read_bytes())
        lut = np.frombuffer(raw, dtype, size // np.dtype(dtype).itemsize, off).astype(np.float32)
        idx = unpack_bits(a["indices"], int(np.log2(lut.size)), int(np.prod(np.asarray(a["shape"]).ravel())))
        k = int(np.bincount(idx.astype(np.int64), minlength=lut.size).argmax())
        lut[k] += shift * float(lut.max() - lut.min())
        raw[off:off + size] = lut.astype(dtype).tobytes()
        wfile.write_bytes(bytes(raw))
        return op.outputs[0].name
    raise AssertionError(f"no palettized weight in {src}")


def fitted_tiny_net(crops: int = 64, seed: int = 0):
    """tiny_net with its joint classifier (head.final, 1x1 conv) fitted by ridge regression to the ground-truth
    heatmaps of real train crops: peaked heatmaps where joints tend to be, as a trained net has, in a second (an
    untrained net's flat heatmaps make every keypoint comparison a coin toss). Computed on one torch thread: the
    last bits of the features and of the solution depend on the thread count, and so the net of a test would
    depend on what ran before it in the process."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _fitted_tiny_net(crops, seed)
    finally:
        torch.set_num_threads(threads)


def _fitted_tiny_net(crops: int, seed: int):
    from posekit.data import CocoPose
    from posekit.keypoints import DEFAULT_COCO

    net = tiny_net(seed=seed)
    ds = CocoPose(DEFAULT_COCO, "train2017", INPUT, train=False, limit=crops, cache_images=False)
    items = [ds[i] for i in range(len(ds))]
    x = torch.stack([it["image"] for it in items])
    hm = torch.stack([it["heatmaps"] for it in items])
    feats = []
    h = net.head.final.register_forward_pre_hook(lambda m, a: feats.append(a[0]))
    with torch.no_grad():
        net(x)
    h.remove()
    f = feats[0].permute(0, 2, 3, 1).reshape(-1, feats[0].shape[1]).double()
    a = torch.cat([f, torch.ones(len(f), 1, dtype=f.dtype)], 1)
    b = hm.permute(0, 2, 3, 1).reshape(len(f), -1).double()
    # Ridge, not plain least squares: a random tiny net has dead channels, and lstsq's rank cut on such a matrix
    # turns on the last bits of the features, so the classifier could differ wildly between CPUs (seed 4 got an
    # all-zero one here; the CI failure fits a near-flat one).
    # The small ridge term makes the solution a continuous function of the features.
    gram = a.T @ a
    gram += 1e-4 * gram.diagonal().mean() * torch.eye(len(gram), dtype=gram.dtype)
    sol = torch.linalg.solve(gram, a.T @ b).float()  # (C + 1, J)
    with torch.no_grad():
        net.head.final.weight.copy_(sol[:-1].T.reshape(net.head.final.weight.shape))
        net.head.final.bias.copy_(sol[-1])
    return net
