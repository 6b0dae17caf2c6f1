"""Per-op latency of a .tflite on the host, from Python, on the kernels that run it (XNNPACK or builtin).

The ai_edge_litert Python API has no op profiler, so the model is cut into single-op models: op i with its own
tensors (shapes, dtypes, quantization), its constant buffers and its options, the op's non-constant inputs made the
model's inputs and fed the values they take in the whole model (one run of the whole model with every tensor made an
output). Each is run on the same interpreter and kernels as the whole model, one invoke at a time in turn with the
whole model and the other ops, round after round, its inputs written just before (as the op before it writes them
in the whole model); the median per invoke is kept, and the per-invoke cost of an interpreter (a one-element ADD
model, in the same turns) is taken off each op, so the ops' sum is comparable with the whole model's time
(`OpProfile.ratio`). Invoked in turn, an op finds the caches as its neighbours leave them, not as its own last run
left them: timed back to back instead, an op that fits in L2 alone runs faster than it does inside a net whose
working set does not (the sum fell to 0.86x of the whole on a 128x96 block), and a shared machine's load drifts
between one op's samples and another's. The whole model's time here is one invoke after others ran, the state an
app's per-frame invoke finds, so it is above the bench's back-to-back figure.

Why single-op models and not prefix models (outputs at op i, op time = t(i) - t(i-1)): a prefix difference is the
difference of two noisy totals (its error grows with the prefix, and is often negative for small ops late in the
net), and timing N prefixes costs O(N^2) op runs; a single-op model times each op once, directly. What a single-op
model cannot show is what the runtime does across ops (XNNPACK fusing or eliding an op in the whole graph, cache
reuse between neighbours): that shows as the gap between the sum and the whole model.

The table type (`OpTime`, `OpProfile`, `format_profile`) is shared with the phone path (benchmark_model
--enable_op_profiling, device_bench/android.py), so a host and a phone profile print alike.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from posekit.errors import UserError

from .tflite_flatbuffer import _schema, load_model, op_name, pack_model

KERNELS = ("xnnpack", "builtin")  # profiled by default; any set of runtime/tflite_kernels.py may be asked for


@dataclass(frozen=True)
class OpTime:
    """One op's time: `index` in the graph (None when the source does not say), builtin type, output shape and
    dtype ('1x32x24x64 int8'), ms per run, and a name (output tensor name or the profiler's node name)."""
    index: int | None
    type: str
    shape: str
    ms: float
    name: str = ""


@dataclass(frozen=True)
class OpProfile:
    """Per-op times of one model on one kernel set. `model_ms`: the whole model's time on the same kernels (None
    when the source gives no total); `overhead_ms`: per-invoke cost taken off each host op (0 for a phone)."""
    source: str
    kernels: str
    ops: tuple[OpTime, ...]
    model_ms: float | None
    overhead_ms: float = 0.0
    notes: tuple[str, ...] = field(default=())

    @property
    def sum_ms(self) -> float:
        return float(sum(o.ms for o in self.ops))

    @property
    def ratio(self) -> float | None:
        """Sum of the ops over the whole model (1.0: every ms attributed)."""
        return self.sum_ms / self.model_ms if self.model_ms else None

    def by_type(self) -> dict[str, float]:
        out: dict[str, float] = defaultdict(float)
        for o in self.ops:
            out[o.type] += o.ms
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))

    def to_json(self) -> dict:
        return {"source": self.source, "kernels": self.kernels, "model_ms": self.model_ms,
                "sum_ms": self.sum_ms, "ratio": self.ratio, "overhead_ms": self.overhead_ms,
                "ops": [vars(o) for o in self.ops], "by_type": self.by_type()}


