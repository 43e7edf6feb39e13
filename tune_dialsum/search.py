"""The search: Ray Tune's Tuner with OptunaSearch (TPE) and ASHA on one objective.

Three roles are kept apart: the trainable (trainable.py) trains and reports,
Optuna decides what to try (searcher.py), ASHA decides what to stop, and this
module wires them together and starts or resumes the experiment; outcome.py
classifies the trials and exports the best model.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import yaml

from tune_dialsum.cluster import check_resources, check_shared_paths, start_ray
from tune_dialsum.errors import UsageError
from tune_dialsum.export import TUNING_FILE
from tune_dialsum.models import TINY_PREFIX, check_model_available, resolve_model_path
from tune_dialsum.outcome import BEST_MODEL_DIR, SearchOutcome, format_summary, summarize
from tune_dialsum.searcher import make_sampler, pruned_aware_optuna_search_class
from tune_dialsum.space import SearchSpace, parse_space
from tune_dialsum.storage import OPTUNA_DB, SPACE_SNAPSHOT, ExperimentStore, download, is_uri
from tune_dialsum.trainable import NODE_LOCAL, TOKENIZED_CACHE, ExperimentSettings, train_dialsum

logger = logging.getLogger(__name__)


def experiment_settings(space: SearchSpace, store: ExperimentStore | None = None) -> ExperimentSettings:
    """What every trial shares; tokenized data is cached in the experiment, or per node where that is a URI."""
    data = space.data
    cache_dir = None
    if store is not None:
        cache_dir = NODE_LOCAL if store.remote else str(store.local / TOKENIZED_CACHE)
    return ExperimentSettings(
        data_path=str(Path(data["path"]).expanduser().resolve()),
        dialogue_column=data["dialogue_column"],
        summary_column=data["summary_column"],
        id_column=data["id_column"],
        validation_split=data["validation_split"],
        max_train_samples=data["max_train_samples"],
        max_eval_samples=data["max_eval_samples"],
        metric=space.metric,
        mode=space.mode,
        budget_unit=space.scheduler["budget_unit"],
        max_budget=space.scheduler["max_budget"],
        eval_interval=space.scheduler["eval_interval"],
        seed=space.seed,
        trust_remote_code=space.trust_remote_code,
        cache_dir=cache_dir,
    )


def preflight(space: SearchSpace, settings: ExperimentSettings) -> None:
    """Everything that can fail before a trial starts: the data, every model."""
    from tune_dialsum.data import DialogueDataLoader

    DialogueDataLoader(
        settings.data_path, settings.dialogue_column, settings.summary_column, settings.id_column
    ).load_splits()
    for model in space.models:
        check_model_available(model)
        if model.startswith(TINY_PREFIX):
            resolve_model_path(model)  # build it once here rather than in every trial at once


def _trial_name(trial) -> str:
    return f"trial_{trial.trial_id}"


def _trainable(space: SearchSpace, settings: ExperimentSettings):
    from ray import tune

    return tune.with_resources(
        tune.with_parameters(train_dialsum, settings=settings),
        {"cpu": space.resources["cpus_per_trial"], "gpu": space.resources["gpus_per_trial"]},
    )


def _build_tuner(space: SearchSpace, settings: ExperimentSettings, store: ExperimentStore):
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    searcher = pruned_aware_optuna_search_class()(
        space=space.define_by_run,
        metric=space.metric,
        mode=space.mode,
        sampler=make_sampler(space),
        # SQLite on the driver (object stores cannot hold a database); pushed to the store after the run
        storage=optuna.storages.RDBStorage(f"sqlite:///{store.local / OPTUNA_DB}"),
        study_name=space.name,
        time_attr=settings.time_attr,
        full_budget=settings.max_budget,
    )
    if space.scheduler["type"] == "asha":
        scheduler = ASHAScheduler(
            time_attr=settings.time_attr,
            metric=space.metric,
            mode=space.mode,
            max_t=settings.max_budget,
            grace_period=space.scheduler["grace_period"],
            reduction_factor=space.scheduler["reduction_factor"],
        )
    else:
        scheduler = FIFOScheduler()
    reporter = tune.CLIReporter(
        metric_columns={settings.time_attr: settings.time_attr, space.metric: space.metric},
        parameter_columns=space.searched_settings[:6],
        metric=space.metric,
        mode=space.mode,
        max_report_frequency=20,
        sort_by_metric=True,
    )
    return tune.Tuner(
        _trainable(space, settings),
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=space.trials["num_samples"],
            max_concurrent_trials=space.trials["max_concurrent"],
            time_budget_s=space.trials["time_budget_s"],
            trial_name_creator=_trial_name,
            trial_dirname_creator=_trial_name,
            # A worker that already imported torch and transformers and read the data runs the next trial.
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=space.name,
            storage_path=store.storage_path,
            progress_reporter=reporter,
            verbose=1,
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=space.keep_checkpoints,
                checkpoint_score_attribute=space.metric,
                checkpoint_score_order=space.mode,
            ),
            failure_config=tune.FailureConfig(max_failures=1),
        ),
    )


def run_search(space: SearchSpace, resume: bool = False, address: str | None = None) -> SearchOutcome:
    """Run (or resume) the experiment ``space`` describes, export its best model, return a summary."""
    from ray import tune

    store = ExperimentStore.of(space.storage_path, space.name)
    if resume:
        store.pull(checkpoint_files=())
        snapshot = store.local / SPACE_SNAPSHOT
        if not snapshot.is_file():
            raise UsageError(f"--resume: nothing to resume at {store.location}; run without --resume to start it")
        space = parse_space(yaml.safe_load(snapshot.read_text()), source=str(snapshot), default_name=space.name)
        space.storage_path = store.storage_path
    elif store.exists():
        raise UsageError(
            f"experiment {space.name!r} already exists at {store.location}; pass --resume to continue it "
            "or --name to start a new one"
        )
    settings = experiment_settings(space, store)
    clock = time.perf_counter()
    store.check_writable()
    preflight(space, settings)
    logger.info("preflight took %.1fs", time.perf_counter() - clock)
    started_ray = start_ray(address)
    logger.info("ray ready after %.1fs", time.perf_counter() - clock)
    try:
        check_resources(space)
        store.local.mkdir(parents=True, exist_ok=True)
        check_shared_paths({"storage_path": store.location, "data.path": settings.data_path})
        if not resume:
            (store.local / SPACE_SNAPSHOT).write_text(yaml.safe_dump({**space.raw, "name": space.name}))
            store.push(store.local / SPACE_SNAPSHOT)
        os.environ["RAY_AIR_NEW_OUTPUT"] = "0"  # the classic table shows every trial's state and score
        if resume and tune.Tuner.can_restore(store.location):
            tuner = tune.Tuner.restore(
                store.location, trainable=_trainable(space, settings), resume_unfinished=True, resume_errored=True
            )
        else:
            tuner = _build_tuner(space, settings, store)
        results = tuner.fit()
        store.push(store.local / OPTUNA_DB)
        logger.info("trials done after %.1fs", time.perf_counter() - clock)
        outcome = summarize(results, space, settings, store)
        logger.info("summary and export done after %.1fs", time.perf_counter() - clock)
        if outcome.best_model_dir is not None and settings.max_eval_samples and not outcome.unfinished:
            outcome.full_validation = rescore_on_full_validation(
                store, outcome.best_model_dir, settings, space.resources
            )
            logger.info("full-validation score done after %.1fs", time.perf_counter() - clock)
    finally:
        if started_ray:
            import ray

            ray.shutdown()
    return outcome


def _score_model(model_location: str, settings: ExperimentSettings) -> dict:
    """ROUGE of an exported model on the whole validation split, decoded as its generation config says."""
    from tune_dialsum.metrics import compute_rouge
    from tune_dialsum.summarize import DialogueSummarizer
    from tune_dialsum.trainable import training_frames

    full = dataclasses.replace(settings, max_eval_samples=None)
    _, validation = training_frames(full)
    with tempfile.TemporaryDirectory() as scratch:
        model_dir = download(model_location, Path(scratch)) if is_uri(model_location) else model_location
        summarizer = DialogueSummarizer(model_dir)
        scores = compute_rouge(summarizer.summarize(list(validation["dialogue"])), list(validation["summary"]))
    return {"examples": len(validation), "num_beams": summarizer.model.generation_config.num_beams, **scores}


def rescore_on_full_validation(store: ExperimentStore, model_dir: Path, settings: ExperimentSettings, resources: dict):
    """Score the exported model on all validation examples, where ASHA only needed a subset to rank trials.

    Runs as a Ray task with a trial's resources, so it uses a GPU where trials did (and reads the
    model from the store, which every node reaches); the result goes into the model's
    tuning.json and the summary.
    """
    import ray

    task = ray.remote(_score_model).options(num_cpus=resources["cpus_per_trial"], num_gpus=resources["gpus_per_trial"])
    scores = ray.get(task.remote(store.where(model_dir), settings))
    tuning_file = model_dir / TUNING_FILE
    tuning = json.loads(tuning_file.read_text())
    tuning["full_validation"] = scores
    tuning_file.write_text(json.dumps(tuning, indent=2, default=str))
    store.push(tuning_file)
    return scores


__all__ = ["BEST_MODEL_DIR", "SearchOutcome", "experiment_settings", "format_summary", "run_search"]
