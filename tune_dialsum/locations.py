"""Reading and writing a location: a local directory or a URI that pyarrow's filesystems understand.

``s3://``, ``gs://``, ``abfs://``, ``hdfs://`` and ``file://`` go through pyarrow (and so reach
what Ray Tune writes); a plain path goes through pathlib. Every failure of the store is one line
naming the location (:class:`UsageError`). storage.py builds an experiment's mirror on these.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tune_dialsum.atomic import atomic_directory
from tune_dialsum.errors import UsageError, one_line

_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
# Where replace_tree keeps a new copy and the old one during a swap; what a crash leaves is not mirrored
SWAP_LEFTOVER = re.compile(r"\.(new|old)-\d+-[0-9a-f]{6}$")


def is_uri(location: str) -> bool:
    return _SCHEME.match(str(location)) is not None


def join(location: str, *parts: str) -> str:
    """``location``/``parts``; a URI keeps its query (``?endpoint_override=...``) at the end."""
    if not is_uri(location):
        return str(Path(location, *parts))
    base, sep, query = location.partition("?")
    return "/".join([base.rstrip("/"), *parts]) + sep + query


def split(location: str) -> tuple[str, str]:
    """(parent, name) of an experiment location: the storage path Ray is given, and the experiment name."""
    if not is_uri(location):
        path = Path(location).expanduser().resolve()
        return str(path.parent), path.name
    base, sep, query = location.partition("?")
    parent, _, name = base.rstrip("/").rpartition("/")
    return parent + sep + query, name


@contextmanager
def failing_in_one_line(location: str, doing: str) -> Iterator[None]:
    try:
        yield
    except OSError as err:  # pyarrow reports network, permission and missing-bucket errors as OSError
        raise UsageError(
            f"storage {location}: cannot {doing} ({one_line(err)}); check the path or URI, the bucket and "
            "this machine's credentials for it"
        ) from None


def filesystem(location: str):
    """(pyarrow FileSystem, path in it) for a URI or a local path; one-line error for what pyarrow refuses."""
    import pyarrow.fs as pafs

    try:
        if is_uri(location):
            return pafs.FileSystem.from_uri(location)
        return pafs.LocalFileSystem(), str(Path(location).expanduser().resolve())
    except (ValueError, OSError) as err:  # pyarrow.ArrowInvalid is a ValueError
        raise UsageError(
            f"storage {location}: {one_line(err)}; pass a directory every node shares or a URI pyarrow "
            "understands (s3://, gs://, abfs://, hdfs://, file://)"
        ) from None


def reachable(location: str) -> str | None:
    """None if ``location`` exists and can be read from this process, else why not (one line)."""
    import pyarrow.fs as pafs

    try:
        fs, path = filesystem(location)
        if fs.get_file_info(path).type == pafs.FileType.NotFound:
            return "not found"
    except (UsageError, OSError, ValueError) as err:
        return one_line(err)
    return None


def write_text(location: str, text: str) -> None:
    fs, path = filesystem(location)
    with failing_in_one_line(location, "write"):
        fs.create_dir(path.rpartition("/")[0], recursive=True)
        with fs.open_output_stream(path) as out:
            out.write(text.encode())


def read_text(location: str) -> str | None:
    """The text of the file at ``location``; None where there is none."""
    fs, path = filesystem(location)
    with failing_in_one_line(location, "read"):
        try:
            with fs.open_input_stream(path) as stream:
                return stream.read().decode()
        except FileNotFoundError:
            return None


def delete_file(location: str) -> None:
    fs, path = filesystem(location)
    with failing_in_one_line(location, "delete"):
        try:
            fs.delete_file(path)
        except FileNotFoundError:
            pass


def delete_tree(location: str) -> None:
    """Remove the directory at ``location`` and everything under it, if it is there."""
    fs, path = filesystem(location)
    with failing_in_one_line(location, "delete"):
        try:
            fs.delete_dir(path)
        except FileNotFoundError:
            pass


def download(location: str, local_dir: Path) -> Path:
    """Copy the directory at ``location`` (a URI or a path) into ``local_dir``."""
    import pyarrow.fs as pafs

    fs, path = filesystem(location)
    local_dir.mkdir(parents=True, exist_ok=True)
    with failing_in_one_line(location, "download"):
        pafs.copy_files(path, str(local_dir), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    return local_dir


def upload(local_path: Path, location: str) -> None:
    """Copy a local file or directory to ``location`` (a URI or a path), replacing what is there.

    A directory replaces the old one through ``replace_tree``: never deleted before the new one is whole.
    """
    import pyarrow.fs as pafs

    if local_path.is_dir():
        return replace_tree(local_path, location)
    fs, path = filesystem(location)
    with failing_in_one_line(location, "upload"):
        fs.create_dir(path.rpartition("/")[0], recursive=True)
        pafs.copy_files(str(local_path), path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)


def _delete_swap_leftovers(fs, path: str) -> None:
    """What an earlier replace_tree of ``path`` left after a crash: it is being replaced now anyway."""
    import pyarrow.fs as pafs

    parent, _, name = path.rstrip("/").rpartition("/")
    with failing_in_one_line(path, "list"):
        siblings = fs.get_file_info(pafs.FileSelector(parent, allow_not_found=True))
    for info in siblings:
        base = info.path.rstrip("/").rpartition("/")[2]
        if (
            info.type == pafs.FileType.Directory
            and base.startswith(name)
            and SWAP_LEFTOVER.fullmatch(base[len(name) :])
        ):
            fs.delete_dir(info.path)


def replace_tree(local_dir: Path, location: str) -> None:
    """Upload the directory ``local_dir`` to ``location`` so that a whole copy exists at every moment.

    A local ``location`` is replaced by renames (atomic). An object store has no rename: the new
    copy is uploaded beside the old one first, the old one is copied aside, and only then is
    ``location`` rewritten from the uploaded copy (a server-side copy). A crash at any point leaves
    a complete copy, old or new, under ``location``, ``NAME.new-*`` or ``NAME.old-*``; ``pull`` does not
    mirror those, and the next replace of ``location`` removes them.
    """
    import pyarrow.fs as pafs

    if not is_uri(location):
        with atomic_directory(Path(location).expanduser()) as staging:
            shutil.copytree(local_dir, staging, dirs_exist_ok=True)
        return
    fs, path = filesystem(location)
    _delete_swap_leftovers(fs, path)
    tag = f"{os.getpid()}-{os.urandom(3).hex()}"
    beside, aside = f"{path.rstrip('/')}.new-{tag}", f"{path.rstrip('/')}.old-{tag}"
    with failing_in_one_line(location, "upload"):
        fs.create_dir(path.rpartition("/")[0], recursive=True)
        copy = pafs.copy_files
        copy(str(local_dir), beside, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
        had_old = fs.get_file_info(path).type != pafs.FileType.NotFound
        if had_old:
            copy(path, aside, source_filesystem=fs, destination_filesystem=fs)
            fs.delete_dir_contents(path, missing_dir_ok=True)
        copy(beside, path, source_filesystem=fs, destination_filesystem=fs)
        for leftover in (beside, aside):
            try:
                fs.delete_dir(leftover)
            except FileNotFoundError:  # an old copy with no files left nothing aside
                pass
