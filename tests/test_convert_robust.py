"""convert as a robust process on a tiny arch (64x48): a kill -9 during the Core ML export leaves no process of the
run alive and no new file in the folder, and a re-run resumes; one writer per folder; the worker is handed plain
data; third-party output goes to the log file."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

PY = sys.executable


@pytest.fixture(scope="module")
def tiny_arch_file(tmp_path_factory):
    sys.path.insert(0, str(Path(__file__).parent))
    from parity_helpers import tiny_arch

    from model.arch import dump

    return dump(tiny_arch("mbv1"), tmp_path_factory.mktemp("arch") / "tiny.yaml")


def _convert(root, arch, out, *targets, **kw):
    return subprocess.Popen([PY, "-m", "convert", "--arch", str(arch), "--calib", "2", "--out", str(out),
                             "--targets", *targets], cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **kw)


def _descendants(pid: int) -> set[int]:
    kids: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(d.name))
    out, todo = set(), [pid]
    while todo:
        for k in kids.get(todo.pop(), []):
            if k not in out:
                out.add(k)
                todo.append(k)
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _files(d: Path) -> dict[str, int]:
    return {str(p.relative_to(d)): p.stat().st_mtime_ns for p in d.rglob("*")}


def _wait_for(cond, proc, timeout=600.0):
    t = time.monotonic()
    while not cond():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() - t < timeout, "timed out"
        time.sleep(0.2)


@pytest.mark.slow(45)  # two tiny Core ML conversions
def test_kill_9_during_coreml_export_leaves_nothing_running_and_a_rerun_resumes(tiny_arch_file, root, tmp_path):
    out = tmp_path / "art"
    first = _convert(root, tiny_arch_file, out, "onnx")
    assert first.wait() == 0, first.stderr.read()[-3000:]
    onnx_mtime = (out / "onnx" / "model.onnx").stat().st_mtime_ns
    p = _convert(root, tiny_arch_file, out, "onnx", "coreml-fp32")
    # the Core ML export is under way once coremltools' own progress reaches the run's log file
    _wait_for(lambda: "Converting PyTorch Frontend" in (out / "convert.log").read_text(errors="replace")
              and _descendants(p.pid), p)
    procs = _descendants(p.pid)
    p.send_signal(signal.SIGKILL)
    p.wait()
    killed_at = _files(out)
    t = time.monotonic()
    while [q for q in procs if _alive(q)] and time.monotonic() - t < 10:
        time.sleep(0.1)
    assert [q for q in procs if _alive(q)] == []  # the worker died with its parent
    time.sleep(1)  # anything left writing would show now
    after = _files(out)
    # no file appeared or changed after the kill (the log may get the resource tracker's last line)
    assert set(after) == set(killed_at)
    assert {f: t for f, t in after.items() if f != "convert.log"} == {
        f: t for f, t in killed_at.items() if f != "convert.log"}
    assert not (out / "coreml" / "model_fp32.mlpackage").exists()
    r = _convert(root, tiny_arch_file, out, "onnx", "coreml-fp32")
    stdout, stderr = r.communicate()
    assert r.returncode == 0, stderr[-3000:]
    assert "resumed 1 finished artifact" in stdout
    assert (out / "onnx" / "model.onnx").stat().st_mtime_ns == onnx_mtime
    from posekit import manifest

    m = manifest.load(out)
    assert {a["file"] for a in m["artifacts"]} == {"onnx/model.onnx", "coreml/model_fp32.mlpackage"}
    assert manifest.mismatched(out) == []
    assert not [f for f in _files(out) if Path(f).name.startswith(".model")]  # the killed run's temp is gone
    # third-party chatter went to the log, not the terminal; our own progress stayed
    assert "Failed to load _MLModelProxy" not in stdout + stderr and "coreml-fp32:" in stdout
    assert "Failed to load _MLModelProxy" in (out / "convert.log").read_text(errors="replace")


def test_second_convert_into_a_folder_being_written_fails_at_once(tiny_arch_file, root, tmp_path):
    """One writer per folder: while a run holds the folder's lock (this test, through the posekit.lock that convert
    takes), a convert into it is refused at once, naming the holder's pid, and changes nothing there."""
    from posekit.lock import folder_lock

    out = tmp_path / "art"
    with folder_lock(out, "the artifacts folder"):
        before = _files(out)
        second = _convert(root, tiny_arch_file, out, "onnx")
        _, err = second.communicate()
        assert second.returncode == 2 and err.startswith("error:") and f"pid {os.getpid()}" in err, err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1
        assert _files(out) == before


