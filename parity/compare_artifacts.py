"""The parity run: the source checkpoint and every artifact of a manifest on the same real crops.

Crops: the val split's person crops (ground-truth boxes, as posekit.evaluate makes them: each also flipped, for the
flip test) plus train-split crops. The reference heatmaps are written once to <out>/cache (memory-mapped: a full
COCO val run does not fit in memory); each artifact is compared batch by batch and its result cached per artifact
sha256 and data selection, so a killed run resumes where it stopped.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import warnings
from pathlib import Path

import numpy as np
from tqdm import tqdm

from parity import conversion_fidelity, metrics
from posekit.errors import UserError
from posekit.evaluate import mean_oks_agreement
from posekit.io import atomic_path, atomic_write_json, sha256_file
from runtime.artifact_check import check_artifact
from runtime.decoded import is_decoded
from runtime.runners import TorchRunner, make_runner

REPO = Path(__file__).resolve().parent.parent
LOW_AP = 0.3


def read_manifest(model_dir: Path) -> dict:
    from posekit import manifest

    return manifest.load(model_dir)  # the one reader: schema-validated, every listed file on disk


def _resolve(p: str, model_dir: Path) -> Path:
    for base in (Path.cwd(), REPO, model_dir):
        if (base / p).exists():
            return base / p
    return Path(p)


def load_reference(man: dict, model_dir: Path, ckpt: str | None):
    """(net, checkpoint path) of the network the artifacts were made from; checks the manifest's sha256."""
    from model.checkpoint import load_checkpoint

    src = man.get("source") or {}
    path = ckpt or src.get("checkpoint")
    if not path and src.get("random_init"):
        # No checkpoint: convert made a random init (model.source.random_network, on the default calibration
        # crops); rebuild it the same way. A conversion calibrated on other --data differs: its fp32 rows say so.
        from model.arch import from_dict
        from model.net import build
        from model.source import RANDOM_INIT_SEED, random_network
        from quantize.calibration import calibration_batches

        arch = from_dict(man["arch"], src=f"{model_dir / 'manifest.json'}: arch")
        net = random_network(build(arch), calibration_batches(arch, None, 8)).eval()
        return net, f"random init (model.source.random_network, seed {RANDOM_INIT_SEED}, as convert makes it)"
    if not path:
        raise UserError(f"{model_dir / 'manifest.json'}: source.checkpoint is null: parity needs the weights the "
                        f"artifacts were made from (pass --ckpt)")
    path = _resolve(path, model_dir)
    want = src.get("checkpoint_sha256")
    if ckpt is None and want and path.is_file() and sha256_file(path) != want:
        raise UserError(f"{path}: sha256 differs from the manifest's source.checkpoint_sha256 (the checkpoint changed "
                        f"after conversion: re-run `make convert`)")
    net, arch, _ = load_checkpoint(path)
    if list(arch.input_size) != list(man["input_size"]):
        raise UserError(f"{path}: input_size {list(arch.input_size)} differs from the manifest's {man['input_size']}")
    return net, path


TRAIN_CROPS = 64  # train crops added to the val crops by default (they only widen the heatmap comparison)
SAMPLES = 4  # crops kept per runtime for the keypoint overlays
FIDELITY_CROPS = 8  # crops the artifact is compared with its twin on (conversion fidelity)


