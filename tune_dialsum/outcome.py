"""What a search produced: every trial classified (finish.py then chooses and exports), and the summary."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

from tune_dialsum.checkpoints import (
    CHECKPOINT_METADATA,
)
from tune_dialsum.contract import (
    CHOSEN_WITHIN_NOISE,
    ERROR,
    ERROR_FILE,
    PARAMS_FILE,
    PENDING,
    ROUGE_KEYS,
    RUNNING,
    STOPPED,
    TRIAL_DIR_PREFIX,
    UNFINISHED,
    best,
    score_key,
)
from tune_dialsum.errors import one_line
from tune_dialsum.experiment_context import ExperimentContext
from tune_dialsum.export import fidelity
from tune_dialsum.ray_compat import recorded_trial_ids
from tune_dialsum.space import SearchSpace
from tune_dialsum.storage import ExperimentStore

logger = logging.getLogger(__name__)


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
    best: object | None = None  # checkpoints.CheckpointRecord
    best_model_dir: Path | None = None
    best_model_location: str | None = None  # best_model_dir in the store (the same path for a directory)
    full_validation: dict | None = None  # the exported model on every validation example (used to choose it)
    test: dict | None = None  # the exported model on the test split (not used to choose it)
    test_training_decoding: dict | None = None  # the same, decoded as trials were scored (where decoding was tuned)
    decoding: object | None = None  # decoding.DecodingResult: the decoding stage, where the space has one
    candidates: list = field(default_factory=list)  # selection.Candidate: the checkpoints re-scored
    chosen_within_noise: bool = False  # the best re-scored beat another by less than their paired interval
    refit: object | None = None  # refit.Refit: the chosen settings trained anew (selection.refit)
    refit_error: str | None = None  # why the refit asked for did not happen
    unfinished: int = 0  # trials left pending or running: the search was interrupted or ran out of time
    at_once: int | None = None  # how many trials the cluster had room to run at once
    workers_per_trial: int = 1  # above 1: data-parallel trials
    rung_signal: str | None = None  # what ASHA's rungs ranked on, in words (None: FIFO)
    refit_of: Path | None = None  # the checkpoint whose settings the refit trained anew
    out_of_time: tuple | None = None  # (trials.time_budget_s, trials it stopped, trials it left unstarted)
    stopped_by_time: set[str] = field(default_factory=set)  # the trials trials.time_budget_s stopped
    stage_failures: dict[str, str] = field(default_factory=dict)  # stage after the trials -> why it failed
    kept_earlier_export: bool = False  # an unfinished continuation left a finished run's best_model as it was
    disk_bytes: int = 0  # the experiment
    scratch_bytes: int | None = None  # left in Ray's session directory on this machine (None: not known here)

    @property
    def stopped(self) -> list[TrialSummary]:
        return [t for t in self.trials if t.status == STOPPED]

    @property
    def failed(self) -> list[TrialSummary]:
        return [t for t in self.trials if t.status == ERROR]

    @property
    def budget_saved(self) -> float:
        return sum(self.max_budget - t.budget_used for t in self.stopped)


def classify(
    results, space: SearchSpace, context: ExperimentContext, store: ExperimentStore, out_of_time: bool = False
) -> SearchOutcome:
    """Every trial of the experiment, classified; trial directories it has no record of set aside.

    ``results`` are this run's; trials of earlier runs of the experiment (a search continued with
    more trials) are read from their directories. ``out_of_time``: ``trials.time_budget_s`` ended the
    run, so trials it stopped have ended (as if stopped early) and those it never started never will.
    """
    experiment_dir = store.pull(CHECKPOINT_METADATA)
    outcome = SearchOutcome(
        store.location,
        experiment_dir,
        space.metric,
        space.mode,
        context.scheduler.max_budget,
        context.scheduler.budget_unit,
        rung_signal=rung_signal(space),
    )
    for result in results:
        rows = result.metrics_dataframe.to_dict("records") if result.metrics_dataframe is not None else []
        error = one_line(result.error) if result.error is not None else None
        last = result.metrics or {}
        outcome.trials.append(_classify(last.get("trial_id", "?"), rows, last, result.config, error, space, context))
    ran_now = {t.trial_id for t in outcome.trials}
    recorded = recorded_trial_ids(experiment_dir)
    for trial_dir in sorted(experiment_dir.glob(f"{TRIAL_DIR_PREFIX}*")):
        trial_id = trial_dir.name.removeprefix(TRIAL_DIR_PREFIX)
        if trial_id not in ran_now and trial_id in recorded:
            outcome.trials.append(_classify_from_disk(trial_dir, trial_id, space, context))
    set_aside_orphans(store, {t.trial_id for t in outcome.trials} | recorded)
    not_started = max(0, space.trials.num_samples - len(outcome.trials))
    if out_of_time:
        outcome.out_of_time = (
            space.trials.time_budget_s,
            sum(t.status == UNFINISHED for t in outcome.trials),
            not_started,
        )
        for trial in outcome.trials:
            if trial.status == UNFINISHED:
                trial.status = STOPPED
                outcome.stopped_by_time.add(trial.trial_id)
        not_started = 0
    outcome.unfinished = sum(t.status == UNFINISHED for t in outcome.trials) + not_started
    return outcome


def _classify(trial_id: str, rows: list[dict], last: dict, config: dict, error: str | None, space, context):
    used = context.budget_used(last)
    status = context.state_of(last, error is not None)
    if status in (RUNNING, PENDING):  # the search is over: --resume continues it
        status = UNFINISHED
    if status != ERROR:
        error = None
    best_score = best((r[space.metric] for r in rows if space.metric in r), space.mode)
    return TrialSummary(trial_id, status, used, None if math.isnan(best_score) else best_score, config, error)


def _classify_from_disk(trial_dir: Path, trial_id: str, space, context) -> TrialSummary:
    from tune_dialsum.analysis import read_reports

    params = trial_dir / PARAMS_FILE
    config = json.loads(params.read_text()) if params.is_file() else {}
    error_file = trial_dir / ERROR_FILE
    error = one_line(RuntimeError(error_file.read_text())) if error_file.is_file() else None
    rows = read_reports(trial_dir)
    return _classify(trial_id, rows, rows[-1] if rows else {}, config, error, space, context)


def set_aside_orphans(store: ExperimentStore, known_ids: set[str]) -> None:
    """Move trial directories the experiment does not know of into ``orphaned/``.

    A driver killed just after a trial started can leave that trial's directory (even a
    checkpoint) without any record in the saved experiment state; resuming runs a new trial in
    its place. Set aside, the orphan can neither be exported as "best" nor counted twice.
    """
    for trial_dir in store.local.glob(f"{TRIAL_DIR_PREFIX}*"):
        if trial_dir.name.removeprefix(TRIAL_DIR_PREFIX) not in known_ids:
            store.move(trial_dir, store.local / "orphaned" / trial_dir.name)
            logger.warning("set aside %s: the experiment has no record of it (its driver died)", trial_dir.name)


def rung_signal(space: SearchSpace) -> str | None:
    """What ASHA's rungs compare, in words (rungs.py); None where no rung stops anything (FIFO)."""
    if space.scheduler.type != "asha":
        return None
    signal = space.scheduler.rung_metric
    loss, objective = "the lowest eval_loss so far", f"the best {space.metric} so far"
    if space.metric == "eval_loss" or signal == "eval_loss":
        words = loss
    elif signal == "objective":
        words = objective
    else:
        words = f"{loss} below the last rung, {objective} at it"
    rungs = ", ".join(f"{r:g}" for r in space.scheduler.rungs) or "none below max_budget"
    return f"Rungs at {space.scheduler.budget_unit} {rungs} ranked on {words} (scheduler.rung_metric: {signal})."