def format_profile(p: OpProfile, top: int = 10) -> str:
    """The top ops (type, shape, ms, % of the model) and the time per op type."""
    total = p.model_ms or p.sum_ms
    head = f"per-op profile, {p.source} [{p.kernels}]: {len(p.ops)} ops, sum {p.sum_ms:.3f} ms"
    if p.model_ms:
        head += f", whole model {p.model_ms:.3f} ms, sum/model {p.ratio:.2f}"
    if p.overhead_ms:
        head += f" (per-invoke {p.overhead_ms * 1e3:.1f} us taken off each op)"
    lines = [head]
    for o in sorted(p.ops, key=lambda o: -o.ms)[:top]:
        idx = "" if o.index is None else f"#{o.index}"
        lines.append(f"  {o.ms:8.3f} ms {100 * o.ms / total:5.1f}%  {idx:>5} {o.type:<20} {o.shape:<22} "
                     f"{short_name(o.name)}")
    types = p.by_type()
    lines.append("  by type: " + ", ".join(f"{t} {ms:.2f} ms ({100 * ms / total:.0f}%)"
                                            for t, ms in list(types.items())[:8]))
    lines += [f"  note: {n}" for n in p.notes]
    return "\n".join(lines)


def short_name(name: str, parts: int = 2) -> str:
    """litert-torch names a tensor by the full module path of each fused op ('a/b/model.blocks.ConvBNAct_1/...;;...'):
    the last `parts` modules of the first path, less torch's own (Sequential, activations, Conv2d)."""
    name, plus, note = name.partition(" (+")
    first = name.split(";")[0]
    mods = [m.rsplit(".", 1)[-1] for m in first.split("/")]
    keep = [m for m in mods if not m.startswith(("Sequential", "ReLU", "Conv2d", "ConvTranspose2d", "Hardswish"))]
    return ("/".join(keep[-parts:]) if "/" in first else first) + (plus + note if plus else "")


# ---------------------------------------------------------------------------------------------------- flatbuffer
def _is_const(m, t) -> bool:
    return t.buffer > 0 and m.buffers[t.buffer].data is not None and len(m.buffers[t.buffer].data) > 0


def _type_name(code: int) -> str:
    s = _schema()
    return {v: k.lower() for k, v in vars(s.TensorType).items() if not k.startswith("_")}.get(code, str(code))


def _shape(t) -> str:
    dims = "x".join(str(int(d)) for d in (t.shape if t.shape is not None else []))
    return f"{dims or 'scalar'} {_type_name(t.type)}"


def _name(t) -> str:
    return t.name.decode() if isinstance(t.name, bytes) else str(t.name or "")


def single_op_model(m, i: int, sg: int = 0) -> tuple[bytes, list[int]]:
    """Op `i` of subgraph `sg` of ModelT `m` as a model of its own: (bytes, the original indices of its inputs, in
    the new model's input order). Constants keep their buffers; every other input becomes a model input."""
    return ops_model(m, [i], sg)


def ops_model(m, idx: list[int], sg: int = 0) -> tuple[bytes, list[int]]:
    """Ops `idx` (in graph order, each feeding the next) as a model of their own: its inputs are the non-constant
    tensors they read and do not make, its outputs those the last op makes; (bytes, original input indices)."""
    import copy

    s = _schema()
    g = m.subgraphs[sg]
    ops = [g.operators[i] for i in idx]
    ins = lambda op: [t for t in (op.inputs if op.inputs is not None else []) if t >= 0]  # noqa: E731
    made = {t for op in ops for t in op.outputs}
    used = list(dict.fromkeys(t for op in ops for t in ins(op) + list(op.outputs)))
    remap = {t: k for k, t in enumerate(used)}
    buffers = [s.BufferT()]
    tensors = []
    for t in used:
        nt = copy.copy(g.tensors[t])
        if _is_const(m, g.tensors[t]):
            buffers.append(m.buffers[g.tensors[t].buffer])
            nt.buffer = len(buffers) - 1
        else:
            nt.buffer = 0
        tensors.append(nt)
    codes, new_ops = [], []
    for op in ops:
        new_op = copy.copy(op)
        code = m.operatorCodes[op.opcodeIndex]
        if code not in codes:
            codes.append(code)
        new_op.opcodeIndex = codes.index(code)
        new_op.inputs = [remap[t] if t >= 0 else -1 for t in (op.inputs if op.inputs is not None else [])]
        new_op.outputs = [remap[t] for t in op.outputs]
        new_op.intermediates = None
        new_ops.append(new_op)
    inputs = [t for t in dict.fromkeys(t for op in ops for t in ins(op))
              if t not in made and not _is_const(m, g.tensors[t])]
    ng = s.SubGraphT()
    ng.tensors, ng.operators = tensors, new_ops
    ng.inputs, ng.outputs = [remap[t] for t in inputs], [remap[t] for t in ops[-1].outputs]
    ng.name = "ops"
    nm = s.ModelT()
    nm.version, nm.description = m.version, b"ops cut from a model"
    nm.operatorCodes, nm.subgraphs, nm.buffers = codes, [ng], buffers
    return pack_model(nm), inputs


