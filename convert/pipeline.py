"""One conversion run: resolve the model, build the deploy graph, write each requested artifact (atomically, each
recorded in a resumable state file as it lands), then the manifest last."""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import torch
from tqdm import tqdm

from model.arch import dump
from model.checkpoint import save_checkpoint
from model.deploy import deploy_model
from posekit import metadata
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
    opts = {k: v for k, v in opts.items() if not k.startswith("_")}
    blob = json.dumps([weights.hexdigest(), src.arch.to_dict(), target, opts], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _save_source(src: Source, out: Path) -> None:
    """Parity needs the exact weights: a random init (or a resized arch) is saved beside the artifacts, once (a
    torch.save is not byte-reproducible, and the manifest pins its sha256)."""
    from model.checkpoint import read_checkpoint

    path = out / "source.pt"
    if path.is_file():
        old = read_checkpoint(path)
        sd = src.net.state_dict()
        if old["arch"] == src.arch.to_dict() and old["model"].keys() == sd.keys() and all(
                torch.equal(old["model"][k], v) for k, v in sd.items()):
            src.checkpoint, src.checkpoint_sha256 = str(path), sha256_file(path)
            return
    save_checkpoint(path, src.net, src.arch, note=src.note)
    src.checkpoint, src.checkpoint_sha256 = str(path), sha256_file(path)


def convert(src: Source, out: Path, targets: list[str], calib: int = 32, data: str | None = None,
            int8_io: bool = False, candidates=None, jobs: int = 2, log=print) -> Path:
    """Write `targets` into `out` and then the manifest. With jobs > 1, Core ML and ONNX run in a second process
    while TFLite converts in this one (each converter is single-threaded Python/MLIR work)."""
    from .tflite import DEFAULT_CANDIDATES

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    arch_file = dump(src.arch, out / "arch.yaml", header=f"arch of the converted model (from {src.arch_origin})")
    if src.random_init or src.checkpoint is None or src.input_override:
        _save_source(src, out)
    head = manifest.header(src, arch_file)
    state_path = out / STATE
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    net = deploy_model(src.net)
    h, w = src.arch.input_size
    sample = torch.randn(1, 3, h, w)
    opts = {"calib": calib, "data": data, "int8_io": int8_io, "candidates": list(candidates or DEFAULT_CANDIDATES)}
    opts["_head"] = head  # facts embedded in each file (posekit.metadata); "_" keys are not part of an artifact's key
    entries, extra, todo = [], {}, []
    for target in targets:
        key = _key(src, target, opts if target.startswith("tflite-int8") else {})
        prev = state.get(target)
        if prev and prev["key"] == key and all((out / e["file"]).exists() and sha256_file(out / e["file"]) ==
                                               e["sha256"] for e in prev["entries"]):
            entries += prev["entries"]  # resumed: finished by an earlier (killed) run
            extra.update(prev.get("extra", {}))
        else:
            todo.append((target, key))
    # quantized .tflite files start from the fp32 one: reuse it only if it was made from this very model
    fp32 = state.get("tflite-fp32")
    opts["_fp32_fresh"] = bool(fp32 and fp32["key"] == _key(src, "tflite-fp32", {}) and
                               (out / fp32["entries"][0]["file"]).is_file())
    if len(todo) < len(targets):
        log(f"  resumed {len(targets) - len(todo)} finished artifact(s) from {state_path}")

    def done(target, key, new, new_extra, secs):
        log(f"  {target}: {', '.join(e['file'] for e in new)} ({secs:.1f} s)")
        entries.extend(new)
        extra.update(new_extra)
        state[target] = {"key": key, "entries": new, "extra": new_extra}
        atomic_write_json(state_path, state)
        bar.update()

    remote = [(t, k) for t, k in todo if not t.startswith("tflite")] if jobs > 1 else []
    local = [x for x in todo if x not in remote]
    bar = tqdm(total=len(todo), desc="convert", unit="artifact", disable=None)
    with contextlib.ExitStack() as stack:
        futs = {}
        if remote:
            ex = stack.enter_context(ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")))
            futs = {ex.submit(_timed, t, net, src.arch, out, sample, None, opts): (t, k) for t, k in remote}
        lazy = {}

        def batches(kind):
            if kind not in lazy:
                fn, n = (calibration_batches, calib) if kind == "calib" else (eval_batches, 8)
                lazy[kind] = fn(src.arch, data, n)
            return lazy[kind]

        for target, key in local:
            done(target, key, *_timed(target, net, src.arch, out, sample, batches, opts, log))
        for fut in as_completed(futs):
            done(*futs[fut], *fut.result())
    bar.close()
    old = manifest.read(out)
    keep = old["artifacts"] if old and old.get("model") == head["model"] and old.get("source", {}).get(
        "checkpoint_sha256") == head["source"]["checkpoint_sha256"] else []
    if keep and "int8_selection" in old:
        extra = {"int8_selection": old["int8_selection"], **extra}
    path = manifest.write(out, head, entries, keep, **extra)
    log(f"wrote {path} ({len(todo)} new, {len(entries)} in this run's targets) in {time.perf_counter() - t0:.1f} s")
    return path


def _timed(target, net, arch, out, sample, batches, opts, log=print):
    t = time.perf_counter()
    new, extra = _one(target, net, arch, out, sample, batches, opts, log)
    new = [metadata.embed_entry(out, e, opts["_head"]) for e in new]  # in-file metadata, then size/sha256 again
    return new, extra, time.perf_counter() - t


def _one(target, net, arch, out, sample, batches, opts, log):
    from posekit import litert

    from . import coreml, onnx, tflite

    fmt, _, kind = target.partition("-")
    if fmt == "tflite":
        fp32 = out / "tflite" / "model_fp32.tflite"
        if kind == "fp32" or not opts["_fp32_fresh"]:
            _guard(lambda: litert.to_tflite(net, sample, fp32), "tflite", net, sample)
            opts["_fp32_fresh"] = True
        entries, extra = [], {}
        if kind == "fp32":
            ins, outs = tflite.io_entries(fp32)
            entries.append(manifest.artifact(out, fp32, "tflite", "fp32", None, ins, outs))
        elif kind == "int8":
            path = out / "tflite" / ("model_int8_io.tflite" if opts["int8_io"] else "model_int8.tflite")
            sel = tflite.export_int8(net, sample, path, fp32, batches("calib"), batches("eval"), opts["int8_io"],
                                     opts["candidates"], log)
            split = "train2017" if arch.num_joints == 17 else "valid"
            sel["calibration"] = f"{len(batches('calib'))} person crops, {opts['data'] or 'bundled data'} {split}"
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
        res = _guard(lambda: list(coreml.export_coreml(net, arch, out, [kind], log)), "coreml", net, sample)
        return [manifest.artifact(out, p, f, prec, q, ins, outs) for p, f, prec, q, ins, outs in res], {}
    path, ins, outs, info = _guard(lambda: onnx.export_onnx(net, arch, out / "onnx" / "model.onnx"), "onnx",
                                   net, sample)
    return [manifest.artifact(out, path, "onnx", "fp32", None, ins, outs, **info)], {}


def _guard(fn, what, net, sample):
    """Run one exporter; a failure becomes one line naming the op and the module path it came from."""
    from . import locate

    try:
        return fn()
    except Exception as e:
        text = str(e).strip()
        msg = text if isinstance(e, UserError) else f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"
        where = locate.locate(net, sample, getattr(locate, f"{what}_try"))
        raise UserError(f"{what}: cannot convert: {msg}{where}") from None
