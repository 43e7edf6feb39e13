"""The search: Ray Tune's Tuner with OptunaSearch (TPE) and ASHA on one objective.

Three roles are kept apart: the trainable (trainable.py) trains and reports,
Optuna decides what to try, ASHA decides what to stop, and this module wires
them together, starts or resumes the experiment, and exports the best model.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tune_dialsum.errors import SearchError, SpaceError, UsageError
from tune_dialsum.export import TUNING_FILE, best_checkpoint, export_checkpoint, fidelity, find_checkpoints
from tune_dialsum.models import TINY_PREFIX, check_model_available, resolve_model_path
from tune_dialsum.space import SearchSpace, parse_space
from tune_dialsum.trainable import ExperimentSettings, train_dialsum

logger = logging.getLogger(__name__)

SPACE_SNAPSHOT = "space.yaml"
OPTUNA_DB = "optuna.db"
BEST_MODEL_DIR = "best_model"
TOKENIZED_CACHE = "tokenized"


def _optuna_searcher_class():
    from optuna.trial import TrialState
    from ray.tune.search.optuna import OptunaSearch

    class PrunedAwareOptunaSearch(OptunaSearch):
        """OptunaSearch that tells Optuna the truth about trials the scheduler stopped.

        Ray's OptunaSearch marks a trial ASHA stopped as COMPLETE with its last,
        low-fidelity score, and TPE then learns from it as if it were a full
        run. Here such a trial is PRUNED, with its intermediate values keyed by
        training step, which is how Optuna's own pruners record it.
        """

        def __init__(self, *args, time_attr: str, full_budget: int, **kwargs):
            super().__init__(*args, **kwargs)
            self._time_attr = time_attr
            self._full_budget = full_budget

        def restore(self, checkpoint_path: str) -> None:
            """Restore, then close Optuna trials asked for after the last saved state.

            A driver killed between asking Optuna for a trial and saving the
            experiment leaves that trial RUNNING in the study forever; Tune never
            heard of it, so it is marked FAIL (and says why) rather than left open.
            """
            super().restore(checkpoint_path)
            known = {trial.number for trial in self._ot_trials.values()}
            storage = self._ot_study._storage
            for trial in self._ot_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                if trial.number not in known:
                    storage.set_trial_user_attr(trial._trial_id, "abandoned", "asked before the driver died; never ran")
                    self._ot_study.tell(trial.number, state=TrialState.FAIL)

        def suggest(self, trial_id: str):
            config = super().suggest(trial_id)
            if isinstance(config, dict):  # drop the family-qualified names (learning_rate@t5)
                config = {key: value for key, value in config.items() if "@" not in key}
            return config

        def on_trial_result(self, trial_id: str, result: dict) -> None:
            if trial_id in self._completed_trials or self.metric not in result:
                return
            # Keyed by training step, not by Tune's report count, so curves line up across trials.
            self._ot_trials[trial_id].report(result[self.metric], int(result[self._time_attr]))

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            if trial_id in self._completed_trials:
                return
            if result and not error and self.metric in result:
                # Tune hands the last result to on_trial_complete only; keep it as an intermediate value too.
                self.on_trial_result(trial_id, result)
                if result.get(self._time_attr, self._full_budget) < self._full_budget:
                    self._ot_study.tell(self._ot_trials[trial_id], state=TrialState.PRUNED)
                    self._completed_trials.add(trial_id)
                    return
            super().on_trial_complete(trial_id, result, error)

    return PrunedAwareOptunaSearch


@dataclass
class TrialSummary:
    trial_id: str
    status: str  # TERMINATED, STOPPED (by the scheduler) or ERROR
    budget_used: float
    best_score: float | None
    config: dict
    error: str | None = None


@dataclass
class SearchOutcome:
    experiment_dir: Path
    metric: str
    mode: str
    max_budget: int
    budget_unit: str
    trials: list[TrialSummary] = field(default_factory=list)
    best: object | None = None  # export.CheckpointRecord
    best_model_dir: Path | None = None
    full_validation: dict | None = None  # the best model re-scored on every validation example
    unfinished: int = 0  # trials left pending or running: the search was interrupted or ran out of time
    disk_bytes: int = 0

    @property
    def stopped(self) -> list[TrialSummary]:
        return [t for t in self.trials if t.status == "STOPPED"]

    @property
    def failed(self) -> list[TrialSummary]:
        return [t for t in self.trials if t.status == "ERROR"]

    @property
    def budget_saved(self) -> float:
        return sum(self.max_budget - t.budget_used for t in self.stopped)


def experiment_settings(space: SearchSpace, experiment_dir: Path | None = None) -> ExperimentSettings:
    data = space.data
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


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail in seconds when nothing listens at HOST:PORT (Ray itself keeps retrying for minutes)."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if address == "auto" or not sep or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as err:
        raise UsageError(
            f"--address {address}: cannot connect to a Ray cluster ({err.strerror or err}); start one with "
            "`ray start --head`, or leave out --address to run on this machine"
        ) from None


def _start_ray(address: str | None) -> bool:
    """Connect to ``address`` or start a local Ray on loopback; True if this call started it."""
    # On Linux, a local Ray binds the machine's address unless this is 0: keep it on 127.0.0.1.
    # Ray reads it once, when it is first imported, so it is set before that.
    if not address or address.removeprefix("ray://").startswith(("127.0.0.1:", "localhost:")):
        # (a driver joining a loopback cluster needs it too, or it looks for the cluster at this
        # machine's network address)
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    if ray.is_initialized():
        return False
    if address:
        _check_reachable(address)
        try:
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
        except (ConnectionError, RuntimeError) as err:
            raise UsageError(
                f"--address {address}: cannot connect to a Ray cluster ({_one_line(err)}); start one with "
                "`ray start --head`, and where it uses token authentication put its token in ~/.ray/auth_token "
                "or RAY_AUTH_TOKEN"
            ) from None
    else:
        ray.init(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    return True


def _check_shared_paths(paths: dict[str, Path]) -> None:
    """On a multi-node cluster, every node must see the storage and data paths; fail before any trial if not.

    A marker written here is looked for by a task pinned to each node: a node-local path (the
    default ray_results on the head, say) is missing on the others.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [node for node in ray.nodes() if node["Alive"]]
    if len(nodes) < 2:
        return
    markers = {}
    for what, path in paths.items():
        markers[what] = path  # a file is its own marker
        if path.is_dir():
            markers[what] = path / f".tune_dialsum-visible-{os.getpid()}"
            markers[what].write_text("")

    @ray.remote(num_cpus=0)
    def visible(files: list[str]) -> list[bool]:
        return [os.path.exists(f) for f in files]

    try:
        seen = ray.get(
            [
                visible.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)).remote(
                    [str(m) for m in markers.values()]
                )
                for node in nodes
            ]
        )
    finally:
        for marker in markers.values():
            if marker.name.startswith(".tune_dialsum-visible-"):
                marker.unlink(missing_ok=True)
    for node, flags in zip(nodes, seen, strict=True):
        for (what, path), ok in zip(paths.items(), flags, strict=True):
            if not ok:
                raise UsageError(
                    f"{what} {path} is not visible on node {node['NodeManagerAddress']} ({node['NodeID'][:8]}): "
                    f"a multi-node search needs a path every node shares (e.g. an NFS mount); pass one with "
                    f"--storage-path (or data.path in the space)"
                )