class Data:
    """The crops every runtime sees, in one fixed order: the val crops as posekit.evaluate makes them (each with its
    flipped copy: the flip test), then train crops."""

    def __init__(self, root: Path, input_size, num_joints: int, crops: int | None, ap_split: str = "val2017"):
        from posekit.data import CocoPose

        self.root, self.input_size, self.num_joints, self.limit = Path(root), tuple(input_size), num_joints, crops
        self.ap_split = ap_split
        if not (self.root / "annotations" / f"person_keypoints_{ap_split}.json").is_file():
            raise UserError(f"{self.root}: not a COCO tree (needs annotations/person_keypoints_{ap_split}.json)")
        # Extra crops from the other split, so the numeric comparison sees more than the AP split's persons.
        extra = "val2017" if ap_split == "train2017" else "train2017"
        self.train = None
        if (self.root / "annotations" / f"person_keypoints_{extra}.json").is_file():
            self.train = CocoPose(self.root, extra, self.input_size, train=False, num_joints=num_joints,
                                  limit=crops or TRAIN_CROPS, cache_images=False)
        n_train = len(self.train) if self.train is not None else 0
        self.key = hashlib.sha256(json.dumps([str(self.root.resolve()), list(self.input_size), crops,
                                              n_train, ap_split]).encode()).hexdigest()[:16]

    def run(self, fn, sink) -> dict:
        """Run fn on every crop, calling sink(x, heatmaps) per batch; returns the val OKS AP and each AP-split
        person's decoded keypoints: {'ap', 'num_persons', 'keypoints' (N, J, 3), 'areas' (N,), 'labelled' (N, J)}."""
        from posekit.evaluate import evaluate_model

        def rec(x):
            y = fn(x)
            sink(x, y)
            return y

        stats = evaluate_model(rec, self.root, self.ap_split, self.input_size, boxes="gt", flip=True,
                               num_joints=self.num_joints, limit=self.limit, batch_size=8, return_keypoints=True)
        n = len(self.train) if self.train is not None else 0
        for i in range(0, n, 8):
            x = np.stack([self.train[j]["image"].numpy() for j in range(i, min(i + 8, n))])
            sink(x, fn(x))
        return {"ap": float(stats["AP"]), "num_persons": int(stats["num_persons"]), "keypoints": stats["keypoints"],
                "areas": stats["areas"], "labelled": stats["labelled"]}


KEYPOINT_ARRAYS = ("keypoints", "areas", "labelled")


def reference(data: Data, net, cache: Path, key: str) -> dict:
    """The PyTorch heatmaps of every crop, written once to cache/ref-<key>.f32 and read back memory-mapped; the
    first crops (overlays, conversion fidelity) and the AP split's decoded keypoints in ref-<key>.npz."""
    raw, meta, samples = cache / f"ref-{key}.f32", cache / f"ref-{key}.json", cache / f"ref-{key}.npz"
    if not (meta.is_file() and raw.is_file() and samples.is_file()):
        cache.mkdir(parents=True, exist_ok=True)
        info, keep_x, keep_y = {"count": 0}, [], []
        keep = max(SAMPLES, FIDELITY_CROPS)

        with atomic_path(raw) as tmp:
            with open(tmp, "wb") as fh:
                def sink(x, y):
                    fh.write(np.ascontiguousarray(y, np.float32).tobytes())
                    info["count"] += len(y)
                    info["shape"] = list(y.shape[1:])
                    if sum(map(len, keep_x)) < keep:
                        keep_x.append(x[:keep])
                        keep_y.append(y[:SAMPLES])

                stats = data.run(TorchRunner(net), sink)
        kp = {k: stats.pop(k) for k in KEYPOINT_ARRAYS}
        info.update(stats)
        with atomic_path(samples) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, inputs=np.concatenate(keep_x)[:keep], heatmaps=np.concatenate(keep_y)[:SAMPLES], **kp)
        atomic_write_json(meta, info)  # last: marks the cache complete
    info = json.loads(meta.read_text())
    z = np.load(samples)
    return {**info, "heatmaps": np.memmap(raw, np.float32, "r", shape=(info["count"], *info["shape"])),
            "sample_inputs": z["inputs"][:SAMPLES], "fidelity_inputs": z["inputs"][:FIDELITY_CROPS],
            "sample_heatmaps": z["heatmaps"], **{k: z[k] for k in KEYPOINT_ARRAYS}}


