"""Where an experiment lives: a directory (local or shared), or a URI that pyarrow's filesystems understand.

Ray Tune writes trial results and checkpoints to either (``s3://``, ``gs://``, ``abfs://``,
``hdfs://``, ``file://``). The rest of tune_dialsum reads an experiment with pathlib, so for
a URI it works on a *mirror* on this machine: every small file (Ray's reports and params, the
space snapshot, the Optuna study, each checkpoint's metadata) but no weights. A checkpoint is
fetched whole only when it is exported, and what tune_dialsum writes (the best model, the
Optuna study) is pushed back. For a directory, the mirror is the directory itself and every
sync is a no-op.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from tune_dialsum.atomic import atomic_write_text
from tune_dialsum.contract import DECODING_DB, OPTUNA_DB
from tune_dialsum.errors import UsageError
from tune_dialsum.locations import (
    SWAP_LEFTOVER,
    delete_file,
    download,
    failing_in_one_line,
    filesystem,
    is_uri,
    join,
    split,
    upload,
    write_text,
)
from tune_dialsum.uris import refuse_credentials

CHECKPOINT_PREFIX = "checkpoint_"  # Ray Tune's name for the checkpoints it persists


def _version(info) -> list:
    """What identifies a store file's version: its size and its mtime in whole seconds (a listing and a
    single file's info may give the mtime at different precisions; some stores keep only seconds)."""
    return [info.size, int(info.mtime.timestamp()) if info.mtime else None]


def mirror_root() -> Path:
    from tune_dialsum.models import cache_dir

    return cache_dir() / "experiments"