# XNNPACK folds a PAD into the padding of the convolution it feeds (so in the whole model it costs nothing):
# on XNNPACK such a PAD is timed together with its conv and its time goes to the conv's row.
FUSED_PAD_INTO = ("CONV_2D", "DEPTHWISE_CONV_2D")


def units(m, kernels: str, sg: int = 0) -> list[list[int]]:
    """The op groups timed together on `kernels`: [i] for each op; on XNNPACK [pad, conv] where it fuses the pad,
    and a DEQUANTIZE of constant weights (an fp16 file's) goes with each op that reads it: XNNPACK takes such
    weights as static and converts them once when it prepares the graph, so they cost nothing per invoke, and an
    op cut without its DEQUANTIZE would get its weights as a run-time input, which XNNPACK refuses for a conv."""
    g = m.subgraphs[sg]
    if kernels != "xnnpack":
        return [[i] for i in range(len(g.operators))]
    readers: dict[int, list[int]] = defaultdict(list)
    for i, op in enumerate(g.operators):
        for t in op.inputs if op.inputs is not None else []:
            readers[t].append(i)
    static = {i for i, op in enumerate(g.operators)
              if op_name(m, op) == "DEQUANTIZE" and _is_const(m, g.tensors[op.inputs[0]])
              and op.outputs[0] not in g.outputs and readers[op.outputs[0]]}
    made_by = {t: i for i in static for t in g.operators[i].outputs}
    out, skip = [], set(static)
    for i, op in enumerate(g.operators):
        if i in skip:
            continue
        r = readers[op.outputs[0]]
        if (op_name(m, op) == "PAD" and len(r) == 1 and op_name(m, g.operators[r[0]]) in FUSED_PAD_INTO
                and op.outputs[0] not in g.outputs and g.operators[r[0]].inputs[0] == op.outputs[0]):
            unit = [i, r[0]]
            skip.add(r[0])
        else:
            unit = [i]
        weights = {made_by[t] for j in unit for t in g.operators[j].inputs if t in made_by}
        out.append(sorted(weights) + unit)
    return out


def _all_outputs_model(m, sg: int = 0) -> bytes:
    """The model with every op output made a model output (so one run shows every intermediate value)."""
    import copy

    nm = copy.copy(m)
    g = copy.copy(m.subgraphs[sg])
    outs = [t for op in g.operators for t in op.outputs if t >= 0]
    g.outputs = list(dict.fromkeys(list(g.outputs) + outs))
    nm.subgraphs = [g]
    nm.signatureDefs, nm.metadata, nm.metadataBuffer = None, None, None
    return pack_model(nm)


def _noop_model() -> bytes:
    """One ADD of two one-element float tensors: what an interpreter invoke costs with (almost) no work."""
    s = _schema()
    ts = []
    for n in (b"a", b"b", b"c"):
        t = s.TensorT()
        t.shape, t.type, t.buffer, t.name = [1], s.TensorType.FLOAT32, 0, n
        ts.append(t)
    op = s.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = 0, [0, 1], [2]
    op.builtinOptionsType, op.builtinOptions = s.BuiltinOptions.AddOptions, s.AddOptionsT()
    code = s.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = s.BuiltinOperator.ADD
    code.version = 1
    g = s.SubGraphT()
    g.tensors, g.operators, g.inputs, g.outputs = ts, [op], [0, 1], [2]
    m = s.ModelT()
    m.version, m.operatorCodes, m.subgraphs, m.buffers = 3, [code], [g], [s.BufferT()]
    return pack_model(m)


