"""The exceptions users see.

Every error raised for bad input derives from :class:`TuneDialsumError`; the
command line prints its message on one line and exits with its ``exit_code``
instead of showing a traceback. Messages name the file, key or value at fault
and say how to fix it.
"""

from __future__ import annotations


class TuneDialsumError(Exception):
    """Base class of every error tune_dialsum raises on purpose."""

    exit_code = 1


class UsageError(TuneDialsumError):
    """Bad input from the user: a file, a setting, a command-line value."""

    exit_code = 2


class DataError(UsageError):
    """A dataset that cannot be read or does not have what training needs."""


class SpaceError(UsageError):
    """A search-space file that does not validate."""


class ModelNotFoundError(UsageError):
    """A model name that is neither a local directory nor reachable on the hub."""


class SearchError(TuneDialsumError):
    """A search that ran but produced nothing usable (e.g. no trial finished)."""


class ExportError(TuneDialsumError):
    """A checkpoint that cannot be exported."""


def one_line(error: BaseException) -> str:
    """The last line of an error's message: the cause, not the wrappers (Ray's, say) around it."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__