def _scores(scores: dict) -> str:
    """``key=mean [low, high]`` for each ROUGE score (the 95% bootstrap interval where it was measured)."""
    intervals = scores.get("intervals") or {}

    def one(key: str) -> str:
        low_high = intervals.get(key)
        return f"{key}={scores[key]:.4f}" + (f" [{low_high[0]:.4f}, {low_high[1]:.4f}]" if low_high else "")

    return ", ".join(one(k) for k in ROUGE_KEYS if k in scores)


def _refit_line(outcome: SearchOutcome) -> str:
    key, refit = score_key(outcome.metric), outcome.refit
    chosen = next(c for c in outcome.candidates if c.record.path == outcome.refit_of)
    versus = refit.versus_chosen
    which = "the refit" if refit.exported else "not the refit (it scored lower, or the decoding stage chose another)"
    return (
        f"Refit: the chosen settings trained anew to {outcome.max_budget:g} {outcome.budget_unit}: {key} "
        f"{refit.full[key]:.4f} on all of validation against the chosen checkpoint's {chosen.full[key]:.4f} "
        f"(difference {versus.mean:+.4f} [{versus.low:+.4f}, {versus.high:+.4f}]); exported: {which}."
    )


def _candidate(candidate, key: str, unit: str) -> str:
    """``trial@budget: score`` and, where not the leader, its paired difference from the leader."""
    text = f"{candidate.record.trial_id}@{candidate.record.budget(unit):g}: {candidate.full[key]:.4f}"
    if candidate.degenerate:
        return text + " (degenerate output: not ranked on ROUGE)"
    versus = candidate.versus_leader
    if versus is not None and (versus.low, versus.high) != (0.0, 0.0):
        text += f" (leader better by {versus.mean:+.4f} [{versus.low:+.4f}, {versus.high:+.4f}])"
    return text


