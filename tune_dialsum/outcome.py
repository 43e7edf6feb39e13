"""What a search produced: every trial classified, the best exported, stopped trials trimmed, the summary."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

from tune_dialsum import scoring, selection
from tune_dialsum.checkpoints import (
    CHECKPOINT_METADATA,
    OPTIMIZER_STATE,
    best_checkpoint,
    find_checkpoints,
    find_record,
    label,
    read_checkpoint,
    trial_decoding,
)
from tune_dialsum.contract import (
    BEST_MODEL_DIR,
    ERROR,
    ERROR_FILE,
    EXPERIMENT_STATE_GLOB,
    PARAMS_FILE,
    PENDING,
    REFIT_DIR,
    ROUGE_KEYS,
    RUNNING,
    STOPPED,
    TERMINATED,
    TRIAL_DIR_PREFIX,
    TUNING_FILE,
    UNFINISHED,
    best,
    score_key,
    trial_state,
)
from tune_dialsum.errors import SearchError, one_line
from tune_dialsum.export import MODEL_CARD, export_checkpoint, fidelity, record_scores
from tune_dialsum.space import SearchSpace
from tune_dialsum.storage import ExperimentStore
from tune_dialsum.trainable import ExperimentSettings

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
    best: object | None = None  # export.CheckpointRecord
    best_model_dir: Path | None = None
    best_model_location: str | None = None  # best_model_dir in the store (the same path for a directory)
    full_validation: dict | None = None  # the exported model on every validation example (used to choose it)
    test: dict | None = None  # the exported model on the test split (not used to choose it)
    test_training_decoding: dict | None = None  # the same, decoded as trials were scored (where decoding was tuned)
    decoding: object | None = None  # decoding.DecodingResult: the decoding stage, where the space has one
    candidates: list = field(default_factory=list)  # selection.Candidate: the checkpoints re-scored
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


def summarize(
    results, space: SearchSpace, settings: ExperimentSettings, store: ExperimentStore, out_of_time: bool = False
) -> SearchOutcome:
    """Classify every trial, export the best model (see :func:`_choose_and_export`), trim ended trials.

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
        settings.scheduler.max_budget,
        settings.scheduler.budget_unit,
        rung_signal=rung_signal(space),
    )
    for result in results:
        rows = result.metrics_dataframe.to_dict("records") if result.metrics_dataframe is not None else []
        error = one_line(result.error) if result.error is not None else None
        last = result.metrics or {}
        outcome.trials.append(_classify(last.get("trial_id", "?"), rows, last, result.config, error, space, settings))
    ran_now = {t.trial_id for t in outcome.trials}
    recorded = recorded_trial_ids(experiment_dir)
    for trial_dir in sorted(experiment_dir.glob(f"{TRIAL_DIR_PREFIX}*")):
        trial_id = trial_dir.name.removeprefix(TRIAL_DIR_PREFIX)
        if trial_id not in ran_now and trial_id in recorded:
            outcome.trials.append(_classify_from_disk(trial_dir, trial_id, space, settings))
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
    records = find_checkpoints(experiment_dir)
    if records:
        kept = _earlier_finished_export(outcome, records, store) if outcome.unfinished else None
        if kept is None:
            _choose_and_export(outcome, records, space, settings, store)
        by_time = outcome.stopped_by_time  # --resume may continue them: their checkpoints stay whole
        trim_ended_trials(
            store,
            records,
            stopped={t.trial_id for t in outcome.stopped} - by_time,
            finished={t.trial_id for t in outcome.trials if t.status == TERMINATED},
            metric=space.metric,
            mode=space.mode,
            keep={outcome.best.path, *(c.record.path for c in outcome.candidates), *recorded_choices(experiment_dir)},
        )
    elif not outcome.unfinished:
        reasons = "; ".join(f"{t.trial_id}: {t.error}" for t in outcome.failed[:3])
        raise SearchError(
            f"no trial of {space.name!r} finished an evaluation, so nothing was exported"
            f"{' (' + reasons + ')' if reasons else ''}; logs are under {store.location}"
        )
    outcome.disk_bytes = store.disk_bytes()
    return outcome


