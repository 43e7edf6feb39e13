"""Writing a directory so that readers see all of it or none of it."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _umask() -> int:
    try:  # Linux says it without changing it
        with open("/proc/self/status") as status:
            return next(int(line.split()[1], 8) for line in status if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError):
        mask = os.umask(0o022)  # elsewhere reading it means setting it: put it straight back
        os.umask(mask)
        return mask


@contextmanager
def atomic_directory(out_dir: Path) -> Iterator[Path]:
    """Yield a staging directory beside ``out_dir``; fill it, and it replaces ``out_dir`` by renames.

    If the block raises, the staging directory is removed and ``out_dir`` is left as it was, so a
    failed write never leaves a half-written directory behind. An existing ``out_dir`` is renamed
    aside before the new one takes its name and removed only after: a crash in between leaves the
    old copy under ``.NAME.old-*``, never no copy at all. The directory gets the permissions the
    umask gives a new directory (``mkdtemp`` alone would make it private to its owner).
    """
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    aside = None
    try:
        yield staging
        staging.chmod(0o777 & ~_umask())
        if out_dir.exists():
            aside = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
            out_dir.rename(aside / out_dir.name)
        staging.rename(out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if aside is not None and out_dir.exists():
            shutil.rmtree(aside, ignore_errors=True)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``path`` so that a reader sees the old text or the new, never a part (a rename)."""
    staging = path.with_name(f".{path.name}.partial-{os.getpid()}-{os.urandom(3).hex()}")  # one per writer
    try:
        staging.write_text(text, encoding="utf-8")  # the umask's permissions, as a plain write would give
        staging.replace(path)
    finally:
        staging.unlink(missing_ok=True)