def test_worker_gets_plain_bytes_that_rebuild_the_same_net():
    """The spawn worker is handed bytes, not a module (pickling a module intermittently failed on a
    WeakValueDictionary); the bytes pickle and rebuild the identical network."""
    import pickle

    import torch

    from convert.worker import net_bytes, net_from_bytes

    sys.path.insert(0, str(Path(__file__).parent))
    from parity_helpers import tiny_arch, tiny_net

    net, arch = tiny_net(), tiny_arch()
    blob = pickle.loads(pickle.dumps(net_bytes(net, arch)))
    net2, arch2 = net_from_bytes(blob)
    x = torch.randn(1, 3, *arch.input_size)
    assert arch2.to_dict() == arch.to_dict() and torch.equal(net(x), net2(x))


def test_worker_dies_with_its_parent(tmp_path):
    """die_with_parent (PR_SET_PDEATHSIG): a child whose parent is killed -9 is killed by the kernel."""
    child_code = ("import os, sys, time; from convert.worker import die_with_parent; die_with_parent(int(sys.argv[1]));"
                  " print('ready', flush=True); time.sleep(60)")
    code = ("import os, subprocess, sys, time\n"
            f"c = subprocess.Popen([sys.executable, '-c', {child_code!r}, str(os.getpid())])\n"
            "print(c.pid, flush=True); time.sleep(60)\n")
    p = subprocess.Popen([PY, "-c", code], stdout=subprocess.PIPE, text=True)
    child = int(p.stdout.readline())
    assert p.stdout.readline().strip() == "ready"  # the child has set its death signal
    p.kill()
    p.wait()
    t = time.monotonic()
    while _alive(child) and time.monotonic() - t < 5:
        time.sleep(0.1)
    assert not _alive(child)


@pytest.mark.slow(40)  # ONNX -> onnx2tf -> TFLiteConverter in a TensorFlow process, and the int8 candidates
def test_tensorflow_path_agrees_with_pytorch_and_is_an_int8_candidate(tiny_arch_file, root, tmp_path):
    pytest.importorskip("tensorflow")  # the `tf` extra, which `make test` installs
    pytest.importorskip("onnx2tf")
    import numpy as np
    import torch

    from model.checkpoint import load_checkpoint
    from posekit import manifest
    from quantize.calibration import eval_batches
    from quantize.tflite import fully_integer
    from runtime import tflite

    out = tmp_path / "art"
    r = _convert(root, tiny_arch_file, out, "tflite-int8", "tflite-tf-fp32", "tflite-tf-int8")
    stdout, stderr = r.communicate()
    assert r.returncode == 0, stderr[-3000:]
    m = manifest.load(out)
    arts = {a["file"]: a for a in m["artifacts"]}
    assert {"tflite/model_tf_fp32.tflite", "tflite/model_tf_int8.tflite"} <= set(arts)
    net, arch, _ = load_checkpoint(out / "source.pt")
    x = eval_batches(arch, n=2)
    with torch.no_grad():
        ref = np.concatenate([net(b).permute(0, 2, 3, 1).numpy() for b in x])
    it = tflite.interpreter(out / "tflite/model_tf_fp32.tflite")
    y = np.concatenate([tflite.run(it, b.permute(0, 2, 3, 1).numpy()) for b in x])
    assert np.abs(y - ref).max() <= 1e-4 * np.ptp(ref)  # two independent converters agree with PyTorch
    assert fully_integer(out / "tflite/model_tf_int8.tflite")
    tf_cand = [c for c in m["int8_selection"]["candidates"] if c["quantizer"].startswith("tensorflow")]
    assert len(tf_cand) == 1 and tf_cand[0]["fully_integer"] and 0 < tf_cand[0]["oks_agreement"] <= 1
    assert manifest.mismatched(out) == []