def _earlier_finished_export(outcome: SearchOutcome, records, store: ExperimentStore):
    """The record of ``best_model`` where a finished run of this experiment exported it, else None.

    A continuation (``--resume --num-samples N``) that is interrupted has only ranking scores: its
    choice must not replace a model that was re-scored, decoded and tested, nor its recorded choices.
    """
    tuning_file = outcome.experiment_dir / BEST_MODEL_DIR / TUNING_FILE
    if not tuning_file.is_file():
        return None
    tuning = json.loads(tuning_file.read_text())
    if "test" not in tuning and "full_validation" not in tuning:  # an interrupted run's export: choose again
        return None
    record = find_record(records, tuning.get("trial_id"), tuning.get("step")) or read_checkpoint(
        outcome.experiment_dir / REFIT_DIR / "final"
    )
    if record is None:
        return None
    outcome.best, outcome.kept_earlier_export = record, True
    outcome.best_model_dir = outcome.experiment_dir / BEST_MODEL_DIR
    outcome.best_model_location = store.where(outcome.best_model_dir)
    return record


def recorded_choices(experiment_dir: Path) -> set[Path]:
    """The checkpoints selection.json and decoding.json name: a trim must keep them, whatever this run chose."""
    from tune_dialsum.choices import read_decoding, read_selection

    chosen = read_selection(experiment_dir) or {}
    named = [chosen.get("chosen") or {}, *chosen.get("candidates", [])]
    labels = {(c.get("trial_id"), c.get("step")) for c in named if c}
    decoded = (read_decoding(experiment_dir) or {}).get("chosen") or {}
    if decoded.get("checkpoint"):
        trial_id, _, step = decoded["checkpoint"].rpartition("@")
        labels.add((trial_id, int(step)))
    return {r.path for r in find_checkpoints(experiment_dir) if (r.trial_id, r.step) in labels}


def _choose_and_export(outcome: SearchOutcome, records, space: SearchSpace, settings: ExperimentSettings, store):
    """Re-score the best checkpoints on all of validation, tune how they decode, export the best, score it on test.

    An interrupted search exports its best checkpoint by the subset score at once, and says so: the
    re-scoring and the decoding stage wait for the search to be resumed and finished.
    """
    chosen = best_checkpoint(records, space.metric, space.mode)
    # ROUGE is re-scored by decoding; a loss objective is not (the subset's loss is what ranks)
    # (a refit is compared with the chosen checkpoint on all of validation, so it needs the re-scoring)
    subset = settings.data.max_eval_samples is not None or space.selection.refit
    rescoring = subset and not outcome.unfinished and space.metric != "eval_loss"
    if rescoring:
        chosen = _rescore(outcome, records, space, settings, store)
        if space.selection.refit:
            chosen = _refit(outcome, chosen, settings, space, store)
    elif space.selection.refit:
        outcome.refit_error = "the search is unfinished; resume it to re-score, refit and test"
    generation = None  # the decoding the chosen trial was scored with
    if space.decoding is not None and not outcome.unfinished:
        chosen, generation = _decoding_stage(outcome, records, chosen, space, settings, store)
        if outcome.refit is not None:  # the stage may have preferred another checkpoint to the refit
            outcome.refit.exported = chosen is outcome.refit.record
    outcome.best = chosen
    store.fetch(chosen.path)  # the mirror of a URI holds no weights until now
    outcome.best_model_dir = export_checkpoint(
        chosen,
        outcome.experiment_dir / BEST_MODEL_DIR,
        space.metric,
        space.mode,
        force=True,
        source=store.where(chosen.path),
        generation=generation,
    )
    if rescoring:
        record_scores(
            outcome.best_model_dir,
            full_validation=outcome.full_validation,
            selection=[c.as_dict(space.metric) for c in outcome.candidates],
            selection_within_noise=selection.within_noise(outcome.candidates),
        )
    if outcome.refit is not None:
        leader = next(c for c in outcome.candidates if c.record.path == outcome.refit_of)
        record_scores(outcome.best_model_dir, refit=outcome.refit.as_dict(space.metric, leader))
    if outcome.decoding is not None:
        record_scores(outcome.best_model_dir, decoding=outcome.decoding.as_record(space.name))
    store.push(outcome.best_model_dir)
    outcome.best_model_location = store.where(outcome.best_model_dir)
    if not outcome.unfinished:
        tuned = generation is not None and not outcome.decoding.chosen.baseline
        _score_on_test(outcome, space, settings, store, tuned=tuned)