def measure(runner, data: Data, ref: dict, stride: int, cache: Path, key: str, fidelity=None) -> dict:
    """Agreement of one runtime with the reference on every crop, plus `fidelity()`'s figures (cached per
    artifact: a killed run resumes)."""
    f, fs = cache / f"{key}.json", cache / f"{key}.npz"
    if f.is_file() and fs.is_file():
        return {**json.loads(f.read_text()), "samples": np.load(fs)["heatmaps"]}
    acc, pos, keep = metrics.Agreement(stride), [0], []

    def sink(x, y):
        n = len(y)
        if pos[0] + n > ref["count"]:
            raise UserError(f"{runner.path}: more crops than the reference run ({ref['count']})")
        acc.update(ref["heatmaps"][pos[0]:pos[0] + n], y)
        if pos[0] < SAMPLES:
            keep.append(y[:SAMPLES - pos[0]])
        pos[0] += n

    stats = data.run(runner, sink)
    kps = stats.pop("keypoints")
    for k in KEYPOINT_ARRAYS[1:]:
        stats.pop(k)
    oks = mean_oks_agreement(ref["keypoints"], kps, ref["areas"], ref["labelled"])
    res = {**acc.result(), **stats, "oks_agreement": oks, "hist": acc.hist.tolist(),
           **(fidelity() if fidelity else {})}
    with atomic_path(fs) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, heatmaps=np.concatenate(keep)[:SAMPLES], keypoints=kps)
    atomic_write_json(f, res)
    return {**res, "samples": np.concatenate(keep)[:SAMPLES]}


def cache_stamp(cache: Path) -> str:
    """The part of every cache key a folder's sender cannot know: this machine, this user and the cache folder's own
    inode here. A results cache that came inside a received folder (copied, unpacked) sits in a new folder, so its
    entries, planted or not, are never read: the verdicts are re-measured (issue 25's bad-input pass)."""
    st = cache.stat()
    machine = next((p.read_text().strip() for p in (Path("/etc/machine-id"), Path("/var/lib/dbus/machine-id"))
                    if p.is_file()), "") or platform.node()
    return hashlib.sha256(f"{machine}|{os.getuid()}|{st.st_dev}|{st.st_ino}".encode()).hexdigest()[:12]


