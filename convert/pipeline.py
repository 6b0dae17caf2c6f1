"""One conversion run: resolve the model, build the deploy graph, write each requested artifact (atomically, each
recorded in a resumable state file as it lands), then the manifest last, checked against the files.

The float graphs are written here through the shared layer's exporters (posekit.export_tflite, posekit.export_coreml,
posekit.export_onnx); the quantized ones by quantize/ (calibration crops, recipes, candidate selection, Core ML
weight compression). One writer per folder (posekit/lock.py); third-party output goes to <out>/convert.log."""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import torch
from tqdm import tqdm

from model.arch import dump
from model.checkpoint import save_checkpoint
from model.deploy import deploy_model
from model.source import Source
from posekit import manifest
from posekit.errors import UserError
from posekit.io import atomic_write_json, sha256_file
from posekit.lock import folder_lock
from runtime import metadata

from . import targets as registry
from .worker import chatter_to, die_with_parent, net_bytes, net_from_bytes

STATE = ".convert-state.json"
KERNEL_TIMING_S = 1.0  # per .tflite: its kernel sets timed on this host for the manifest and metadata
LOG = "convert.log"


def expand_targets(names, decode: bool = False) -> list[str]:
    """--targets values -> target names (registry order); decode: with their decoded (-kp) twins."""
    return [t.name for t in registry.expand(names, decode)]


def _key(src: Source, target: str, opts: dict) -> str:
    """Identifies an artifact's inputs: weights, arch, target and options; an artifact with the same key is reused."""
    weights = hashlib.sha256()
    for k, v in src.net.state_dict().items():
        weights.update(k.encode())
        weights.update(v.detach().contiguous().numpy().tobytes())
    opts = {k: v for k, v in opts.items() if not k.startswith("_")}
    deconv = registry.get(target).deconv  # the deploy graph's rewrite: a changed one makes a new artifact
    blob = json.dumps([weights.hexdigest(), src.arch.to_dict(), target, deconv, opts], sort_keys=True, default=str)
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


def _stale_temps(out: Path) -> None:
    """Temp files of a killed run (posekit.io.atomic_path names them .<name>.<random><suffix>; int8 candidates
    .cand-*): nobody else writes here while we hold the lock, so they are removed."""
    import shutil

    known = [out / t.file for t in registry.TARGETS] + [out / n for n in (
        "manifest.json", "arch.yaml", "source.pt", STATE, "tflite/model_int8_io.tflite")]
    for p in known:
        if p.parent.is_dir():
            for tmp in [*p.parent.glob(f".{p.name}.*"), *p.parent.glob(".cand-*")]:
                shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink(missing_ok=True)


def convert(src: Source, out: Path, targets: list[str], calib: int = 32, data: str | None = None,
            int8_io: bool = False, candidates=None, jobs: int = 2, log=print, locked: bool = False,
            kernel_timing_s: float = KERNEL_TIMING_S) -> Path:
    """Write `targets` into `out` and then the manifest, holding `out`'s lock; third-party output goes to
    <out>/convert.log, `log` gets our progress. With jobs > 1, Core ML and ONNX run in a second process while
    TFLite converts in this one (each converter is single-threaded Python/MLIR work). locked: the caller holds
    `out`'s lock already. kernel_timing_s: the time each .tflite's kernel sets are timed for its kernel record
    (runtime.tflite_kernels.kernels_record; 0: no record)."""
    out = Path(out)
    with contextlib.nullcontext() if locked else folder_lock(out, "an artifact folder"):
        with chatter_to(out / LOG) as (say, term):
            return _convert(src, out, targets, calib, data, int8_io, candidates, jobs, say if log is print else log,
                            term, kernel_timing_s)