def _rescore(outcome: SearchOutcome, records, space: SearchSpace, settings: ExperimentSettings, store):
    """The top checkpoints by the subset score, re-scored on all of validation; returns the best of them."""
    top = selection.top_by_subset(records, space.metric, space.mode, space.selection.top_k)
    try:
        outcome.candidates = selection.rescore(top, [store.where(r.path) for r in top], settings, space.resources)
    except Exception as err:  # noqa: BLE001 (a model that cannot be scored must not cost the search its export)
        outcome.stage_failures["re-scoring"] = one_line(err)
        logger.warning("re-scoring failed (%s); exporting the best by the ranking score", one_line(err))
        return top[0]
    best = selection.choose(outcome.candidates, space.metric, space.mode)
    outcome.full_validation = best.full
    store.push(selection.write_selection(outcome.experiment_dir, best, outcome.candidates, space.metric, space.mode))
    return best.record


def _refit(outcome: SearchOutcome, chosen, settings: ExperimentSettings, space: SearchSpace, store):
    """The chosen settings trained anew (refit.py); returns the record to export: the refit where it scores at
    least as well, else ``chosen``. A refit that fails is a warning: the chosen checkpoint is exported."""
    from tune_dialsum.refit import refit

    leader = next(c for c in outcome.candidates if c.record is chosen)
    if chosen.budget(settings.scheduler.budget_unit) >= settings.scheduler.max_budget:
        # the same settings, seed and data to the same budget: a refit would train this very model again
        outcome.refit_error = "the chosen checkpoint trained the full budget already"
        return chosen
    try:
        outcome.refit = refit(leader, settings, space.resources, store)
    except Exception as err:  # noqa: BLE001 (a refit that fails must not cost the search its export)
        outcome.refit_error = one_line(err)
        logger.warning("the refit failed (%s); exporting the chosen checkpoint", outcome.refit_error)
        return chosen
    outcome.refit_of = chosen.path
    if not outcome.refit.exported:
        return chosen
    outcome.full_validation = outcome.refit.full
    return outcome.refit.record


def _decoding_stage(outcome: SearchOutcome, records, chosen, space: SearchSpace, settings: ExperimentSettings, store):
    """The decoding study on the best checkpoints: (the checkpoint to export, its decoding or None).

    The best by full-validation score where the search re-scored them, else by the ranking score.
    Whatever goes wrong in the stage, the search's choice is exported with the decoding it was ranked with.
    """
    k = space.decoding.top_k_checkpoints
    if outcome.candidates:
        ranked = [c.record for c in selection.ranked(outcome.candidates, space.metric, space.mode)]
        if chosen not in ranked:  # the refit, exported in place of the best candidate
            ranked = [chosen, *ranked]
    else:
        ranked = [
            chosen,
            *(r for r in selection.top_by_subset(records, space.metric, space.mode, k) if r is not chosen),
        ]
    try:
        outcome.decoding = _tune_decoding(ranked[:k], space, settings, store)
    except Exception as err:  # a bug or a broken node must not cost the search its export
        from tune_dialsum.choices import forget_choice
        from tune_dialsum.contract import DECODING_FILE

        outcome.stage_failures["decoding stage"] = one_line(err)
        logger.warning(
            "the decoding stage failed (%s); exporting with the decoding trials were ranked with", one_line(err)
        )
        forget_choice(store.local)  # `export` must not apply an earlier run's choice to this export
        if (store.local / DECODING_FILE).is_file():
            store.push(store.local / DECODING_FILE)
        return chosen, None
    if outcome.decoding.chosen is None:  # none met the constraints: the decoding it was ranked with stays
        return chosen, None
    chosen = next(r for r in ranked if label(r) == outcome.decoding.chosen.checkpoint)
    scored = [(c.record, c.full) for c in outcome.candidates]
    if outcome.refit is not None:
        scored.append((outcome.refit.record, outcome.refit.full))
    outcome.full_validation = next((full for record, full in scored if record is chosen), None)
    return chosen, outcome.decoding.chosen.settings


def _score_on_test(outcome: SearchOutcome, space: SearchSpace, settings: ExperimentSettings, store, tuned: bool):
    """The export on test, decoded as exported; where the decoding was tuned, also its checkpoint decoded as
    its trial was ranked (the checkpoint: the export's generation config holds every tuned setting)."""
    models = [(outcome.best_model_location, None)]
    if tuned:  # the gain the decoding stage brought, on test
        models.append((store.where(outcome.best.path), trial_decoding(outcome.best.snapshot.get("config", {}))))
    try:
        scores = scoring.score_on_test(models, settings, space.resources)
    except Exception as err:  # noqa: BLE001 (the export is written already: it stays)
        outcome.stage_failures["test scoring"] = one_line(err)
        return
    if scores is None:
        return
    outcome.test = scores[0]
    outcome.test_training_decoding = scores[1] if tuned else None
    record_scores(outcome.best_model_dir, test=outcome.test, test_training_decoding=outcome.test_training_decoding)
    for name in (TUNING_FILE, MODEL_CARD):  # the weights are in the store already
        store.push(outcome.best_model_dir / name)


