"""What a search produced: every trial classified, the best exported, stopped trials trimmed, the summary."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

from tune_dialsum.errors import SearchError, one_line
from tune_dialsum.export import CHECKPOINT_METADATA, best_checkpoint, export_checkpoint, fidelity, find_checkpoints
from tune_dialsum.space import SearchSpace
from tune_dialsum.storage import ExperimentStore
from tune_dialsum.trainable import ExperimentSettings

logger = logging.getLogger(__name__)

BEST_MODEL_DIR = "best_model"


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
    location: str  # the experiment: a directory, or a URI
    experiment_dir: Path  # where it is read on this machine: the directory, or the URI's mirror
    metric: str
    mode: str
    max_budget: int
    budget_unit: str
    trials: list[TrialSummary] = field(default_factory=list)
    best: object | None = None  # export.CheckpointRecord
    best_model_dir: Path | None = None
    best_model_location: str | None = None  # best_model_dir in the store (the same path for a directory)
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


def summarize(results, space: SearchSpace, settings: ExperimentSettings, store: ExperimentStore) -> SearchOutcome:
    """Classify every trial, export the best checkpoint over all trials and reports, trim stopped trials."""
    experiment_dir = store.pull(CHECKPOINT_METADATA)
    outcome = SearchOutcome(
        store.location, experiment_dir, space.metric, space.mode, settings.max_budget, settings.budget_unit
    )
    for result in results:
        metrics = result.metrics or {}
        used = float(metrics.get(settings.time_attr, 0) or 0)
        if result.error is not None:
            status, error = "ERROR", one_line(result.error)
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
    set_aside_orphans(store, {t.trial_id for t in outcome.trials})
    outcome.unfinished = sum(t.status == "UNFINISHED" for t in outcome.trials)
    outcome.unfinished += max(0, space.trials["num_samples"] - len(outcome.trials))
    records = find_checkpoints(experiment_dir)
    if records:
        outcome.best = best_checkpoint(records, space.metric, space.mode)
        store.fetch(outcome.best.path)  # the mirror of a URI holds no weights until now
        outcome.best_model_dir = export_checkpoint(
            outcome.best,
            experiment_dir / BEST_MODEL_DIR,
            space.metric,
            space.mode,
            force=True,
            source=store.where(outcome.best.path),
        )
        store.push(outcome.best_model_dir)
        outcome.best_model_location = store.where(outcome.best_model_dir)
        trim_stopped_trials(store, records, {t.trial_id for t in outcome.stopped}, space.metric, space.mode)
    elif not outcome.unfinished:
        reasons = "; ".join(f"{t.trial_id}: {t.error}" for t in outcome.failed[:3])
        raise SearchError(
            f"no trial of {space.name!r} finished an evaluation, so nothing was exported"
            f"{' (' + reasons + ')' if reasons else ''}; logs are under {store.location}"
        )
    outcome.disk_bytes = store.disk_bytes()
    return outcome


def set_aside_orphans(store: ExperimentStore, known_ids: set[str]) -> None:
    """Move trial directories the experiment does not know of into ``orphaned/``.

    A driver killed just after a trial started can leave that trial's directory (even a
    checkpoint) without any record in the saved experiment state; resuming runs a new trial in
    its place. Set aside, the orphan can neither be exported as "best" nor counted twice.
    """
    for trial_dir in store.local.glob("trial_*"):
        if trial_dir.name.removeprefix("trial_") not in known_ids:
            store.move(trial_dir, store.local / "orphaned" / trial_dir.name)
            logger.warning("set aside %s: the experiment has no record of it (its driver died)", trial_dir.name)


def trim_stopped_trials(store: ExperimentStore, records, stopped_ids: set[str], metric: str, mode: str) -> None:
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
                store.delete(record.path)
        for name in ("optimizer.pt", "scheduler.pt", "scaler.pt"):
            store.delete(keep.path / name)


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
        line = f"Best model: {outcome.best_model_location}"
        if outcome.best_model_location != str(outcome.best_model_dir):  # kept at a URI
            line += f" (a copy on this machine: {outcome.best_model_dir})"
        lines.append(line)
    lines += [f"Experiment: {outcome.location} ({outcome.disk_bytes / 2**20:.1f} MiB stored)"]
    return "\n".join(lines)