def _convert(src, out, targets, calib, data, int8_io, candidates, jobs, log, term, kernel_timing_s) -> Path:
    from quantize.select import DEFAULT_CANDIDATES

    t0 = time.perf_counter()
    _stale_temps(out)
    arch_file = dump(src.arch, out / "arch.yaml", header=f"arch of the converted model (from {src.arch_origin})")
    if src.random_init or src.checkpoint is None or src.input_override:
        _save_source(src, out)
    head = manifest.header(src, arch_file)
    state_path = out / STATE
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    nets = {}  # the deploy graph per deconv rewrite (each target names its own: convert/targets.py DECONV)

    def deployed(target):
        how = registry.get(target).deconv
        if how not in nets:
            nets[how] = deploy_model(src.net, how)
        return nets[how]

    opts = {"calib": calib, "data": data, "int8_io": int8_io, "candidates": list(candidates or DEFAULT_CANDIDATES)}
    if "tflite-tf-int8" in targets and "tf" not in opts["candidates"]:
        opts["candidates"].append("tf")  # the TensorFlow int8 is scored among the int8 candidates
    opts["_head"] = head  # facts embedded in each file (runtime.metadata); "_" keys are not part of an artifact's key
    opts["_kernel_timing_s"] = kernel_timing_s
    entries, extra, todo = [], {}, []
    for target in targets:
        t = registry.get(target)
        key = _key(src, target, opts if t.exporter in ("tflite-int8", "tflite-int8-kp") else {})
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

    bar = tqdm(total=len(todo), desc="convert", unit="artifact", disable=None, file=term)

    def done(target, key, new, new_extra, secs):
        bar.clear()
        log(f"  {target}: {', '.join(e['file'] for e in new)} ({secs:.1f} s)")
        entries.extend(new)
        extra.update(new_extra)
        state[target] = {"key": key, "entries": new, "extra": new_extra}
        atomic_write_json(state_path, state)
        bar.update()

    remote = [(t, k) for t, k in todo if registry.get(t).in_worker] if jobs > 1 else []
    local = [x for x in todo if x not in remote]
    h, w = src.arch.input_size
    with contextlib.ExitStack() as stack:
        futs = {}
        if remote:
            ex = stack.enter_context(ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                                         initializer=die_with_parent, initargs=(os.getpid(),)))
            blob = net_bytes(src.net, src.arch)  # plain bytes, not the module (see convert/worker.py)
            futs = {ex.submit(_remote, t, blob, str(out), dict(opts)): (t, k) for t, k in remote}
        lazy = {}

        def batches(kind):
            from quantize.calibration import calibration_batches, eval_batches

            if kind not in lazy:
                lazy[kind] = (calibration_batches(src.arch, data, calib) if kind == "calib" else
                              eval_batches(src.arch, data, 8))
            return lazy[kind]

        sample = torch.randn(1, 3, h, w)
        for target, key in local:
            done(target, key, *_timed(target, deployed(target), src.arch, out, sample, batches, opts, log))
        for fut in as_completed(futs):
            done(*futs[fut], *fut.result())
    bar.close()
    old = manifest.read(out)
    keep = old["artifacts"] if old and old.get("model") == head["model"] and old.get("source", {}).get(
        "checkpoint_sha256") == head["source"]["checkpoint_sha256"] else []
    if keep and "int8_selection" in old:
        extra = {"int8_selection": old["int8_selection"], **extra}
    path = manifest.write(out, head, entries, keep, **extra)
    bad = manifest.mismatched(out)
    if bad:  # cannot happen while one writer holds the folder; checked so that it never passes silently
        raise UserError(f"{path}: sha256 differs from the file for {', '.join(bad)}")
    log(f"wrote {path} ({len(todo)} new, {len(entries)} in this run's targets) in {time.perf_counter() - t0:.1f} s")
    return path


def _remote(target: str, blob: bytes, out: str, opts: dict):
    """Worker side: rebuild the net from plain bytes, deploy it, export one target."""
    net, arch = net_from_bytes(blob)
    h, w = arch.input_size
    net = deploy_model(net, registry.get(target).deconv)
    return _timed(target, net, arch, Path(out), torch.randn(1, 3, h, w), None, opts, lambda m: None)


def _timed(target, net, arch, out, sample, batches, opts, log=print):
    t = time.perf_counter()
    new, extra = _one(registry.get(target), net, arch, out, sample, batches, opts, log)
    new = [_kernel_record(out, e, opts.get("_kernel_timing_s", 0)) for e in new]  # before the metadata holding it
    new = [metadata.embed_entry(out, e, opts["_head"]) for e in new]  # in-file metadata, then size/sha256 again
    return new, extra, time.perf_counter() - t


def _kernel_record(out: Path, entry: dict, budget_s: float) -> dict:
    """A .tflite entry with the kernel sets timed on this host (issue 27: which set its numbers were taken with and
    which runs it fastest here); the file itself is unchanged (runtime/tflite_kernels.py routes at load)."""
    if entry["format"] != "tflite" or budget_s <= 0:
        return entry
    from runtime.tflite_kernel_choice import kernels_record

    return {**entry, "kernels": kernels_record(out / entry["file"], budget_s=budget_s)}