def _check_resources(space: SearchSpace) -> None:
    import ray

    available = ray.cluster_resources()
    for resource, wanted in (("CPU", space.resources["cpus_per_trial"]), ("GPU", space.resources["gpus_per_trial"])):
        if wanted and available.get(resource, 0) < wanted:
            raise SpaceError(
                f"{space.source}: resources.{resource.lower()}s_per_trial: a trial asks for {wanted:g} {resource} "
                f"but the cluster has {available.get(resource, 0):g}; lower it (or --{resource.lower()}s-per-trial)"
            )


def _trial_name(trial) -> str:
    return f"trial_{trial.trial_id}"


def _trainable(space: SearchSpace, settings: ExperimentSettings):
    from ray import tune

    return tune.with_resources(
        tune.with_parameters(train_dialsum, settings=settings),
        {"cpu": space.resources["cpus_per_trial"], "gpu": space.resources["gpus_per_trial"]},
    )


def _sampler(space: SearchSpace):
    import optuna

    if space.trials["sampler"] == "random":
        return optuna.samplers.RandomSampler(seed=space.seed)
    # TPE's default of 10 random start-up trials would leave a search of 8 trials entirely random;
    # constant_liar keeps trials that run at the same time from being sampled on top of each other.
    startup = min(10, max(3, space.trials["num_samples"] // 4))
    return optuna.samplers.TPESampler(seed=space.seed, n_startup_trials=startup, constant_liar=True)


def _build_tuner(space: SearchSpace, settings: ExperimentSettings, experiment_dir: Path):
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    searcher = _optuna_searcher_class()(
        space=space.define_by_run,
        metric=space.metric,
        mode=space.mode,
        sampler=_sampler(space),
        storage=optuna.storages.RDBStorage(f"sqlite:///{experiment_dir / OPTUNA_DB}"),
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
            storage_path=str(experiment_dir.parent),
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

    if "://" in space.storage_path:
        raise UsageError(
            f"storage_path {space.storage_path}: cloud URIs are not supported yet (export and analysis read "
            "checkpoints from a file system); mount the bucket (s3fs, gcsfuse) on every node and pass its path"
        )
    experiment_dir = Path(space.storage_path).expanduser().resolve() / space.name
    if resume:
        snapshot = experiment_dir / SPACE_SNAPSHOT
        if not snapshot.is_file():
            raise UsageError(f"--resume: nothing to resume at {experiment_dir}; run without --resume to start it")
        space = parse_space(yaml.safe_load(snapshot.read_text()), source=str(snapshot), default_name=space.name)
        space.storage_path = str(experiment_dir.parent)
    elif experiment_dir.exists() and any(experiment_dir.iterdir()):
        raise UsageError(
            f"experiment {space.name!r} already exists at {experiment_dir}; pass --resume to continue it "
            "or --name to start a new one"
        )
    settings = experiment_settings(space, experiment_dir)
    clock = time.perf_counter()
    preflight(space, settings)
    logger.info("preflight took %.1fs", time.perf_counter() - clock)
    started_ray = _start_ray(address)
    logger.info("ray ready after %.1fs", time.perf_counter() - clock)
    try:
        _check_resources(space)
        experiment_dir.mkdir(parents=True, exist_ok=True)
        _check_shared_paths({"storage_path": experiment_dir.parent, "data.path": Path(settings.data_path)})
        if not resume:
            (experiment_dir / SPACE_SNAPSHOT).write_text(yaml.safe_dump({**space.raw, "name": space.name}))
        os.environ["RAY_AIR_NEW_OUTPUT"] = "0"  # the classic table shows every trial's state and score
        if resume and tune.Tuner.can_restore(str(experiment_dir)):
            tuner = tune.Tuner.restore(
                str(experiment_dir), trainable=_trainable(space, settings), resume_unfinished=True, resume_errored=True
            )
        else:
            tuner = _build_tuner(space, settings, experiment_dir)
        results = tuner.fit()
        logger.info("trials done after %.1fs", time.perf_counter() - clock)
        outcome = summarize(results, space, settings, experiment_dir)
        logger.info("summary and export done after %.1fs", time.perf_counter() - clock)
        if outcome.best_model_dir is not None and settings.max_eval_samples and not outcome.unfinished:
            outcome.full_validation = rescore_on_full_validation(outcome.best_model_dir, settings, space.resources)
            logger.info("full-validation score done after %.1fs", time.perf_counter() - clock)
    finally:
        if started_ray:
            import ray

            ray.shutdown()
    return outcome


def _score_model(model_dir: str, settings: ExperimentSettings) -> dict:
    """ROUGE of an exported model on the whole validation split, decoded as its generation config says."""
    from tune_dialsum.metrics import compute_rouge
    from tune_dialsum.summarize import DialogueSummarizer
    from tune_dialsum.trainable import training_frames

    full = dataclasses.replace(settings, max_eval_samples=None)
    _, validation = training_frames(full)
    summarizer = DialogueSummarizer(model_dir)
    scores = compute_rouge(summarizer.summarize(list(validation["dialogue"])), list(validation["summary"]))
    return {"examples": len(validation), "num_beams": summarizer.model.generation_config.num_beams, **scores}


def rescore_on_full_validation(model_dir: Path, settings: ExperimentSettings, resources: dict) -> dict:
    """Score the exported model on all validation examples, where ASHA only needed a subset to rank trials.

    Runs as a Ray task with a trial's resources, so it uses a GPU where trials did; the result
    goes into the model's tuning.json and the summary.
    """
    import ray

    task = ray.remote(_score_model).options(num_cpus=resources["cpus_per_trial"], num_gpus=resources["gpus_per_trial"])
    scores = ray.get(task.remote(str(model_dir), settings))
    tuning_file = model_dir / TUNING_FILE
    tuning = json.loads(tuning_file.read_text())
    tuning["full_validation"] = scores
    tuning_file.write_text(json.dumps(tuning, indent=2, default=str))
    return scores


def summarize(results, space: SearchSpace, settings: ExperimentSettings, experiment_dir: Path) -> SearchOutcome:
    """Classify every trial, export the best checkpoint over all trials and reports, trim stopped trials."""
    outcome = SearchOutcome(experiment_dir, space.metric, space.mode, settings.max_budget, settings.budget_unit)
    for result in results:
        metrics = result.metrics or {}
        used = float(metrics.get(settings.time_attr, 0) or 0)
        if result.error is not None:
            status, error = "ERROR", _one_line(result.error)
        elif not metrics.get("done"):
            status, error = "UNFINISHED", None
        else:
            status, error = ("STOPPED" if used < settings.max_budget else "TERMINATED"), None
        scores = [
            m[space.metric]
            for m in (result.metrics_dataframe.to_dict("records") if result.metrics_dataframe is not None else [])
            if space.metric in m and not math.isnan(m[space.metric])
        ]
        best = (max if space.mode == "max" else min)(scores) if scores else None
        outcome.trials.append(TrialSummary(metrics.get("trial_id", "?"), status, used, best, result.config, error))
    set_aside_orphans(experiment_dir, {t.trial_id for t in outcome.trials})
    outcome.unfinished = sum(t.status == "UNFINISHED" for t in outcome.trials)
    outcome.unfinished += max(0, space.trials["num_samples"] - len(outcome.trials))
    records = find_checkpoints(experiment_dir)
    if records:
        outcome.best = best_checkpoint(records, space.metric, space.mode)
        outcome.best_model_dir = export_checkpoint(
            outcome.best, experiment_dir / BEST_MODEL_DIR, space.metric, space.mode, force=True
        )
        trim_stopped_trials(records, {t.trial_id for t in outcome.stopped}, space.metric, space.mode)
    elif not outcome.unfinished:
        reasons = "; ".join(f"{t.trial_id}: {t.error}" for t in outcome.failed[:3])
        raise SearchError(
            f"no trial of {space.name!r} finished an evaluation, so nothing was exported"
            f"{' (' + reasons + ')' if reasons else ''}; logs are under {experiment_dir}"
        )
    outcome.disk_bytes = sum(f.stat().st_size for f in experiment_dir.rglob("*") if f.is_file())
    return outcome


def set_aside_orphans(experiment_dir: Path, known_ids: set[str]) -> None:
    """Move trial directories the experiment does not know of into ``orphaned/``.

    A driver killed just after a trial started can leave that trial's directory (even a
    checkpoint) without any record in the saved experiment state; resuming runs a new trial in
    its place. Set aside, the orphan can neither be exported as "best" nor counted twice.
    """
    for trial_dir in experiment_dir.glob("trial_*"):
        if trial_dir.name.removeprefix("trial_") not in known_ids:
            target = experiment_dir / "orphaned" / trial_dir.name
            target.parent.mkdir(exist_ok=True)
            trial_dir.rename(target)
            logger.warning("set aside %s: the experiment has no record of it (its driver died)", trial_dir.name)


def _one_line(error: BaseException) -> str:
    """The trial's own error: the last line of its message, not Ray's wrapper around it."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def trim_stopped_trials(records, stopped_ids: set[str], metric: str, mode: str) -> None:
    """Keep only the best checkpoint of each trial the scheduler stopped, without its optimizer state.

    A stopped trial never resumes, so its optimizer state is dead weight; its best checkpoint
    stays so that ``export --trial`` still works.
    """
    by_trial: dict[str, list] = {}
    for record in records:
        if record.trial_id in stopped_ids:
            by_trial.setdefault(record.trial_id, []).append(record)
    for trial_id, trial_records in by_trial.items():
        keep = best_checkpoint(trial_records, metric, mode, trial_id=trial_id)
        for record in trial_records:
            if record is not keep:
                shutil.rmtree(record.path, ignore_errors=True)
        for name in ("optimizer.pt", "scheduler.pt", "scaler.pt"):
            (keep.path / name).unlink(missing_ok=True)


def format_summary(outcome: SearchOutcome) -> str:
    unit = outcome.budget_unit
    lines = [
        "",
        f"Search finished: {len(outcome.trials)} trials, {len(outcome.stopped)} stopped early by the "
        f"scheduler, {len(outcome.failed)} failed, {outcome.unfinished} unfinished.",
    ]
    best = outcome.best
    if best is not None:
        lines += [
            f"Best trial: {best.trial_id} at {unit[:-1]} {best.step}: "
            + ", ".join(f"{k}={v:.4f}" for k, v in best.scores.items() if k.startswith("rouge")),
            "Settings: " + ", ".join(f"{k}={v}" for k, v in sorted(best.snapshot.get("config", {}).items())),
            f"Scores are on {fidelity(best.snapshot)}.",
        ]
        if outcome.full_validation:
            full = outcome.full_validation
            lines.append(
                f"Best model on all {full['examples']} validation examples ({full['num_beams']} beam(s)): "
                + ", ".join(f"{k}={full[k]:.4f}" for k in ("rouge1", "rouge2", "rougeL", "rougeLsum"))
            )
    if outcome.stopped:
        full = outcome.max_budget * len(outcome.trials)
        lines.append(
            f"Early stopping saved {outcome.budget_saved:g} of {full:g} training {unit} "
            f"({outcome.budget_saved / full:.0%})."
        )
    for trial in outcome.failed:
        lines.append(f"Failed trial {trial.trial_id}: {trial.error}")
    if outcome.best_model_dir:
        lines.append(f"Best model: {outcome.best_model_dir}")
    lines += [f"Experiment: {outcome.experiment_dir} ({outcome.disk_bytes / 2**20:.1f} MiB on disk)"]
    return "\n".join(lines)