# ---------------------------------------------------------------------------------------------------- timing
def _interp(content: bytes, kernels: str, threads: int):
    """The bench's interpreter (runtime.tflite.interpreter) on the model bytes `content`."""
    from .tflite import interpreter

    return interpreter(content, threads, kernels=kernels)


def _feed(it, values: list[np.ndarray]) -> None:
    for d, v in zip(it.get_input_details(), values):
        it.set_tensor(d["index"], np.asarray(v, dtype=d["dtype"]).reshape(d["shape"]))


def time_invoke(it, repeats: int = 7, target_s: float = 0.01, clock=time.thread_time_ns) -> float:
    """ms per invoke: the minimum over `repeats` of the mean of a batch of invokes lasting about `target_s` (the
    minimum: what the kernels cost when no other job takes the core; the thread's CPU clock for 1 thread)."""
    for _ in range(2):
        it.invoke()
    t0 = time.perf_counter()
    it.invoke()
    n = max(1, min(1000, int(target_s / max(time.perf_counter() - t0, 1e-6))))
    best = float("inf")
    for _ in range(repeats):
        c0 = clock()
        for _ in range(n):
            it.invoke()
        best = min(best, (clock() - c0) / 1e6 / n)
    return best


def time_in_turn(runs: list[tuple[object, list[np.ndarray]]], rounds: int | None = None,
                 budget_s: float = 3.0) -> list[float]:
    """Median ms of one invoke of each (interpreter, input values) in `runs`, invoked in turn, round after round:
    each invoke follows the others' as an op follows its neighbours in a whole-model run (the caches hold what they
    touched), and its inputs were just written (`set_tensor`, untimed), as the op before it writes them. A burst
    of load on a shared machine falls on a few invokes of every entry alike, and the median drops them. `rounds`:
    as many as fit in `budget_s` (21 to 201) unless given."""
    for it, values in runs:
        _feed(it, values)
        it.invoke()
    samples: list[list[float]] = [[] for _ in runs]
    t0 = time.perf_counter()
    r = 0
    while True:
        for (it, values), out in zip(runs, samples):
            _feed(it, values)
            c0 = time.thread_time_ns()  # 1 thread: the calling thread's CPU time is the invoke's
            it.invoke()
            out.append((time.thread_time_ns() - c0) / 1e6)
        r += 1
        if rounds is None and r == 3:  # size the run from the first rounds
            per = (time.perf_counter() - t0) / r
            rounds = max(21, min(201, int(budget_s / max(per, 1e-6))))
        if rounds is not None and r >= rounds:
            return [float(np.median(s)) for s in samples]


def _input_values(it, rng) -> list[np.ndarray]:
    out = []
    for d in it.get_input_details():
        dt = np.dtype(d["dtype"])
        if dt.kind == "f":
            out.append(rng.normal(0, 1, d["shape"]).astype(dt))
        else:
            info = np.iinfo(dt)
            out.append(rng.integers(max(info.min, -128), min(info.max, 127) + 1, d["shape"]).astype(dt))
    return out


def op_models(path: str | Path, kernels: str = "builtin") -> Iterator[tuple[int, str, str, str, bytes,
                                                                        list[np.ndarray]]]:
    """(index, type, output shape, output name, model bytes, input values from a whole-model run) for every op of
    the main subgraph, in graph order; on XNNPACK a PAD it fuses into the next conv comes with that conv (`units`),
    the row being the conv's."""
    m = load_model(path)
    g = m.subgraphs[0]
    if len(m.subgraphs) > 1:
        raise UserError(f"{path}: {len(m.subgraphs)} subgraphs; the per-op profile cuts single-subgraph models")
    whole = _interp(_all_outputs_model(m), "builtin", 1)
    _feed(whole, _input_values(whole, np.random.default_rng(0)))
    whole.invoke()
    for unit in units(m, kernels):
        content, inputs = ops_model(m, unit)
        values = [whole.get_tensor(t) for t in inputs]
        op = g.operators[unit[-1]]
        out = g.tensors[op.outputs[0]]
        fused_pad = len(unit) > 1 and op_name(m, g.operators[unit[-2]]) == "PAD"
        name = _name(out) + (" (+ the PAD before it, fused by XNNPACK)" if fused_pad else "")
        yield unit[-1], op_name(m, op), _shape(out), name, content, values


