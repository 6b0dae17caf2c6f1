"""One conversion run: resolve the model, build the deploy graph, write each requested artifact (atomically, each
recorded in a resumable state file as it lands), then the manifest last."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import torch
from tqdm import tqdm

from model.arch import dump
from model.checkpoint import save_checkpoint
from model.deploy import deploy_model
from posekit.errors import UserError
from posekit.io import atomic_write_json, sha256_file

from . import manifest
from .source import Source, calibration_batches, eval_batches

TFLITE = ("fp32", "fp16", "int8", "int8-dynamic")
COREML = ("fp32", "fp16", "fp32-tensor", "int8-weights", "palettized-8bit", "palettized-6bit", "neuralnetwork")
ALL = [f"tflite-{p}" for p in TFLITE] + [f"coreml-{k}" for k in COREML] + ["onnx"]
QUANTIZED = ["tflite-fp16", "tflite-int8", "tflite-int8-dynamic", "coreml-int8-weights", "coreml-palettized-8bit",
             "coreml-palettized-6bit"]
GROUPS = {"all": ALL, "quantized": QUANTIZED, "tflite": ALL[:4], "coreml": ALL[4:11], "onnx": ["onnx"]}
STATE = ".convert-state.json"


def expand_targets(names) -> list[str]:
    out = []
    for n in names:
        if n not in GROUPS and n not in ALL:
            raise UserError(f"--targets {n!r}: unknown (one of {', '.join(list(GROUPS) + ALL)})")
        out += [t for t in GROUPS.get(n, [n]) if t not in out]
    return out


def _key(src: Source, target: str, opts: dict) -> str:
    """Identifies an artifact's inputs: weights, arch, target and options; an artifact with the same key is reused."""
    weights = hashlib.sha256()
    for k, v in src.net.state_dict().items():
        weights.update(k.encode())
        weights.update(v.detach().contiguous().numpy().tobytes())
    blob = json.dumps([weights.hexdigest(), src.arch.to_dict(), target, opts], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def convert(src: Source, out: Path, targets: list[str], calib: int = 32, data: str | None = None,
            int8_io: bool = False, log=print) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    arch_file = dump(src.arch, out / "arch.yaml", header=f"arch of the converted model (from {src.arch_origin})")
    if src.random_init or src.checkpoint is None or src.input_override:
        # Parity needs the exact weights: a random init (or a resized arch) is saved beside the artifacts.
        ck = save_checkpoint(out / "source.pt", src.net, src.arch, note=src.note)
        src.checkpoint, src.checkpoint_sha256 = str(ck), sha256_file(ck)
    head = manifest.header(src, arch_file)
    state_path = out / STATE
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    net = deploy_model(src.net)
    h, w = src.arch.input_size
    sample = torch.randn(1, 3, h, w)
    opts = {"calib": calib, "data": data, "int8_io": int8_io}
    lazy = {}

    def batches(kind):
        if kind not in lazy:
            lazy[kind] = (calibration_batches if kind == "calib" else eval_batches)(src.arch, data, calib if kind ==
                                                                                   "calib" else 8)
        return lazy[kind]

    entries, extra = [], {}
    bar = tqdm(targets, desc="convert", unit="artifact", disable=None)
    for target in bar:
        bar.set_postfix_str(target)
        key = _key(src, target, opts if target.startswith("tflite-int8") else {})
        prev = state.get(target)
        if prev and prev["key"] == key and all((out / e["file"]).exists() and sha256_file(out / e["file"]) ==
                                               e["sha256"] for e in prev["entries"]):
            entries += prev["entries"]  # resumed: this artifact was finished by an earlier (killed) run
            extra.update(prev.get("extra", {}))
            continue
        t = time.perf_counter()
        new, new_extra = _one(target, net, src, out, sample, batches, int8_io, data, log)
        log(f"  {target}: {', '.join(e['file'] for e in new)} ({time.perf_counter() - t:.1f} s)")
        entries += new
        extra.update(new_extra)
        state[target] = {"key": key, "entries": new, "extra": new_extra}
        atomic_write_json(state_path, state)
    old = manifest.read(out)
    keep = old["artifacts"] if old and old.get("model") == head["model"] and old.get("source", {}).get(
        "checkpoint_sha256") == head["source"]["checkpoint_sha256"] else []
    if old and keep:
        extra = {**{k: v for k, v in old.items() if k == "int8_selection"}, **extra}
    path = manifest.write(out, head, entries, keep, **extra)
    log(f"wrote {path} ({len(entries)} artifacts this run) in {time.perf_counter() - t0:.1f} s")
    return path


def _one(target, net, src, out, sample, batches, int8_io, data, log):
    from posekit import litert

    from . import coreml, onnx, tflite

    fmt, _, kind = target.partition("-")
    if fmt == "tflite":
        fp32 = out / "tflite" / "model_fp32.tflite"
        if kind == "fp32" or not fp32.exists():
            _guard(lambda: litert.to_tflite(net, sample, fp32), "tflite", net, sample)
        entries, extra = [], {}
        if kind == "fp32":
            ins, outs = tflite.io_entries(fp32)
            entries.append(manifest.artifact(out, fp32, "tflite", "fp32", None, ins, outs))
        elif kind == "int8":
            path = out / "tflite" / ("model_int8_io.tflite" if int8_io else "model_int8.tflite")
            sel = tflite.export_int8(net, sample, path, fp32, batches("calib"), batches("eval"), int8_io, log)
            split = "train2017" if src.arch.num_joints == 17 else "valid"
            sel["calibration"] = f"{len(batches('calib'))} person crops, {data or 'bundled data'} {split}"
            ins, outs = tflite.io_entries(path)
            entries.append(manifest.artifact(out, path, "tflite", "int8", sel["chosen"], ins, outs))
            extra["int8_selection"] = sel
        else:
            path = out / "tflite" / f"model_{kind.replace('-', '_')}.tflite"
            litert.quantize_tflite(fp32, path, kind)
            q = {"fp16": "ai-edge-quantizer float_casting (fp16 weights)",
                 "int8-dynamic": "ai-edge-quantizer dynamic_wi8_afp32"}[kind]
            ins, outs = tflite.io_entries(path)
            entries.append(manifest.artifact(out, path, "tflite", kind, q, ins, outs))
        return entries, extra
    if fmt == "coreml":
        res = _guard(lambda: list(coreml.export_coreml(net, src.arch, out, [kind], log)), "coreml", net, sample)
        return [manifest.artifact(out, p, f, prec, q, ins, outs) for p, f, prec, q, ins, outs in res], {}
    path, ins, outs, info = _guard(lambda: onnx.export_onnx(net, src.arch, out / "onnx" / "model.onnx"), "onnx",
                                   net, sample)
    return [manifest.artifact(out, path, "onnx", "fp32", None, ins, outs, **info)], {}


def _guard(fn, what, net, sample):
    """Run one exporter; a failure becomes one line naming the op and the module path it came from."""
    try:
        return fn()
    except UserError as e:
        raise UserError(f"{what}: {e}{locate(net, sample, str(e))}") from None
    except Exception as e:
        msg = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        raise UserError(f"{what}: cannot convert: {msg}{locate(net, sample, msg)}") from None


def locate(net, sample, msg: str) -> str:
    """' (op aten.X in module a.b.c)' for the first op of `net` that the error message points at: by the source
    line it quotes (litert-torch MLIR locations are file:line of the torch code) or by the aten op's name."""
    import re

    try:
        ep = torch.export.export(net, (sample,))
    except Exception as e:  # the module does not even export: torch's message names the op
        return f" (torch.export: {str(e).strip().splitlines()[0][:200]})"
    lines = set(re.findall(r"([\w./-]+\.py):(\d+)", msg))
    for node in ep.graph.nodes:
        if node.op != "call_function":
            continue
        trace = node.meta.get("stack_trace") or ""
        op = getattr(node.target, "__name__", str(node.target)).split(".")[0]
        hit = any(f"{Path(f).name}\", line {ln}" in trace for f, ln in lines) or (
            not lines and re.search(rf"\b{re.escape(op)}\b", msg))
        if hit:
            stack = node.meta.get("nn_module_stack") or {}
            path = list(stack.values())[-1][0] if stack else "<top>"
            return f" (op {node.target} in module '{path}')"
    return ""
