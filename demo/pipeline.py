"""The demo's step table: each step is a stage CLI with the files it reads and writes.

A step runs only when one of its outputs is missing or older than one of its inputs (make's rule), or when its
command differs from the one that made them (recorded beside its log: a changed option redoes the step), so a second
`make demo` redoes nothing. Stages hand each other files; the demo never imports a stage.
"""

from __future__ import annotations

import functools
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from posekit.errors import UserError
from posekit.io import atomic_write_text, check_writable
from posekit.proc import die_with_parent


@dataclass
class Step:
    name: str
    cmd: list[str]
    inputs: list[Path]
    outputs: list[Path]
    allow_fail: bool = False  # parity failing is a finding to report, not a reason to stop the demo
    seconds: float = 0.0
    status: str = "pending"
    log: Path | None = None
    extra: dict = field(default_factory=dict)

    def fresh(self, record: Path | None = None) -> bool:
        if not all(p.exists() for p in self.outputs):
            return False
        if record is not None and (not record.is_file() or record.read_text() != self.command()):
            return False
        newest_in = max((_mtime(p) for p in self.inputs if p.exists()), default=0.0)
        return min(_mtime(p) for p in self.outputs) >= newest_in


    def command(self) -> str:
        return " ".join(shlex.quote(c) for c in self.cmd) + "\n"


def _mtime(p: Path) -> float:
    if p.is_dir():
        return max([p.stat().st_mtime] + [x.stat().st_mtime for x in p.rglob("*")])
    return p.stat().st_mtime


def run_steps(steps: list[Step], logdir: Path, force: bool = False, first: int = 1, total: int | None = None) -> None:
    """Run the steps that are not fresh, in order, numbered from `first` of `total` (a table run in parts)."""
    logdir.mkdir(parents=True, exist_ok=True)
    for i, step in enumerate(steps, first):
        step.log = logdir / f"{i:02d}_{step.name}.log"
        record = logdir / f"{step.name}.cmd"
        head = f"[{i}/{total or len(steps)}] {step.name}"
        if not force and step.fresh(record):
            step.status = "up to date"
            print(f"{head}: up to date ({', '.join(str(p) for p in step.outputs)})", flush=True)
            continue
        print(f"{head}: {step.command().strip()}", flush=True)
        t0 = time.monotonic()
        check_writable(step.log)  # a reused run folder: never a log written through a symlink out of it
        with open(step.log, "wb") as log:
            # Pass the stage's output through unchanged (tqdm's carriage returns included) and keep a log of it.
            # The stage dies with the demo (a killed demo leaves no stage running on; its rerun resumes).
            proc = subprocess.Popen(step.cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    preexec_fn=functools.partial(die_with_parent, os.getpid()))
            while chunk := proc.stdout.read1(4096):
                sys.stdout.buffer.write(chunk)
                sys.stdout.flush()
                log.write(chunk)
            rc = proc.wait()
        step.seconds = time.monotonic() - t0
        if rc != 0 and not step.allow_fail:
            step.status = f"failed (exit {rc})"
            raise UserError(f"demo step '{step.name}' failed with exit code {rc}; its log: {step.log}")
        atomic_write_text(record, step.command())  # done (a failing parity is a finding): its outputs are made
        step.status = "done" if rc == 0 else f"done, exit {rc} (see report)"
        print(f"{head}: {step.status} in {step.seconds:.0f} s", flush=True)
