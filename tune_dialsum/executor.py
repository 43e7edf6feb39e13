"""Where the work after the trials runs: scoring, decoding and the refit, as tasks.

In a search they are Ray tasks (:class:`RayTasks`) with a trial's resources, a GPU where trials
had one, several at once, on any node of the cluster. A test runs the same stages without Ray by
installing :class:`Inline`, which runs each task when it is submitted, in this process::

    with executor.installed(executor.Inline()):
        finish.summarize(...)

Both keep a task's error for :meth:`result`: one decoding that fails does not end the others.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any


class RayTasks:
    """Each task a Ray task with ``num_cpus``/``num_gpus`` (a scoring task: one process of a trial)."""

    def __init__(self, num_cpus: float, num_gpus: float, max_retries: int | None = None) -> None:
        self.options = {"num_cpus": num_cpus, "num_gpus": num_gpus}
        if max_retries is not None:
            self.options["max_retries"] = max_retries

    def at_once(self) -> int | None:
        """How many tasks run at once: None, as many as the cluster's resources fit (cluster.task_slots)."""
        return None

    def submit(self, fn: Callable, *args, **kwargs):
        import ray

        return ray.remote(fn).options(**self.options).remote(*args, **kwargs)

    def first_done(self, handles: list):
        import ray

        [ready], _ = ray.wait(list(handles), num_returns=1)
        return ready

    def result(self, handle):
        import ray

        return ray.get(handle)

    def cancel(self, handle) -> None:
        import ray

        try:
            ray.cancel(handle, force=True)
        except Exception:  # noqa: BLE001, S110 (a node already lost: the failure that ended the stage is the one to tell)
            pass


@dataclass(eq=False)  # each task its own handle, however alike
class _Done:
    value: Any = None
    error: BaseException | None = None


class Inline:
    """Each task run when submitted, in this process: the stages without Ray (tests, a debugger)."""

    def __init__(self) -> None:
        self.submitted: list[tuple[Callable, tuple, dict]] = []

    def at_once(self) -> int:
        return 1

    def submit(self, fn: Callable, *args, **kwargs) -> _Done:
        self.submitted.append((fn, args, kwargs))
        try:
            return _Done(value=fn(*args, **kwargs))
        except Exception as err:  # noqa: BLE001 (kept for result(), as a Ray task keeps its error)
            return _Done(error=err)

    def first_done(self, handles: list) -> _Done:
        return next(iter(handles))

    def result(self, handle: _Done):
        if handle.error is not None:
            raise handle.error
        return handle.value

    def cancel(self, handle) -> None:
        pass


_installed: list = []


def tasks(num_cpus: float, num_gpus: float, max_retries: int | None = None):
    """The executor the stages submit to: the installed one, else Ray tasks with these resources."""
    return _installed[-1] if _installed else RayTasks(num_cpus, num_gpus, max_retries)


def on_ray() -> bool:
    """Whether the tasks submitted now run on Ray (and so need it started)."""
    return not _installed or isinstance(_installed[-1], RayTasks)


@contextmanager
def installed(executor) -> Iterator[None]:
    """Run every task submitted meanwhile on ``executor`` (:class:`Inline` in tests)."""
    _installed.append(executor)
    try:
        yield
    finally:
        _installed.remove(executor)
