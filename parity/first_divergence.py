"""When an artifact fails: find the first layer whose error jumps.

The runtime's intermediate tensors (TFLite with `experimental_preserve_all_tensors`, ONNX Runtime with every node
output added as a graph output, the Core ML executor's own environment) are each matched to the PyTorch tensor of
the same shape (NCHW or NHWC) that it is closest to (BN is folded and activations fused in the artifacts, so names
do not line up; values do). Walking the runtime's ops in execution order, the first whose relative error jumps above
both a floor and 4x the largest error before it is named, with the PyTorch module it matches.
"""

from __future__ import annotations

import numpy as np
import torch

from model.hooks import forward_with_hooks

FLOORS = {"fp32": 1e-3, "fp16": 2e-2}  # relative L2 error an op may reach without being "diverged"
DEFAULT_FLOOR = 0.15


def torch_tensors(net, x: np.ndarray) -> list[tuple[str, str, np.ndarray]]:
    """(module name, module type, output) of every submodule's output, on one input. Outputs are copied when made:
    in-place ReLUs overwrite their input, so BN's output and ReLU's are distinct entries."""
    out = []

    def hook(name):
        def fn(mod, args, y):
            if isinstance(y, torch.Tensor):
                out.append((name, type(mod).__name__, y.detach().numpy().copy()))
        return fn

    forward_with_hooks(net, torch.from_numpy(np.ascontiguousarray(x[:1], np.float32)),
                       [(m, hook(name)) for name, m in net.named_modules() if name])
    return out


def module_path(name: str) -> str | None:
    """The PyTorch module path a runtime tensor name carries, or None.

    litert-torch: '.../model.net.Backbone_backbone/torch.nn.modules.container.Sequential_stem/model.blocks.ConvBNAct_0/
    ...ReLU_2' -> 'backbone.stem.0.2' (components '<class>_<attribute>', the first the root, 'module' the wrapper).
    torch.onnx: '/backbone/blocks/blocks.0/conv/conv.2/conv.2.0/Conv_output_0' -> 'backbone.blocks.0.conv.2.0'
    (a scope named '<parent scope>.<child>' is that child)."""
    first = name.split(";")[0]
    if first.startswith("/"):  # ONNX
        segs, path, last = first.strip("/").split("/")[:-1], [], None
        for seg in segs:
            path.append(seg[len(last) + 1:] if last and seg.startswith(last + ".") else seg)
            last = seg
        return ".".join(path) or None
    parts = first.split("/")
    if len(parts) < 2 or not all("_" in p.rsplit(".", 1)[-1] for p in parts[1:]):
        return None
    attrs = [p.rsplit(".", 1)[-1].split("_", 1)[1] for p in parts[1:]]
    return ".".join(attrs[1:] if attrs[0] == "module" else attrs) or None


def short(name: str) -> str:
    """A runtime tensor name made readable: TFLite joins the fused modules' paths with ';'."""
    first = name.split(";")[0]
    return module_path(first) or ("/".join(first.split("/")[-2:]) if len(first) > 60 else first)


def _rel(a, t):
    return float(np.linalg.norm(a - t) / (np.linalg.norm(t) + 1e-12))


def _match(a: np.ndarray, refs, nhwc: bool, start: int = 0, hint: str | None = None):
    """(rel error, index, module name, module type) of the PyTorch tensor `a` stands for: the closest same-shaped
    tensor at or after `start` (ops run in order) or of the module its name names (a hint only: a BN-folded conv is
    named after the conv but computes the BN's output)."""
    a = np.asarray(a, np.float32)
    cands = [a] + ([a.transpose(0, 3, 1, 2)] if a.ndim == 4 and nhwc else [])
    best = None
    for c in cands:
        for i, (name, typ, t) in enumerate(refs):
            if t.shape != c.shape or (i < start and name != hint):
                continue
            e = _rel(c, t)
            if best is None or e < best[0]:
                best = (e, i, name, typ)
    return best


