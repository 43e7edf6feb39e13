"""One driver per experiment: a lock file beside it, held with ``flock``, naming its holder.

Two drivers on one experiment (a second ``search --resume`` while the first runs) would both
restore Ray's state, write the same trial directories and tell the same Optuna study. The lock is
``.NAME.lock`` beside the experiment's directory on this machine (for a bucket experiment: beside
its mirror, so it guards the drivers of one machine). The operating system holds the ``flock`` for
as long as the process lives, so a driver killed with SIGKILL frees it; the file stays, empty once
released. Its content names the holder (host, pid) for the refusal. A lock file that names another
host is refused too: that host's driver cannot be seen from here (``flock`` does not cross every
network file system), so the refusal says to delete the file if that driver is gone. Re-entrant
within a process: a resume that holds it while reading the experiment keeps it for the search.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tune_dialsum.errors import UsageError

_held: set[Path] = set()  # the locks this process holds


def lock_path(experiment_dir: Path) -> Path:
    return experiment_dir.parent / f".{experiment_dir.name}.lock"


def _refusal(experiment_dir: Path, path: Path, holder: dict) -> UsageError:
    held_by = f"{holder.get('what', 'a driver')} pid {holder.get('pid')} on {holder.get('host')}" if holder else "?"
    return UsageError(
        f"experiment {experiment_dir.name}: in use by {held_by} (lock {path}); wait for it to end, or, if that "
        "driver is gone, delete the lock file"
    )


def _holder(fd: int) -> dict:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 4096).decode(errors="replace")
    try:
        return json.loads(text) if text.strip() else {}
    except ValueError:
        return {"what": "a driver", "pid": "?", "host": "? (unreadable lock)"}


@contextmanager
def experiment_lock(experiment_dir: Path, what: str = "search") -> Iterator[None]:
    """Hold the experiment for this process while the block runs; refuse in one line if another holds it."""
    path = lock_path(Path(experiment_dir)).resolve()
    if path in _held:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # a live driver on this machine
            raise _refusal(Path(experiment_dir), path, _holder(fd)) from None
        me = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time(), "what": what}
        holder = _holder(fd)
        if holder and holder.get("host") != me["host"]:
            raise _refusal(Path(experiment_dir), path, holder)
        # free, or left by a driver of this host that died: its flock went with it
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps(me).encode())
        _held.add(path)
        try:
            yield
        finally:
            _held.discard(path)
            os.ftruncate(fd, 0)  # released: empty (the file stays, so that no two processes lock two inodes)
    finally:
        os.close(fd)  # and with it the flock
