"""The second conversion process (Core ML and ONNX beside TFLite) and how the run keeps third-party output out of
the terminal.

The worker is handed plain data (the model as torch.save bytes of {arch dict, state_dict}, paths as strings, an
options dict), never a live module: pickling torch/coremltools objects into a spawn worker intermittently failed
with `Can't pickle local object 'WeakValueDictionary.__init__.<locals>.remove'`. It dies with its parent
(PR_SET_PDEATHSIG = SIGKILL through prctl): a kill -9 of convert leaves no worker writing into the folder."""

from __future__ import annotations

import contextlib
import io
import os
import sys
from pathlib import Path

import torch

from posekit.proc import die_with_parent  # noqa: F401 (the executor's initializer)


def net_bytes(net, arch) -> bytes:
    """The model as plain bytes ({arch dict, state_dict}), safe to send to a spawned worker."""
    buf = io.BytesIO()
    torch.save({"arch": arch.to_dict(), "model": net.state_dict()}, buf)
    return buf.getvalue()


def net_from_bytes(blob: bytes):
    """(deploy-ready eval net, arch) rebuilt from `net_bytes` (weights_only: nothing loaded is executed)."""
    from model.arch import from_dict
    from model.net import build

    d = torch.load(io.BytesIO(blob), weights_only=True)
    arch = from_dict(d["arch"], src="convert worker")
    net = build(arch).eval()
    net.load_state_dict(d["model"])
    return net, arch


@contextlib.contextmanager
def chatter_to(logfile: Path):
    """Send fds 1 and 2 (C++ logs, coremltools progress bars, `Failed to load _MLModelProxy`, library warnings; a
    worker spawned inside inherits them) to `logfile`; yields (say, terminal stderr): `say(msg)` prints our own
    progress on the original stdout and appends it to the log, the stream is for the progress bar."""
    logfile = Path(logfile)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    log = open(logfile, "a", buffering=1)
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    out = os.fdopen(os.dup(saved[0]), "w", buffering=1)
    err = os.fdopen(os.dup(saved[1]), "w", buffering=1)

    def say(msg: str) -> None:
        print(msg, file=out, flush=True)
        print(msg, file=log, flush=True)

    try:
        yield say, err
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for f in (out, err, log):
            f.close()
        for fd in saved:
            os.close(fd)