class ExperimentStore:
    """One experiment's files, wherever they are kept; tune_dialsum reads them under ``local``."""

    def __init__(self, location: str):
        refuse_credentials(location, "storage")
        self.remote = is_uri(location)
        self.location = location if self.remote else str(Path(location).expanduser().resolve())
        self.storage_path, self.name = split(self.location)
        self.fs, self.path = filesystem(self.location)
        if self.remote:
            digest = hashlib.sha256(self.location.encode()).hexdigest()[:12]
            self.local = mirror_root() / f"{self.name}-{digest}"
        else:
            self.local = Path(self.location)

    @classmethod
    def of(cls, storage_path: str, name: str) -> ExperimentStore:
        return cls(join(storage_path, name))

    def where(self, local_path: Path) -> str:
        """The location of a file or directory of the mirror in the store (a URI or a path)."""
        return join(self.location, *local_path.relative_to(self.local).parts) if self.remote else str(local_path)

    def _remote_path(self, local_path: Path) -> str:
        return "/".join([self.path, *local_path.relative_to(self.local).parts])

    def _listing(self):
        import pyarrow.fs as pafs

        with failing_in_one_line(self.location, "list"):
            infos = self.fs.get_file_info(pafs.FileSelector(self.path, allow_not_found=True, recursive=True))
        return [info for info in infos if info.type == pafs.FileType.File]

    def check_writable(self) -> None:
        """Fail in one line, before anything starts, where the store cannot be written (creating nothing)."""
        if not self.remote:
            nearest = next(p for p in [self.local, *self.local.parents] if p.exists())
            if not nearest.is_dir() or not os.access(nearest, os.W_OK | os.X_OK):
                raise UsageError(
                    f"storage {self.location}: cannot write ({nearest} is not a writable directory); "
                    "pass another --storage-path"
                )
            return
        probe = join(self.location, f".tune_dialsum-probe-{os.getpid()}")
        write_text(probe, "")
        delete_file(probe)

    def exists(self) -> bool:
        """Whether anything is stored under this experiment yet."""
        if not self.remote:
            return self.local.is_dir() and any(self.local.iterdir())
        return bool(self._listing())

    def disk_bytes(self) -> int:
        if not self.remote:
            return sum(f.stat().st_size for f in self.local.rglob("*") if f.is_file())
        return sum(info.size for info in self._listing())

    # -- the Optuna studies: written on one machine at a time, synced by version ------------------
    # A study is a SQLite file the driver writes here and pushes. Which copy is newer is decided by
    # what the store held when this machine last pulled or pushed it (its size and mtime there), kept
    # beside the mirror: a store copy that changed since came from another machine.
    def _synced_file(self) -> Path:
        return self.local.with_name(f"{self.local.name}.synced.json")

    def _synced(self) -> dict:
        path = self._synced_file()
        return json.loads(path.read_text()) if path.is_file() else {}

    def _remember(self, relative: str, info) -> None:
        synced = self._synced()
        local = self.local / relative
        synced[relative] = {"remote": _version(info), "local": [local.stat().st_size, local.stat().st_mtime]}
        atomic_write_text(self._synced_file(), json.dumps(synced))

    def _study_changed_here(self, relative: str) -> bool:
        local, seen = self.local / relative, self._synced().get(relative)
        return local.is_file() and (seen is None or seen["local"] != [local.stat().st_size, local.stat().st_mtime])

    def _study_changed_there(self, relative: str, info) -> bool:
        seen = self._synced().get(relative)  # none: a mirror from before versions were kept; its copy wins
        return seen is not None and seen["remote"] != _version(info)

    def push_study(self, local_path: Path) -> None:
        """Upload a study file, unless the store's copy changed since this machine last synced it (refused)."""
        import pyarrow.fs as pafs

        if not self.remote or not local_path.is_file():
            return
        relative = local_path.relative_to(self.local).as_posix()
        with failing_in_one_line(self.location, "read"):
            info = self.fs.get_file_info(self._remote_path(local_path))
        if info.type == pafs.FileType.File and self._study_changed_there(relative, info):
            raise UsageError(
                f"storage {self.location}: {relative} changed in the store since this machine last read it "
                "(another machine continued this experiment?); not overwriting it: let that driver finish, then "
                "--resume here"
            )
        upload(local_path, self.where(local_path))
        with failing_in_one_line(self.location, "read"):
            self._remember(relative, self.fs.get_file_info(self._remote_path(local_path)))

    def pull(self, checkpoint_files: Iterable[str], keep_local: Iterable[str] = (OPTUNA_DB, DECODING_DB)) -> Path:
        """Bring the mirror up to date: every file but those inside checkpoints not named in ``checkpoint_files``.

        Files named in ``keep_local`` (relative paths; by default the Optuna studies) are fetched where
        the store's copy changed since this machine last synced it (another machine wrote it), and
        not where only this machine's copy changed (written here, not pushed yet); where both
        changed, the pull refuses in one line. What an earlier pull or fetch brought and the store
        no longer has (checkpoints Ray or a trim removed) is removed; what was written here and not
        pushed yet (by a search on this machine, while ``analyze`` pulls) is left alone.
        """
        if not self.remote:
            return self.local
        wanted, keep_local = set(checkpoint_files), set(keep_local)
        self.local.mkdir(parents=True, exist_ok=True)
        manifest = self.local.with_name(f"{self.local.name}.pulled")  # what the last pull brought, beside the mirror
        pulled_before = set(manifest.read_text().splitlines()) if manifest.is_file() else set()
        remote_files, pulled = set(), set()
        for info in self._listing():
            relative = info.path[len(self.path) :].lstrip("/")
            if ".." in relative.split("/") or relative.startswith("/"):
                raise UsageError(
                    f"storage {self.location}: the key {relative!r} would leave the experiment's directory; "
                    "remove it from the bucket (tune_dialsum writes no such key)"
                )
            remote_files.add(relative)
            parts = relative.split("/")
            if SWAP_LEFTOVER.search(parts[0]):
                continue  # a copy a crashed replace left (a whole model): not part of the experiment
            in_checkpoint = any(part.startswith(CHECKPOINT_PREFIX) for part in parts[:-1])
            if in_checkpoint and parts[-1] not in wanted:
                continue  # weights and optimizer state: fetched only for the checkpoint exported
            target = self.local / relative
            if target.is_file() and relative in keep_local:
                if not self._study_changed_there(relative, info):
                    continue  # this machine's copy is as new, or newer (written here)
                if self._study_changed_here(relative):
                    raise UsageError(
                        f"storage {self.location}: {relative} changed both in the store and on this machine "
                        f"({target}); keep one: delete this machine's copy to take the store's"
                    )
            pulled.add(relative)
            modified = info.mtime.timestamp() if info.mtime else None
            if target.is_file() and target.stat().st_size == info.size and modified in (None, target.stat().st_mtime):
                continue  # unchanged since the last pull
            target.parent.mkdir(parents=True, exist_ok=True)
            staging = target.with_name(f".{target.name}.partial-{os.getpid()}")  # a reader sees old or new
            with failing_in_one_line(self.location, "read"):
                with self.fs.open_input_stream(info.path) as source, open(staging, "wb") as out:
                    shutil.copyfileobj(source, out)
            if modified is not None:
                os.utime(staging, (modified, modified))
            staging.replace(target)
            if relative in keep_local:
                self._remember(relative, info)
        # Checkpoint directories are only ever written by pulls and fetches, so all of them are ours to tidy.
        ours = pulled_before | {
            p.relative_to(self.local).as_posix() for p in self.local.glob(f"*/{CHECKPOINT_PREFIX}*/*") if p.is_file()
        }
        for relative in sorted(ours - remote_files - keep_local):
            gone = self.local / relative
            gone.unlink(missing_ok=True)
            for parent in gone.parents:  # and the directories that leaves empty
                if parent == self.local or not parent.is_dir() or any(parent.iterdir()):
                    break
                parent.rmdir()
        atomic_write_text(manifest, "".join(f"{relative}\n" for relative in sorted(pulled)))
        return self.local

    def fetch(self, local_dir: Path) -> Path:
        """Make the mirror's ``local_dir`` (a checkpoint, say) complete: download all of it."""
        if self.remote:
            download(join(self.location, *local_dir.relative_to(self.local).parts), local_dir)
        return local_dir

    def push(self, local_path: Path) -> None:
        """Upload a mirror file or directory to the store, replacing what is there."""
        if self.remote:
            upload(local_path, self.where(local_path))

    def delete(self, local_path: Path) -> None:
        """Remove a file or directory from the store and the mirror (which may hold only part of it)."""
        import pyarrow.fs as pafs

        if self.remote:
            target = self._remote_path(local_path)
            with failing_in_one_line(self.location, "delete"):
                kind = self.fs.get_file_info(target).type
                if kind == pafs.FileType.Directory:
                    self.fs.delete_dir(target)
                elif kind == pafs.FileType.File:
                    self.fs.delete_file(target)
        if local_path.is_dir():
            shutil.rmtree(local_path, ignore_errors=True)
        else:
            local_path.unlink(missing_ok=True)

    def move(self, source: Path, target: Path) -> None:
        """Move a directory of the mirror (a trial, say) to another place in it, in the store too."""
        import pyarrow.fs as pafs

        target.parent.mkdir(parents=True, exist_ok=True)
        if self.remote:  # object stores have no directories to rename: copy, then delete
            remote_source, remote_target = self._remote_path(source), self._remote_path(target)
            with failing_in_one_line(self.location, "move"):
                pafs.copy_files(remote_source, remote_target, source_filesystem=self.fs, destination_filesystem=self.fs)
                self.fs.delete_dir(remote_source)
        source.rename(target)
