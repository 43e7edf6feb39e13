"""Writing a directory so that readers see all of it or none of it."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_directory(out_dir: Path) -> Iterator[Path]:
    """Yield a staging directory beside ``out_dir``; fill it, and it replaces ``out_dir`` in one rename.

    If the block raises, the staging directory is removed and ``out_dir`` is left as it was, so
    a failed write never leaves a half-written directory behind.
    """
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        yield staging
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