def run_parity(model_dir: Path, data_root: Path, thresholds: dict, crops: int | None, out_dir: Path,
               ckpt: str | None = None, threads: int = 1, only: str | None = None, locate: bool = True,
               coreml_reference: bool = False, ap_split: str = "val2017") -> dict:
    man = read_manifest(model_dir)
    net, ckpt_path = load_reference(man, model_dir, ckpt)
    data = Data(data_root, man["input_size"], int(man["num_joints"]), crops, ap_split)
    cache = out_dir / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    ref_key = (f"{cache_stamp(cache)}-" + (sha256_file(ckpt_path)[:16] if Path(str(ckpt_path)).is_file() else
                                            "random") + f"-{data.key}")
    ref = reference(data, net, cache, ref_key)
    if ref["ap"] < LOW_AP:
        warnings.warn(f"reference AP {ref['ap']:.3f} < {LOW_AP}: an untrained-looking network; the keypoint rules are "
                      f"not applicable (the numeric and conversion-fidelity rules still gate) "
                      f"(flat heatmaps); convert a trained checkpoint", stacklevel=1)
    stride = int(man.get("heatmap_stride", 4))
    entries = [a for a in man["artifacts"] if not only or only in a["file"]]
    # new metrics or a new twin: re-measure
    tags = metrics.METRICS + (f"fidelity-{FIDELITY_CROPS}-v{conversion_fidelity.VERSION}",)
    metric_set = hashlib.sha256(",".join(tags).encode()).hexdigest()[:6]
    keypoints_apply = ref["ap"] >= LOW_AP
    fp32 = next((model_dir / a["file"] for a in man["artifacts"] if a["format"] == "tflite" and
                 a["precision"] == "fp32" and not is_decoded(a) and (model_dir / a["file"]).is_file()),
                None)  # what int8 was made from
    rows = []
    for a in tqdm(entries, desc="parity", unit="artifact"):
        qat = a.get("quantizer") == "qat"  # quantize qat: its own rules (thresholds.yaml int8-qat)
        decoded = is_decoded(a)  # keypoints in the file (issue 28): thresholds.yaml keypoints-<precision>
        rules = thresholds.get(f"{a['precision']}-qat" if qat else a["precision"], thresholds.get(a["precision"]))
        if decoded:
            rules = thresholds.get(f"keypoints-{a['precision']}")
        if rules is None:
            raise UserError(f"no thresholds for precision {a['precision']!r} (artifact {a['file']}): add it to the "
                            f"thresholds file")
        base = {"file": a["file"], "format": a["format"], "precision": a["precision"], "quantizer": a.get("quantizer"),
                "engine": None, "status": "fail", "manifest_sha256": a.get("sha256")}
        path = model_dir / a["file"]
        sha = sha256_file(path) if path.exists() else None
        base["sha256"] = sha
        if sha is not None and a.get("sha256") and sha != a["sha256"]:
            # the verdict is about bytes: a file changed since convert recorded it is not the file that was converted
            rows.append({**base, "fails": [f"changed since convert: sha256 {sha[:16]} differs from the manifest's "
                                           f"{a['sha256'][:16]} (re-run `make convert`)"]})
            continue
        try:
            check_artifact(path)  # a truncated or overwritten file: one line in its row, not a crash
            runner = make_runner(a, model_dir, man, threads, coreml_reference)
            figures = None if qat else functools.partial(conversion_fidelity.measure, a, runner, net,
                                                         ref["fidelity_inputs"], fp32)
            if decoded:  # judged on its in-file keypoints (parity/keypoints.py), its heatmaps as any file's
                from parity.keypoints import Recorder
                from runtime.decoded import KeypointRunner

                runner = Recorder(KeypointRunner(runner))
                figures = functools.partial(runner.figures, ref["heatmaps"], data.input_size, stride)
            # macOS: runtime and executor differ; how the file is judged depends on what the manifest says it is
            eng = hashlib.sha256(f"{runner.engine}|{a['precision']}|{a.get('quantizer')}".encode()).hexdigest()[:6]
            res = measure(runner, data, ref, stride, cache, f"{sha[:16]}-{eng}-{metric_set}-{ref_key}", figures)
        except UserError as e:  # e.g. an op the Core ML executor does not implement: this artifact fails, loudly
            rows.append({**base, "fails": [f"could not run: {e}"]})
            continue
        samples = res.pop("samples")
        row = {**base, "engine": runner.engine, "size_bytes": a.get("size_bytes"), **res, "dap": ref["ap"] - res["ap"],
               "_samples": samples}
        exact_na = []
        if "fidelity_exact_note" in row:  # no XNNPACK-exact twin: judged per op (fidelity_op_* rules) only
            exact_na = [f"{k} {op} {v:g}: not applicable (no end-to-end twin: {row['fidelity_exact_note']}); "
                        f"judged per op" for k, (op, v) in rules.items() if k in metrics.END_TO_END_FIDELITY]
            rules = {k: v for k, v in rules.items() if k not in metrics.END_TO_END_FIDELITY}
        row["fails"], row["not_applicable"] = metrics.check(
            row, rules, None if keypoints_apply else f"reference AP {ref['ap']:.3f} < {LOW_AP}: the PyTorch keypoints "
                                                     f"are not a truth to agree with (untrained network)")
        row["not_applicable"] += exact_na
        if qat:  # a QAT file's conversion is held to its own PyTorch twin (quantize/qat.py): exact
            from quantize.qat import twin_check

            row["twin"] = twin_check(a, model_dir, ref["sample_inputs"])
            row["fails"] += row["twin"].pop("fails")
        row["status"] = "fail" if row["fails"] else "pass"
        if row["fails"] and locate and not decoded and not (row.get("fidelity_divergence") or {}).get("op_name"):
            try:
                from parity.first_divergence import first_divergence

                row["first_divergence"] = first_divergence(runner, net, ref["sample_inputs"][:1], a["precision"])
            except Exception as e:  # locating is a diagnosis aid: never hide the failure itself
                row["first_divergence"] = {"note": f"could not locate: {type(e).__name__}: {e}"}
        rows.append(row)
    return {"model": man.get("model"), "model_dir": str(model_dir), "checkpoint": str(ckpt_path),
            "data": str(data_root), "num_crops": int(ref["count"]), "num_persons_val": ref["num_persons"],
            "reference": {"engine": TorchRunner.engine, "ap": ref["ap"], "ap_split": ap_split},
            "num_joints": int(man["num_joints"]),
            "heatmap_stride": stride, "normalization": man.get("normalization"),
            "warnings": [f"reference AP {ref['ap']:.3f} < {LOW_AP}: untrained network: keypoint rules not applicable, "
                         f"numeric and conversion-fidelity rules gate"]
            if ref["ap"] < LOW_AP else [],
            "int8_selection": man.get("int8_selection"), "rows": rows, "_ref": ref}
