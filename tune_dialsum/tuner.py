"""Ray Tune's Tuner for a space: the trainable with its resources, OptunaSearch (TPE) and ASHA.

Three roles are kept apart: the trainable (trainable.py) trains and reports, Optuna decides what
to try (optuna_search.py), ASHA decides what to stop (rungs.py); this module wires them into one
Tuner, and search.py runs it.
"""

from __future__ import annotations

from tune_dialsum.contract import OPTUNA_DB, TRIAL_DIR_PREFIX
from tune_dialsum.data_parallel import DRIVER_RESOURCES
from tune_dialsum.experiment_context import ExperimentContext
from tune_dialsum.optuna_search import make_sampler, pruned_aware_optuna_search
from tune_dialsum.rungs import scheduler_target
from tune_dialsum.space import SearchSpace
from tune_dialsum.storage import ExperimentStore
from tune_dialsum.trainable import train_dialsum


def _trial_name(trial) -> str:
    return f"{TRIAL_DIR_PREFIX}{trial.trial_id}"


def trainable(space: SearchSpace, context: ExperimentContext):
    from ray import tune

    if space.resources.data_parallel:  # the trial only drives its workers, which Ray Train places itself
        resources = DRIVER_RESOURCES
    else:
        resources = {"cpu": space.resources.cpus_per_trial, "gpu": space.resources.gpus_per_trial}
    return tune.with_resources(tune.with_parameters(train_dialsum, context=context), resources)


def build_searcher(space: SearchSpace, context: ExperimentContext, storage=None, seed_offset: int = 0):
    """Optuna (TPE or random) behind Ray's OptunaSearch, ranking trials on the best score so far.

    ``storage``: the Optuna storage (None: in memory); ``seed_offset``: the trials already in the
    study when a search continues, so that it draws anew. The replay benchmark builds the same.
    """
    return pruned_aware_optuna_search(
        space=space.define_by_run,
        metric=context.ranked_by,  # the best so far: a trial is exported at its best checkpoint
        mode=space.mode,
        sampler=make_sampler(space, seed_offset=seed_offset),
        storage=storage,
        study_name=space.name,
        time_attr=context.time_attr,
        full_budget=context.scheduler.max_budget,
    )


def build_scheduler(space: SearchSpace, context: ExperimentContext):
    """ASHA in the space's budget unit on the signal ``scheduler.rung_metric`` names (rungs.py); or FIFO
    (every trial to the full budget)."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if space.scheduler.type != "asha":
        return FIFOScheduler()
    metric, mode = scheduler_target(space.scheduler, context.objective, context.ranked_by)
    return ASHAScheduler(
        time_attr=context.time_attr,
        metric=metric,
        mode=mode,
        max_t=context.scheduler.max_budget,
        grace_period=space.scheduler.grace_period,
        reduction_factor=space.scheduler.reduction_factor,
    )


def build_tuner(
    space: SearchSpace,
    context: ExperimentContext,
    store: ExperimentStore,
    num_samples: int,
    continuing: bool,
    callbacks: list,
    at_once: int,
):
    """The Tuner of one run of ``num_samples`` trials; ``at_once``: how many the cluster holds at once
    (cluster.check_resources), which caps a data-parallel search."""
    import optuna
    from ray import tune

    # SQLite on the driver (object stores cannot hold a database); pushed to the store after the run
    study = optuna.storages.RDBStorage(f"sqlite:///{store.local / OPTUNA_DB}")
    # a continued search draws anew: the same seed would repeat the first run's first configurations
    earlier = len(optuna.load_study(study_name=space.name, storage=study).trials) if continuing else 0
    searcher = build_searcher(space, context, storage=study, seed_offset=earlier)
    scheduler = build_scheduler(space, context)
    reporter = tune.CLIReporter(
        metric_columns={
            key: key
            for key in (
                context.time_attr,
                space.metric,
                context.ranked_by,
                scheduler_target(space.scheduler, context.objective, context.ranked_by)[0],
            )
        },
        parameter_columns=space.searched_settings[:6],
        metric=context.ranked_by,
        mode=space.mode,
        max_report_frequency=20,
        sort_by_metric=True,
    )
    return tune.Tuner(
        trainable(space, context),
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=num_samples,
            # Tune does not see a data-parallel trial's workers: it would start trials their workers cannot join
            max_concurrent_trials=at_once if space.resources.data_parallel else space.trials.max_concurrent,
            time_budget_s=space.trials.time_budget_s,
            trial_name_creator=_trial_name,
            trial_dirname_creator=_trial_name,
            # A worker that already imported torch and transformers and read the data runs the next trial;
            # not a data-parallel driver: Tune would keep a stopped one's training running to reuse it.
            reuse_actors=not space.resources.data_parallel,
        ),
        run_config=tune.RunConfig(
            name=store.name,  # the directory being run: a copied or renamed experiment keeps its space's old name
            storage_path=store.storage_path,
            progress_reporter=reporter,
            callbacks=callbacks,
            verbose=1,
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=space.checkpoints.keep,
                checkpoint_score_attribute=space.metric,
                checkpoint_score_order=space.mode,
            ),
            failure_config=tune.FailureConfig(max_failures=1),
        ),
    )
