"""Data-parallel trials: one Tune trial drives a Ray Train ``TorchTrainer`` over several workers.

A trial with ``resources.workers_per_trial`` above 1 is still one Tune trial (one sampled
configuration, one entry in Optuna's study, one ASHA bracket): its Tune actor is a thin driver
that starts Ray Train's data-parallel training and *relays* rank 0's reports and checkpoints to
Tune, one at a time. Every worker runs the same single-process training (the caller's
``train_process``) under ``torch.distributed``; the transformers trainer shards the batches.

Why a relay and not Ray's ``TuneReportCallback``: that callback passes metrics only, while export,
resume and checkpoint retention need real Tune checkpoints. Ray Train persists rank 0's checkpoint
to a scratch run under the experiment; the driver hands it to ``tune.report`` (which copies it into
the trial) and only then lets training go on, so the scratch run keeps one checkpoint at a time.
Notes on the Ray 2.60 internals this leans on: docs/design/data_parallel_trials.md.

This module knows nothing of tokenizers or models: what a worker trains is a callable.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from queue import Empty

# A Tune trial that only drives workers must still ask for something: Ray refuses an empty request.
DRIVER_RESOURCES = {"cpu": 0, "memory": 2**20}


@dataclass(frozen=True)
class Workers:
    """How a trial's training is spread: ``count`` processes with these resources each."""

    count: int
    cpus: float
    gpus: float

    def scaling_config(self):
        from ray.train import ScalingConfig

        resources = {"CPU": self.cpus, **({"GPU": self.gpus} if self.gpus else {})}
        # PACK: a trial's workers share a node where they fit (gradients cross no network), else spread.
        return ScalingConfig(
            num_workers=self.count, use_gpu=self.gpus > 0, resources_per_worker=resources, placement_strategy="PACK"
        )


# (report, checkpoint directory) -> None: what a worker's training calls after each evaluation.
Publish = Callable[[dict, str], None]


def run_data_parallel(
    train_process: Callable[[int, Publish], None],
    workers: Workers,
    run_name: str,
    storage_location: str,
    is_retryable: Callable[[BaseException], bool],
) -> None:
    """Run ``train_process(rank, publish)`` on every worker; relay rank 0's reports to this Tune trial.

    Blocks until training ends. A worker's error is raised here as it was raised there (so that the
    caller can tell a diverged loss from a lost node). When Tune stops the trial at a report, the
    workers' placement group is removed here, which ends them; the Train controller ends with this
    actor, which owns it. (A stop between reports: :func:`release_placement_groups` after the search.)
    """
    from ray import train, tune
    from ray.train.torch import TorchTrainer
    from ray.util.queue import Queue

    reports = Queue(1, actor_options={"num_cpus": 0})
    copied = Queue(1, actor_options={"num_cpus": 0})
    placement = Queue(1, actor_options={"num_cpus": 0})  # rank 0 sends the workers' placement group
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={"train_process": train_process, "placement": placement},
        scaling_config=workers.scaling_config(),
        run_config=train.RunConfig(
            name=run_name,
            storage_path=storage_location,
            callbacks=[_relay_to_tune(reports, copied)],
            checkpoint_config=train.CheckpointConfig(num_to_keep=1),  # Tune holds the ones that count
            failure_config=train.FailureConfig(max_failures=0),  # Tune's FailureConfig retries the trial
        ),
    )
    ended: list = []
    fitting = threading.Thread(target=_fit, args=(trainer, ended), name="ray-train-fit", daemon=True)
    fitting.start()
    group = None
    try:
        while fitting.is_alive() or not reports.empty():
            group = group or _poll(placement)
            try:
                report, checkpoint = reports.get(timeout=1)
            except Empty:
                continue
            tune.report(report, checkpoint=checkpoint and tune.Checkpoint(checkpoint.path, checkpoint.filesystem))
            copied.put(True)
    except BaseException:  # SystemExit: the scheduler stopped the trial (or it reached its budget)
        _release(group or _poll(placement, timeout=5))
        raise
    fitting.join()
    if ended and isinstance(ended[0], BaseException):
        raise worker_error(ended[0], is_retryable)


