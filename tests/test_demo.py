"""The demo's step table: make's freshness rule, logs, failures, and the summary read from real files."""

import sys
import time

import pytest

from demo.charts import reference_points
from demo.pipeline import Step, run_steps
from model.latency import load_lut
from model.space import load_space
from posekit.errors import UserError


def _step(tmp_path, name="write", code="import sys; open(sys.argv[1], 'w').write('ok')", out="out.txt"):
    src = tmp_path / "input.txt"
    src.exists() or src.write_text("in")
    return Step(name, [sys.executable, "-c", code, str(tmp_path / out)], [src], [tmp_path / out])


def test_step_runs_then_is_up_to_date_until_an_input_changes(tmp_path, capsys):
    step = _step(tmp_path)
    run_steps([step], tmp_path / "logs")
    assert step.status == "done" and (tmp_path / "out.txt").read_text() == "ok" and step.log.is_file()
    again = _step(tmp_path)
    run_steps([again], tmp_path / "logs")
    assert again.status == "up to date"
    time.sleep(0.01)
    (tmp_path / "input.txt").write_text("changed")
    third = _step(tmp_path)
    run_steps([third], tmp_path / "logs")
    assert third.status == "done"


def test_a_changed_command_redoes_the_step(tmp_path):
    """Content-keyed as well as make's rule: the same outputs made by another command (the closed loop's search
    with another target, a demo with other options) are not up to date."""
    run_steps([_step(tmp_path)], tmp_path / "logs")
    other = _step(tmp_path, code="import sys; open(sys.argv[1], 'w').write('other')")
    run_steps([other], tmp_path / "logs")
    assert other.status == "done" and (tmp_path / "out.txt").read_text() == "other"
    same = _step(tmp_path, code="import sys; open(sys.argv[1], 'w').write('other')")
    run_steps([same], tmp_path / "logs")
    assert same.status == "up to date"


def test_a_killed_runner_takes_its_stage_with_it(tmp_path):
    """kill -9 of the process running the steps: the stage it started dies too (PR_SET_PDEATHSIG), no orphan
    keeps writing into the run folder."""
    import os
    import signal
    import subprocess

    pid_file = tmp_path / "stage.pid"
    stage = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    runner = ("import sys; from pathlib import Path; from demo.pipeline import Step, run_steps; "
              f"run_steps([Step('sleep', [sys.executable, '-c', {stage!r}], [], [Path({str(tmp_path / 'x')!r})])], "
              f"Path({str(tmp_path / 'logs')!r}))")
    proc = subprocess.Popen([sys.executable, "-c", runner], stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not (pid_file.is_file() and pid_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.1)
    child = int(pid_file.read_text())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.kill(child, signal.SIGKILL)
        pytest.fail("the stage outlived the killed runner")


def test_failing_step_names_its_log_and_allowed_failure_goes_on(tmp_path):
    bad = _step(tmp_path, "bad", "import sys; print('boom'); sys.exit(3)", "never.txt")
    with pytest.raises(UserError, match=r"'bad' failed with exit code 3; its log: .*01_bad.log"):
        run_steps([bad], tmp_path / "logs")
    assert "boom" in bad.log.read_text()
    soft = _step(tmp_path, "soft", "import sys; open(sys.argv[1], 'w').write('x'); sys.exit(1)", "soft.txt")
    soft.allow_fail = True
    run_steps([soft], tmp_path / "logs")
    assert soft.status.startswith("done, exit 1")


def test_reference_points_place_every_arch_on_the_shipped_luts():
    space = load_space("default")
    derived = space.arch_for([layer.candidates[0] for layer in space.layers()])
    luts = {d: load_lut(d) for d in ("pixel", "note10")}
    rows = reference_points(derived, luts)
    assert [r["name"].split(" ")[0] for r in rows][0] == "derived" and len(rows) == 6
    for r in rows:
        assert all(r[f"lut_{d}_ms"] and r[f"lut_{d}_ms"] > 0 for d in luts), r
    a = {r["name"]: r for r in rows}
    assert a["efficientpose-a"]["lut_pixel_ms"] < a["efficientpose-c"]["lut_pixel_ms"]


def test_summary_says_why_a_lut_latency_is_na(tmp_path, monkeypatch):
    """A fresh clone has no host LUT for its machine: the summary's host rows say so and name the fix, the pixel
    row (a shipped LUT) gives the arch's latency."""
    import shutil

    from demo import report
    from model import latency
    from model.arch import load, shipped

    shutil.copy(latency.LUT_DIR / "pixel.json", tmp_path / "pixel.json")
    monkeypatch.setattr(latency, "LUT_DIR", tmp_path)
    arch = load(shipped()["efficientpose_a"])
    luts, lat, why = report._luts(arch)
    assert set(luts) == {"pixel"} and lat["pixel"] == pytest.approx(luts["pixel"].latency(arch), abs=1e-3)
    assert lat["host"] is None and "no host LUT for this machine" in why["host"]
    assert "make lut DEVICE=host" in why["host"]
    s = {"lut_latency_ms": lat, "lut_latency_na": why}
    assert report._lut_ms(s, "pixel") == f"{lat['pixel']:.3f} ms"
    na = report._lut_ms(s, "host-int8")
    assert na.startswith("n/a (") and "make lut DEVICE=host-int8" in na
