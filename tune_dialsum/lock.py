"""One driver per experiment: a lock file beside it, with the holder's host and pid.

Two drivers on one experiment (a second ``search --resume`` while the first runs) would both
restore Ray's state, write the same trial directories and tell the same Optuna study. The lock
is a file created exclusively (``O_EXCL``) beside the experiment's directory, on this machine (for a
bucket experiment: beside its mirror, so it guards the drivers of one machine). A lock whose
holder on this host is gone (killed with SIGKILL, say) is stale and taken over; one held on
another host cannot be checked from here, so the refusal says how to remove it.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tune_dialsum.errors import UsageError


def lock_path(experiment_dir: Path) -> Path:
    return experiment_dir.parent / f".{experiment_dir.name}.lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def _holder(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):  # gone meanwhile, or being written: treated as held below
        return None


@contextmanager
def experiment_lock(experiment_dir: Path, what: str = "search") -> Iterator[None]:
    """Hold the experiment for this process while the block runs; refuse in one line if another holds it."""
    path = lock_path(experiment_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    me = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time(), "what": what}
    for _ in range(2):  # a stale lock is removed once, then taken
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _holder(path)
            if holder and holder.get("host") == me["host"] and not _alive(int(holder.get("pid", -1))):
                path.unlink(missing_ok=True)  # its driver died without releasing it
                continue
            held_by = (
                f"{holder.get('what', 'a driver')} pid {holder.get('pid')} on {holder.get('host')}" if holder else "?"
            )
            raise UsageError(
                f"experiment {experiment_dir.name}: in use by {held_by} (lock {path}); wait for it to end, "
                "or, if that driver is gone, delete the lock file"
            ) from None
        with os.fdopen(fd, "w") as out:
            json.dump(me, out)
        break
    try:
        yield
    finally:
        if (_holder(path) or {}).get("pid") == me["pid"]:
            path.unlink(missing_ok=True)