def _poll(queue, timeout: float | None = None):
    try:
        return queue.get(timeout=timeout) if timeout else queue.get_nowait()
    except Empty:
        return None


def _release(group) -> None:
    """End a Train run Tune stopped: remove its workers' placement group, which ends the workers.

    Ray Train's own cleaner of orphaned groups asks the State API, which a Ray started without its
    dashboard does not serve: without this, a stopped trial's workers would keep their CPUs or GPUs
    until the search ends. (The controller ends with this trial's actor, which owns it.)
    """
    from ray.util import remove_placement_group

    if group is not None:
        remove_placement_group(group)


def _fit(trainer, ended: list) -> None:
    try:
        ended.append(trainer.fit())
    except BaseException as error:  # noqa: BLE001 (handed to the driver thread, which raises it)
        ended.append(error)


def worker_error(error: BaseException, is_retryable: Callable[[BaseException], bool]) -> BaseException:
    """The error a worker raised, out of Ray Train's wrapping.

    Where several ranks failed: the first that another attempt cannot fix, else the lowest rank's.
    """
    from ray.exceptions import RayTaskError
    from ray.train import WorkerGroupError

    def unwrapped(error: BaseException) -> BaseException:
        return error.cause if isinstance(error, RayTaskError) and error.cause is not None else error

    if not (isinstance(error, WorkerGroupError) and error.worker_failures):
        return unwrapped(error)
    failures = [unwrapped(error.worker_failures[rank]) for rank in sorted(error.worker_failures)]
    # one rank's out-of-memory error breaks the other ranks' collectives: the cause is not always rank 0's
    return next((failure for failure in failures if not is_retryable(failure)), failures[0])


def _worker_loop(loop_config: dict) -> None:
    """One Ray Train worker: the caller's training, publishing through ``ray.train.report``.

    ``ray.train.report`` is a barrier: every rank calls it after every evaluation, and only rank 0
    attaches its checkpoint (the model is the same on every rank after each synchronized step).
    """
    from ray import train
    from ray.util import get_current_placement_group

    rank = train.get_context().get_world_rank()
    if rank == 0:
        loop_config["placement"].put(get_current_placement_group())

    def publish(report: dict, checkpoint_dir: str) -> None:
        checkpoint = train.Checkpoint.from_directory(checkpoint_dir) if rank == 0 else None
        train.report(report, checkpoint=checkpoint)

    loop_config["train_process"](rank, publish)


def _relay_to_tune(reports, copied):
    """The controller-side callback (its class built lazily: importing Ray Train costs seconds)."""
    from tune_dialsum.ray_compat import train_controller_callback

    class RelayToTune(train_controller_callback()):
        """Hands rank 0's report and the persisted checkpoint to the trial, and waits until Tune copied it."""

        def __init__(self, reports, copied) -> None:
            self.reports, self.copied = reports, copied

        def after_report(self, run_context, metrics, checkpoint):
            self.reports.put((metrics[0], checkpoint))
            self.copied.get()  # the scratch run keeps one checkpoint: the next must not replace it yet

    return RelayToTune(reports, copied)


def release_placement_groups() -> int:
    """Remove what this job's stopped data-parallel trials still hold, once no trial runs; returns how many.

    A trial stopped between two reports (time budget, Ctrl-C) ends without the driver seeing it:
    its workers' placement group would hold their CPUs and GPUs until Ray shuts down. Placement
    group ids end with the id of the job that made them.
    """
    import ray
    from ray.util import placement_group_table, remove_placement_group

    from tune_dialsum.ray_compat import placement_group

    job = ray.get_runtime_context().get_job_id()
    leftover = [
        group_id
        for group_id, group in placement_group_table().items()
        if group_id.endswith(job) and group["state"] != "REMOVED"
    ]
    for group_id in leftover:
        remove_placement_group(placement_group(group_id))
    return len(leftover)


def new_run_name(trial_id: str) -> str:
    """A fresh Ray Train run per attempt: a retried trial resumes from Tune's checkpoint, not Train's."""
    return f"{trial_id}-{uuid.uuid4().hex[:8]}"


__all__ = [
    "DRIVER_RESOURCES",
    "Workers",
    "new_run_name",
    "release_placement_groups",
    "run_data_parallel",
    "worker_error",
]
