"""The search: start or resume an experiment, run its Tuner (tuner.py), then finish it (finish.py).

What runs in order: the checks that can fail before anything starts (the data, every model, the
store, the resources), the experiment's lock, Ray, the Tuner (restored first where the experiment
is resumed), the classification of its trials, and the stages after them.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time

import yaml

from tune_dialsum.adapters import peft_missing, refuse_training_from
from tune_dialsum.atomic import atomic_write_text
from tune_dialsum.cluster import check_resources, check_shared_paths, keep_on_loopback, start_ray
from tune_dialsum.contract import (
    BEST_MODEL_DIR,
    NOT_RETRYABLE_FILE,
    OPTUNA_DB,
    PENDING,
    RUNNING,
    SPACE_SNAPSHOT,
    TRAIN_RUNS_DIR,
    TRIAL_DIR_PREFIX,
)
from tune_dialsum.data_parallel import release_placement_groups
from tune_dialsum.early_rescoring import EarlyRescoring
from tune_dialsum.errors import UsageError
from tune_dialsum.experiment_context import ExperimentContext, experiment_context, rescores_validation
from tune_dialsum.finish import summarize
from tune_dialsum.lock import experiment_lock
from tune_dialsum.models import TINY_PREFIX, check_model_available, resolve_model_path
from tune_dialsum.outcome import SearchOutcome, format_summary
from tune_dialsum.ray_compat import recorded_trial_ids, session_dir
from tune_dialsum.space import SearchSpace, parse_space
from tune_dialsum.space_schema import TrialsSection
from tune_dialsum.storage import ExperimentStore
from tune_dialsum.tuner import (
    _trial_name,  # noqa: F401 (tuner.pkl files of older experiments name it here)
    build_tuner,
    trainable,
)

logger = logging.getLogger(__name__)


def preflight(space: SearchSpace, context: ExperimentContext) -> None:
    """Everything that can fail before a trial starts: the data, every model."""
    from tune_dialsum.data import DialogueDataLoader

    DialogueDataLoader(
        context.data.path, context.data.dialogue_column, context.data.summary_column, context.data.id_column
    ).load_splits()
    for model in space.models:
        check_model_available(model)
        refuse_training_from(model)  # before any trial starts, not in every one
        if model.startswith(TINY_PREFIX):
            resolve_model_path(model, context.data.path)  # built once here, not in every trial at once


def resume_search(
    name: str, storage_path: str = "ray_results", address: str | None = None, num_samples: int | None = None
) -> SearchOutcome:
    """Continue experiment ``name`` with the space it started with.

    Finished trials stay as they are; unfinished and failed ones continue from their last
    checkpoint; ``num_samples`` above the trials it has adds trials (Optuna's study keeps every
    earlier one, so TPE learns from them).
    """
    keep_on_loopback(address)
    store = ExperimentStore.of(storage_path, name)
    with experiment_lock(store.local):  # before the mirror is pulled: a second driver must not touch it
        return _run(_resumed_space(store, name, num_samples), store, resume=True, address=address)


# What an experiment started with, which --resume keeps: a flag that would change one is refused.
RESUME_KEEPS = (
    "max_concurrent",
    "gpus_per_trial",
    "cpus_per_trial",
    "workers_per_trial",
    "gpus_per_worker",
    "cpus_per_worker",
    "track",
    "track_uri",
)


def experiment_to_resume(
    name: str | None, storage_path: str | None, space_path: str | None, changed: list[str]
) -> tuple[str, str]:
    """(name, storage path) of the experiment ``--resume`` continues: ``--name``, else the name of the
    space file given; ``changed``: what was asked that would change the experiment (refused, in one line)."""
    from tune_dialsum.space import load_space

    if changed:
        raise UsageError(
            f"--resume continues an experiment with the settings it started with, so {changed[0]} cannot apply; "
            "leave it out (only --num-samples may grow), or start a new experiment under another --name"
        )
    space = load_space(space_path) if space_path else None
    name = name or (space.name if space else None)
    if not name:
        raise UsageError("--resume needs the experiment: --name NAME (and --storage-path if it is not ray_results)")
    return name, storage_path or (space.storage_path if space else "ray_results")


def run_search(space: SearchSpace, resume: bool = False, address: str | None = None) -> SearchOutcome:
    """Run the experiment ``space`` describes, export its best model, return a summary.

    ``resume=True`` is :func:`resume_search` of the experiment of ``space``'s name and storage path.
    """
    if resume:
        return resume_search(space.name, space.storage_path, address)
    keep_on_loopback(address)  # first: loading the models below imports ray
    store = ExperimentStore.of(space.storage_path, space.name)
    if store.exists():
        raise UsageError(
            f"experiment {space.name!r} already exists at {store.location}; pass --resume to continue it "
            "or --name to start a new one"
        )
    return _run(space, store, resume=False, address=address)


def _run(space: SearchSpace, store: ExperimentStore, resume: bool, address: str | None) -> SearchOutcome:

    context = experiment_context(space, store)
    # Tune gives a reused worker's trial 2 s to end before the next one starts there; ending one frees
    # its scratch and memory (workers of a local Ray inherit this)
    os.environ.setdefault("TUNE_FUNCTION_THREAD_TIMEOUT_S", "30")
    clock = time.perf_counter()
    store.check_writable()
    if space.tracking:  # before models are built and anything is written: a refusal leaves nothing behind
        from tune_dialsum.tracking import require_mlflow, tracking_uri

        require_mlflow()
        tracking_uri(space.tracking.uri, store.local, store.remote)
    missing = peft_missing() if "lora" in space.adapters else None
    if missing:  # the optional extra: refused before any model is built
        raise UsageError(f"{space.source}: {missing}")
    preflight(space, context)
    logger.info("preflight took %.1fs", time.perf_counter() - clock)
    with experiment_lock(store.local):  # after the checks: a refusal leaves nothing behind
        return _run_locked(space, context, store, resume, address, clock)


def _run_locked(
    space: SearchSpace, context: ExperimentContext, store: ExperimentStore, resume: bool, address, clock: float
) -> SearchOutcome:
    from ray import tune

    started_ray = start_ray(address)
    logger.info("ray ready after %.1fs", time.perf_counter() - clock)
    try:
        at_once = check_resources(space)  # what the cluster has room for, said in the summary
        store.local.mkdir(parents=True, exist_ok=True)
        check_shared_paths(written={"storage_path": store.location}, read={"data.path": context.data.path})
        atomic_write_text(store.local / SPACE_SNAPSHOT, yaml.safe_dump({**space.raw, "name": space.name}))
        store.push(store.local / SPACE_SNAPSHOT)
        os.environ["RAY_AIR_NEW_OUTPUT"] = "0"  # the classic table shows every trial's state and score
        tracked = _open_tracking(space, context, store)
        results = []
        if resume:  # the user asks for failed trials to be tried again: errors not retried before are, now
            for marker in store.local.glob(f"{TRIAL_DIR_PREFIX}*/{NOT_RETRYABLE_FILE}"):
                store.delete(marker)
        fits = []  # how long each Tuner.fit ran: one that ran the whole time budget was ended by it
        if resume and tune.Tuner.can_restore(store.location):
            tuner = tune.Tuner.restore(
                store.location, trainable=trainable(space, context), resume_unfinished=True, resume_errored=True
            )
            results = _timed_fit(tuner, fits)
            store.pull(checkpoint_files=())  # for a URI: the trial directories the restored run wrote
        more = space.trials.num_samples - (len(recorded_trial_ids(store.local)) if resume else 0)
        early = None
        if more > 0 and not interrupted(results, context):
            # a new search, or more trials for a finished one: Optuna's study holds every earlier trial
            callbacks = [_trial_runs(tracked, context)] if tracked else []
            callbacks += [_study_push(store)] if store.remote else []
            # not for data-parallel trials: Tune counts one RUNNING before its workers have their slots
            if rescores_validation(space) and not (resume or store.remote or space.resources.data_parallel):
                early = EarlyRescoring(space, context, more)
                callbacks.append(early.callback())
            results += _timed_fit(build_tuner(space, context, store, more, resume, callbacks, at_once), fits)
        store.push_study(store.local / OPTUNA_DB)
        if space.resources.data_parallel:  # what trials stopped between reports still hold, and what they staged
            release_placement_groups()
        store.delete(store.local / TRAIN_RUNS_DIR)  # what data-parallel trials stopped mid-report left staged
        logger.info("trials done after %.1fs", time.perf_counter() - clock)
        # Ray stops running trials too when the time budget ends a run: they are ended, not interrupted
        # (a Ctrl-C ends a run before its budget)
        budget = space.trials.time_budget_s
        out_of_time = budget is not None and any(seconds >= budget - 1 for seconds in fits)
        try:
            outcome = summarize(results, space, context, store, out_of_time=out_of_time, early=early)
        finally:
            if early is not None:
                early.cancel()  # what the re-scoring did not take (all of it, where the search was interrupted)
        outcome.at_once = at_once
        outcome.workers_per_trial = space.resources.workers_per_trial
        outcome.scratch_bytes = session_scratch_bytes() if started_ray else None
        if tracked:
            _close_tracking(tracked, outcome)
        logger.info("summary, selection and export done after %.1fs", time.perf_counter() - clock)
    finally:
        if started_ray:
            import ray

            ray.shutdown()
    return outcome


def interrupted(results, context: ExperimentContext) -> bool:
    """Whether a run left a trial that neither ended nor failed (a Ctrl-C): then it adds no trial.

    By the summary's rule (ExperimentContext.state_of): a resumed trial that trained its whole budget
    has ended even where Ray left its last result without ``done``.
    """
    return any(context.state_of(r.metrics or {}, r.error is not None) in (RUNNING, PENDING) for r in results)


def _open_tracking(space: SearchSpace, context: ExperimentContext, store: ExperimentStore):
    """The search's MLflow parent run (a resumed search's own), or None where the space tracks nothing."""
    if space.tracking is None:
        return None
    from tune_dialsum.contract import TRACKING_FILE
    from tune_dialsum.tracking import open_search_run

    params = {"objective": f"{space.metric} ({space.mode})", "budget_unit": context.scheduler.budget_unit}
    params |= {"max_budget": context.scheduler.max_budget, "num_samples": space.trials.num_samples}
    params |= {"scheduler": space.scheduler.type, "sampler": space.trials.sampler, "seed": space.seed}
    params |= {f"fixed.{key}": value for key, value in space.fixed.items()}
    params |= {f"search.{key}": f"{dist.kind} {list(dist.args)}" for key, dist in space.search.items()}
    tracked = open_search_run(space.tracking, space.name, store.local, store.remote, params)
    store.push(store.local / TRACKING_FILE)  # a resume on another machine continues the same run
    return tracked


def _timed_fit(tuner, fits: list[float]) -> list:
    started = time.monotonic()
    results = list(tuner.fit())
    fits.append(time.monotonic() - started)
    return results


def _study_push(store: ExperimentStore):
    """A Tune callback that pushes the Optuna study to the store as each trial ends.

    Another machine that resumes the experiment (after this driver died, say) then continues from
    the study as it was, not from its start. A push the store refuses (another machine wrote the
    study since) is a warning here; the push at the end of the search refuses in one line.
    """
    from ray.tune import Callback

    class StudyPush(Callback):
        def on_trial_complete(self, iteration, trials, trial, **info):
            try:
                store.push_study(store.local / OPTUNA_DB)
            except UsageError as err:
                logger.warning("%s", err)

        on_trial_error = on_trial_complete

    return StudyPush()


def _trial_runs(tracked, context: ExperimentContext):
    from tune_dialsum.contract import REPORTED_SCORES
    from tune_dialsum.tracking import trial_runs_callback

    scores = tuple(key for key in REPORTED_SCORES if key != "loss")
    scores += ("eval_loss", context.ranked_by, "train_loss", "time_total_s")
    return trial_runs_callback(tracked, context.time_attr, context.scheduler.max_budget, scores)


def _close_tracking(tracked, outcome: SearchOutcome) -> None:
    """The exported model and the analysis report (where matplotlib is installed) go to the parent run.

    After the export: a report or a tracking store that fails here is a warning, not a failed search.
    """
    from tune_dialsum.errors import one_line
    from tune_dialsum.tracking import close_search_run

    report_dir = None
    try:
        from tune_dialsum.analysis import Experiment
        from tune_dialsum.report import write_report

        report_dir = write_report(Experiment.load(outcome.experiment_dir)).parent
    except ImportError as error:
        logger.warning("tracking: no report logged (%s); pip install 'tune_dialsum[analysis]' adds it", error)
    except Exception as error:  # noqa: BLE001 (a plot that fails must not undo a finished search)
        logger.warning("tracking: no report logged: %s", one_line(error))
    try:
        close_search_run(tracked, outcome, report_dir)
    except Exception as error:  # noqa: BLE001 (HTTP, SQL or file-system errors of the store)
        logger.warning(
            "tracking: the search's MLflow run %s was not closed: %s", tracked.parent_run_id, one_line(error)
        )


def _resumed_space(store: ExperimentStore, name: str, num_samples: int | None) -> SearchSpace:
    """The experiment's own space, with ``trials.num_samples`` raised where asked."""
    store.pull(checkpoint_files=())
    snapshot = store.local / SPACE_SNAPSHOT
    if not snapshot.is_file():
        raise UsageError(f"--resume: nothing to resume at {store.location}; run without --resume to start it")
    raw = yaml.safe_load(snapshot.read_text())
    if num_samples is not None:
        planned = int((raw.get("trials") or {}).get("num_samples", TrialsSection.num_samples))
        existing = max(planned, len(recorded_trial_ids(store.local)))
        if num_samples < existing:
            raise UsageError(
                f"--num-samples {num_samples}: experiment {name!r} already has {existing} trials (run or planned); "
                f"pass {existing + 1} or more to add trials, or leave it out to finish the experiment as it was"
            )
        raw.setdefault("trials", {})["num_samples"] = num_samples
    space = parse_space(raw, source=str(snapshot), default_name=name)
    return dataclasses.replace(space, storage_path=store.storage_path)


def session_scratch_bytes() -> int | None:
    """Bytes left under the local Ray session's artifacts (trial working directories); None where unknown."""
    session = session_dir()
    if session is None:
        return None
    artifacts = session / "artifacts"
    return sum(f.stat().st_size for f in artifacts.rglob("*") if f.is_file()) if artifacts.is_dir() else 0


__all__ = ["BEST_MODEL_DIR", "SearchOutcome", "format_summary", "resume_search", "run_search"]
