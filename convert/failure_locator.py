"""Name the op and the module path behind a failed conversion: re-convert parts of the network (each with the
input it sees in the full forward) and descend into the first part that fails; Sequentials are bisected."""

from __future__ import annotations

import contextlib
import io
import warnings

import torch
from torch import nn

from model.hooks import forward_with_hooks


def _inputs(net: nn.Module, sample: torch.Tensor) -> dict[nn.Module, torch.Tensor]:
    seen = {}
    forward_with_hooks(net, sample, [(m, lambda mod, args: seen.setdefault(mod, args[0] if args else None))
                                     for m in net.modules()], pre=True)
    return seen


def _fails(try_convert, m: nn.Module, x) -> str | None:
    if x is None:
        return None
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try_convert(m.eval(), x)
    except Exception as e:
        return f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:200]
    return None


def _own_ops(m: nn.Module, x) -> list[str]:
    """aten ops of `m`'s own forward (not of its submodules)."""
    try:
        ep = torch.export.export(m, (x,))
    except Exception:
        return []
    ops = []
    for node in ep.graph.nodes:
        stack = node.meta.get("nn_module_stack") or {}
        if node.op == "call_function" and len(stack) <= 1:
            name = str(node.target)
            if name not in ops:
                ops.append(name)
    return ops


def locate(net: nn.Module, sample: torch.Tensor, try_convert) -> str:
    """' (op X in module 'a.b' (Class): error)' for the innermost failing part, or '' if no part fails alone."""
    inputs = _inputs(net, sample)
    path, mod, err = "", net, _fails(try_convert, net, sample)
    if err is None:
        return ""
    while True:
        kids = list(mod.named_children())
        hit = None
        if isinstance(mod, nn.Sequential) and len(kids) > 1:
            lo, hi = 0, len(kids)  # the first failing child is in kids[lo:hi]
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if _fails(try_convert, nn.Sequential(*[k for _, k in kids[lo:mid]]), inputs.get(kids[lo][1])):
                    hi = mid
                else:
                    lo = mid
            e = _fails(try_convert, kids[lo][1], inputs.get(kids[lo][1]))
            hit = (kids[lo], e) if e else None
        else:
            for name, kid in kids:
                e = _fails(try_convert, kid, inputs.get(kid))
                if e:
                    hit = ((name, kid), e)
                    break
        if hit is None:
            break
        (name, mod), err = hit
        path = f"{path}.{name}" if path else name
    ops = [o for o in _own_ops(mod, inputs.get(mod, sample)) if "getitem" not in o]
    return (f" (op {', '.join(ops[:3]) or '?'} in module '{path or '<top>'}' ({type(mod).__name__}): {err})")


def tflite_try(m, x):
    import litert_torch

    litert_torch.convert(m, (x,))


def onnx_try(m, x):
    torch.onnx.export(m, (x,), io.BytesIO(), dynamo=False, opset_version=17)


def coreml_try(m, x):
    from posekit.coreml_import import ct

    with torch.no_grad():
        ct.convert(torch.jit.trace(m, x), inputs=[ct.TensorType(shape=tuple(x.shape))], convert_to="mlprogram")