def profile_tflite(path: str | Path, kernels: str | tuple[str, ...] = KERNELS, threads: int = 1,
                   rounds: int | None = None) -> dict[str, OpProfile]:
    """{kernels: OpProfile} of the .tflite at `path`, each op timed alone as a single-op model (module doc)."""
    kernels = (kernels,) if isinstance(kernels, str) else tuple(kernels)
    from .tflite_kernels import KERNEL_SETS

    bad = [k for k in kernels if k not in KERNEL_SETS]
    if bad:
        raise UserError(f"kernels {bad[0]!r}: expected one of {', '.join(KERNEL_SETS)}")
    if threads != 1:  # the thread CPU clock equals latency only when the calling thread does all the work
        raise UserError("the per-op profile runs 1 thread (each op's time is the calling thread's CPU time)")
    path = Path(path)
    res = {}
    for k in kernels:
        whole = _interp(path.read_bytes(), k, threads)
        noop = _interp(_noop_model(), k, threads)
        cut = list(op_models(path, k))
        # the per-invoke cost (Python call, interpreter entry) is measured on a one-element ADD in the same turns
        runs = [(noop, [np.ones(1, np.float32)] * 2), (whole, _input_values(whole, np.random.default_rng(0)))]
        runs += [(_interp(content, k, threads), values) for *_, content, values in cut]
        overhead, model_ms, *op_ms = time_in_turn(runs, rounds)
        times = tuple(OpTime(i, typ, shape, max(0.0, ms - overhead), name)
                      for (i, typ, shape, name, *_), ms in zip(cut, op_ms))
        res[k] = OpProfile(source=f"host {path.name}", kernels=k, ops=times,
                           model_ms=model_ms - overhead, overhead_ms=overhead)
        del runs, whole, noop
    return res


def build_parser():
    from posekit.cli import ArgumentParser, output_file, positive_int

    ap = ArgumentParser(prog="posenas profile",
                        description="per-op latency of a .tflite on this host (each op timed alone as a single-op "
                                    "model), XNNPACK and builtin kernels")
    ap.add_argument("model", help="a .tflite file")
    from .tflite_kernels import KERNEL_SETS

    ap.add_argument("--kernels", choices=(*KERNEL_SETS, "both"), default="both",
                    help="kernel set(s) to profile (default both: xnnpack and builtin)")
    ap.add_argument("--top", type=positive_int, default=10, help="ops listed per kernel set (default 10)")
    ap.add_argument("--rounds", type=positive_int, default=None,
                    help="rounds of one invoke of every op and of the whole model, the median kept (default: as "
                         "many as fit in about 3 s, 21 to 201)")
    ap.add_argument("--json", type=output_file, help="also write the profiles to this JSON file")
    return ap


def _main(argv=None) -> int:
    from posekit.io import atomic_write_json

    args = build_parser().parse_args(argv)
    path = Path(args.model)
    if not path.is_file() or path.suffix != ".tflite":
        raise UserError(f"{path}: not a .tflite file")
    from posekit import manifest
    from runtime.artifact_check import check_artifact

    check_artifact(path, *manifest.listing(path))  # damaged or changed since its manifest: one line, before running
    res = profile_tflite(path, KERNELS if args.kernels == "both" else args.kernels, rounds=args.rounds)
    for p in res.values():
        print(format_profile(p, args.top))
    if args.json:
        atomic_write_json(args.json, {k: p.to_json() for k, p in res.items()})
        print(f"wrote {args.json}")
    return 0


def main(argv=None) -> int:
    """`posenas profile MODEL.tflite` (python -m runtime.tflite_profile)."""
    from posekit.cli import main_guard

    return main_guard(_main)(argv)


if __name__ == "__main__":
    import sys

    sys.exit(main())