def format_summary(outcome: SearchOutcome) -> str:
    unit = outcome.budget_unit
    workers = f", {outcome.workers_per_trial} data-parallel workers each" if outcome.workers_per_trial > 1 else ""
    at_once = f" ({outcome.at_once} at a time{workers})" if outcome.at_once else ""
    lines = [
        "",
        f"Search finished: {len(outcome.trials)} trials{at_once}, {len(outcome.stopped)} stopped early by the "
        f"scheduler, {len(outcome.failed)} failed, {outcome.unfinished} unfinished.",
    ]
    if outcome.out_of_time:
        budget, stopped, unstarted = outcome.out_of_time
        lines.append(
            f"Time budget reached (trials.time_budget_s: {budget:g} s): {stopped} running trials stopped at it, "
            f"{unstarted} never started; the choice is made among what the trials reached."
        )
    best = outcome.best
    if best is not None:
        where = f"{unit[:-1] if unit != 'samples' else 'training examples'} {best.budget(unit):g}"
        lines.append(f"Best trial: {best.trial_id} at {where}.")
        if outcome.test:
            lines.append(f"Test, {outcome.test['examples']} examples (not used to choose): {_scores(outcome.test)}")
            if outcome.test_training_decoding:
                lines.append(f"Test with the training decoding instead: {_scores(outcome.test_training_decoding)}")
        if outcome.full_validation:
            full, key = outcome.full_validation, score_key(outcome.metric)
            ranked = ", ".join(_candidate(c, key, unit) for c in outcome.candidates)
            lines += [
                f"Validation, all {full['examples']} examples (used to choose among the top {len(outcome.candidates)} "
                f"by the ranking score: {ranked}): {_scores(full)}",
            ]
            if outcome.chosen_within_noise:
                lines.append(CHOSEN_WITHIN_NOISE)
        if outcome.refit is not None:
            lines.append(_refit_line(outcome))
        elif outcome.refit_error:
            lines.append(f"No refit ({outcome.refit_error}): the chosen checkpoint was exported.")
        ranked_with = (
            "the refit's last evaluation"
            if outcome.refit is not None and best is outcome.refit.record
            else ("used by the scheduler to rank")
        )
        lines.append(f"Validation, {fidelity(best.snapshot)} ({ranked_with}): {_scores(best.scores)}")
        if outcome.kept_earlier_export:
            lines.append(
                "Kept: the model an earlier finished run of this experiment exported, tested and recorded; this run "
                "is unfinished: resume it to choose again among all trials."
            )
        elif outcome.unfinished:
            lines.append(
                "Chosen by the ranking score only: resume the search to re-score and test the best checkpoints."
            )
        config = best.snapshot.get("config", {})
        lines.append("Settings: " + ", ".join(f"{k}={v}" for k, v in sorted(config.items()) if v is not None))
        trainable, total = best.snapshot.get("trainable_parameters"), best.snapshot.get("total_parameters")
        if trainable and total:
            how = "LoRA adapters, merged into the export" if config.get("adapter") == "lora" else "every weight"
            lines.append(f"Trained weights: {trainable:,} of {total:,} ({trainable / total:.1%}; {how}).")
        if outcome.decoding is not None:
            from tune_dialsum.decoding import format_result

            lines.append(format_result(outcome.decoding))
    if outcome.rung_signal:
        lines.append(outcome.rung_signal)
    if outcome.stopped:
        full = outcome.max_budget * len(outcome.trials)
        lines.append(
            f"Early stopping saved {outcome.budget_saved:g} of {full:g} training {unit} "
            f"({outcome.budget_saved / full:.0%})."
        )
    for trial in outcome.failed:
        lines.append(f"Failed trial {trial.trial_id}: {trial.error}")
    for stage, error in outcome.stage_failures.items():
        lines.append(f"Failed: the {stage} ({error}); the export above does without it.")
    if outcome.best_model_dir:
        line = f"Best model: {outcome.best_model_location}"
        if outcome.best_model_location != str(outcome.best_model_dir):  # kept at a URI
            line += f" (a copy on this machine: {outcome.best_model_dir})"
        lines.append(line)
    disk = f"{outcome.disk_bytes / 2**20:.1f} MiB stored"
    if outcome.scratch_bytes is not None:
        disk += f"; {outcome.scratch_bytes / 2**20:.1f} MiB left in Ray's session directory"
    lines += [f"Experiment: {outcome.location} ({disk})"]
    return "\n".join(lines)