def _tune_decoding(ranked: list, space: SearchSpace, settings: ExperimentSettings, store: ExperimentStore):
    """The decoding stage on the best checkpoints; its study and records are kept in the experiment."""
    from tune_dialsum.contract import DECODING_DB, DECODING_FILE
    from tune_dialsum.decoding import DecodingStudy, run_decoding_study

    models = {label(r): (store.where(r.path), trial_decoding(r.snapshot.get("config", {}))) for r in ranked}
    study = DecodingStudy(
        f"{space.name}-decoding", store.local, models, space.decoding, settings, space.resources, space.seed
    )
    try:
        return run_decoding_study(study)
    finally:  # what was measured is kept, whatever ends the stage
        store.push_study(store.local / DECODING_DB)
        if (store.local / DECODING_FILE).is_file():
            store.push(store.local / DECODING_FILE)


def _classify(trial_id: str, rows: list[dict], last: dict, config: dict, error: str | None, space, settings):
    used = float(last.get(settings.time_attr, 0) or 0)
    status = trial_state(used, settings.scheduler.max_budget, bool(last.get("done")), error is not None)
    if status in (RUNNING, PENDING):  # the search is over: --resume continues it
        status = UNFINISHED
    if status != ERROR:
        error = None
    best_score = best((r[space.metric] for r in rows if space.metric in r), space.mode)
    return TrialSummary(trial_id, status, used, None if math.isnan(best_score) else best_score, config, error)


def _classify_from_disk(trial_dir: Path, trial_id: str, space, settings) -> TrialSummary:
    from tune_dialsum.analysis import read_reports

    params = trial_dir / PARAMS_FILE
    config = json.loads(params.read_text()) if params.is_file() else {}
    error_file = trial_dir / ERROR_FILE
    error = one_line(RuntimeError(error_file.read_text())) if error_file.is_file() else None
    rows = read_reports(trial_dir)
    return _classify(trial_id, rows, rows[-1] if rows else {}, config, error, space, settings)


def recorded_trial_ids(experiment_dir: Path) -> set[str]:
    """Every trial any run of the experiment recorded in its saved state (Ray's experiment_state-*.json)."""
    ids = set()
    for state_file in experiment_dir.glob(EXPERIMENT_STATE_GLOB):
        try:
            trial_data = json.loads(state_file.read_text())["trial_data"]
            ids |= {json.loads(trial_json)["trial_id"] for trial_json, _ in trial_data}
        except (OSError, ValueError, KeyError, TypeError):  # a state file being written: its trials are in results
            continue
    return ids


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


def trim_ended_trials(
    store: ExperimentStore, records, stopped: set[str], finished: set[str], metric: str, mode: str, keep=frozenset()
):
    """Drop what trials that ended can never use again.

    A trial the scheduler stopped keeps only its best checkpoint (so that ``export --trial`` still
    works); a trial that finished keeps its best ``checkpoints.keep``. Neither will train again, so
    neither keeps optimizer state: for large models that is two thirds of every checkpoint. Failed
    and unfinished trials keep theirs: ``--resume`` continues them from it. Checkpoints in ``keep``
    (the exported one, the re-scored candidates) stay whatever their subset score.
    """
    by_trial: dict[str, list] = {}
    for record in records:
        if record.trial_id in stopped | finished:
            by_trial.setdefault(record.trial_id, []).append(record)
    for trial_id, trial_records in by_trial.items():
        if trial_id in stopped:
            best = best_checkpoint(trial_records, metric, mode, trial_id=trial_id)
            for record in trial_records:
                if record is not best and record.path not in keep:
                    store.delete(record.path)
            trial_records = [r for r in trial_records if r is best or r.path in keep]
        for record in trial_records:
            for name in OPTIMIZER_STATE:
                store.delete(record.path / name)


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
            if selection.within_noise(outcome.candidates):
                lines.append(
                    f"Chosen within noise: the best {outcome.metric} on validation beats another candidate by less "
                    "than its paired 95% interval, so the lower eval_loss (where the losses share a scale), then the later checkpoint, decided."
                )
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