def tflite_intermediates(runner, x):
    from runtime.tflite import interpreter

    # builtin kernels, no XNNPACK delegate: a delegate runs the graph as one op and keeps no intermediates
    it = interpreter(runner.path, kernels="builtin", preserve_all_tensors=True)
    it.set_tensor(it.get_input_details()[0]["index"], runner.prepare(x[:1]))
    it.invoke()
    details = {d["index"]: d for d in it.get_tensor_details()}
    for op in it._get_ops_details():  # execution order
        for t in op["outputs"]:
            d = details.get(int(t))
            if d is None:
                continue
            v = it.get_tensor(int(t))
            q = d.get("quantization_parameters", {})
            if v.dtype in (np.int8, np.uint8, np.int16) and len(q.get("scales", [])) == 1:
                v = (v.astype(np.float32) - q["zero_points"][0]) * q["scales"][0]
            if v.dtype.kind == "f":
                yield op["op_name"], d["name"], v


def onnx_intermediates(runner, x):
    import onnx

    from runtime.onnx import session

    m = onnx.load(str(runner.path))
    have = {o.name for o in m.graph.output}
    order = []
    for node in m.graph.node:
        for o in node.output:
            order.append((node.op_type, o))
            if o and o not in have:
                m.graph.output.append(onnx.ValueInfoProto(name=o))
    sess = session(m.SerializeToString(), what=runner.path)
    names = [o.name for o in sess.get_outputs()]
    vals = dict(zip(names, sess.run(names, {sess.get_inputs()[0].name: runner.prepare(x[:1])})))
    for typ, name in order:
        v = vals.get(name)
        if v is not None and np.asarray(v).dtype.kind == "f":
            yield typ, name, np.asarray(v, np.float32)


def coreml_intermediates(runner, x):
    prog = runner.model
    env = prog.run({prog.inputs[0]["name"]: runner.prepare(x[:1])}, keep_all=True)
    for typ, name in prog.op_order():
        v = env.get(name)
        if isinstance(v, np.ndarray) and v.dtype.kind == "f":
            yield typ, name, v.astype(np.float32)


def first_divergence(runner, net, x: np.ndarray, precision: str) -> dict:
    """{'op', 'tensor', 'torch_module', 'rel_error', 'before', 'trace': [...]} or {'note': why not}."""
    fmt = runner.entry["format"]
    if fmt == "tflite":
        gen = tflite_intermediates(runner, x)
    elif fmt == "onnx":
        gen = onnx_intermediates(runner, x)
    elif fmt.startswith("coreml") and hasattr(runner.model, "op_order"):
        gen = coreml_intermediates(runner, x)
    else:
        return {"note": f"{runner.engine} does not expose intermediate tensors"}
    refs = torch_tensors(net, x)
    nhwc = runner.inp.get("layout") == "NHWC"
    floor = FLOORS.get(precision, DEFAULT_FLOOR)
    trace, worst, pos = [], 0.0, 0
    found = step = None
    types = {n: t for n, t, _ in refs}
    for typ, name, v in gen:
        hint = module_path(name)
        m = _match(v, refs, nhwc, pos, hint)
        if m is None:
            continue
        e, i, mod, mtyp = m
        if e < 0.5:  # a confident match: later ops map to later modules
            pos = max(pos, i)
        elif hint in types:  # a diverged tensor matches nothing well: name the module its name names
            mod, mtyp = hint, types[hint]
        entry = {"op": typ, "tensor": short(name), "torch_module": f"{mod} ({mtyp})", "rel_error": e,
                 "before": worst, "index": len(trace)}
        trace.append(entry)
        if found is None and e > floor and e > 4 * worst:
            found = entry
        if e > worst and (step is None or e - worst > step["rel_error"] - step["before"]):
            step = entry
        worst = max(worst, e)
    if not trace:
        return {"note": "no intermediate tensor matched a PyTorch tensor by shape"}
    if found is None:
        found = {"note": f"no single op's error jumps (max relative error {worst:.3g}); largest step: {step['op']} "
                         f"{step['tensor']!r} ~ PyTorch {step['torch_module']}, {step['before']:.3g} -> "
                         f"{step['rel_error']:.3g}" if step else f"max relative error {worst:.3g}"}
    return {**found, "trace": [{k: t[k] for k in ("op", "tensor", "torch_module", "rel_error")} for t in trace[:400]]}