def _tflite_fp32(t, net, arch, out, sample, batches, opts, log):
    from posekit import export_tflite

    fp32 = out / registry.get("tflite-fp32").file
    if t.name == "tflite-fp32" or not opts["_fp32_fresh"]:
        _guard(lambda: export_tflite.litert_to_tflite(net, sample, fp32), "tflite", net, sample)
        opts["_fp32_fresh"] = True
    return fp32


def _export_tflite(t, net, arch, out, sample, batches, opts, log):
    fp32 = _tflite_fp32(t, net, arch, out, sample, batches, opts, log)
    return [_entry(out, t, fp32)], {}


def _export_tflite_quant(t, net, arch, out, sample, batches, opts, log):
    from quantize.tflite import quantize_tflite

    fp32 = _tflite_fp32(t, net, arch, out, sample, batches, opts, log)
    path = quantize_tflite(fp32, out / t.file, t.kind)
    q = {"fp16": "ai-edge-quantizer float_casting (fp16 weights)",
         "int8-dynamic": "ai-edge-quantizer dynamic_wi8_afp32"}[t.kind]
    return [_entry(out, t, path, q)], {}


def _export_tflite_int8(t, net, arch, out, sample, batches, opts, log):
    from quantize.select import export_int8

    fp32 = _tflite_fp32(t, net, arch, out, sample, batches, opts, log)
    path = out / (t.file.replace(".tflite", "_io.tflite") if opts["int8_io"] else t.file)
    sel = export_int8(net, sample, path, fp32, batches("calib"), batches("eval"), opts["int8_io"],
                      opts["candidates"], log, arch=arch)
    split = "train2017" if arch.num_joints == 17 else "valid"
    sel["calibration"] = f"{len(batches('calib'))} person crops, {opts['data'] or 'bundled data'} {split}"
    return [_entry(out, t, path, sel["chosen"])], {"int8_selection": sel}


def _export_coreml(t, net, arch, out, sample, batches, opts, log):
    from . import coreml

    res = _guard(lambda: list(coreml.export_coreml(net, arch, out, [t.kind], log)), "coreml", net, sample)
    return [manifest.artifact(out, p, f, prec, q, ins, outs) for p, f, prec, q, ins, outs in res], {}


def _export_onnx(t, net, arch, out, sample, batches, opts, log):
    from posekit.export_onnx import export_onnx

    path, ins, outs, info = _guard(lambda: export_onnx(net, arch, out / t.file), "onnx", net, sample)
    return [manifest.artifact(out, path, t.format, t.precision, None, ins, outs, **info)], {}


def _export_tflite_tf(t, net, arch, out, sample, batches, opts, log):
    from quantize import tf

    path = tf.onnx2tf_to_tflite(net, arch, batches("calib"), out / t.file, t.kind)  # same crops as every int8 candidate
    return [_entry(out, t, path, tf.NAME[t.kind])], {}


EXPORTERS = {"tflite": _export_tflite, "tflite-tf": _export_tflite_tf, "tflite-quant": _export_tflite_quant,
             "tflite-int8": _export_tflite_int8,
             "coreml": _export_coreml, "onnx": _export_onnx}


def _decoded_exporters():
    from .decoded import EXPORTERS as decoded  # the -kp targets (issue 28)

    return decoded


EXPORTERS.update(_decoded_exporters())


def _entry(out: Path, t, path: Path, quantizer: str | None = None) -> dict:
    from runtime.tflite import io_entries

    ins, outs = io_entries(path)
    return manifest.artifact(out, path, t.format, t.precision, quantizer, ins, outs)


def _one(t, net, arch, out, sample, batches, opts, log):
    return EXPORTERS[t.exporter](t, net, arch, out, sample, batches, opts, log)


def _guard(fn, what, net, sample):
    """Run one exporter; a failure becomes one line naming the op and the module path it came from."""
    from . import failure_locator

    try:
        return fn()
    except Exception as e:
        text = str(e).strip()
        msg = text if isinstance(e, UserError) else f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"
        where = failure_locator.locate(net, sample, getattr(failure_locator, f"{what}_try"))
        raise UserError(f"{what}: cannot convert: {msg}{where}") from None
