"""After the trials: re-score, refit, decode, export once, score on test, trim.

:func:`summarize` classifies the trials (outcome.py), then :class:`Finish` runs the stages in one
straight sequence over one object holding what each needs: the outcome, the space, the
experiment's context (what every trial shares) and its store. Every stage after the choice is a bonus: one that fails is
named in ``outcome.stage_failures``, and the search still exports the best it has.

An interrupted search exports its best checkpoint by the subset score at once, and says so: the
re-scoring, the refit and the decoding stage wait for the search to be resumed and finished.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from tune_dialsum import scoring, selection
from tune_dialsum.checkpoints import (
    OPTIMIZER_STATE,
    best_checkpoint,
    find_checkpoints,
    find_record,
    label,
    read_checkpoint,
)
from tune_dialsum.contract import BEST_MODEL_DIR, DECODING_DB, DECODING_FILE, REFIT_DIR, TERMINATED, TUNING_FILE
from tune_dialsum.early_rescoring import EarlyRescoring
from tune_dialsum.errors import SearchError, one_line
from tune_dialsum.experiment_context import ExperimentContext, rescores_validation
from tune_dialsum.export import MODEL_CARD, export_checkpoint, record_scores
from tune_dialsum.generation import trial_decoding
from tune_dialsum.outcome import SearchOutcome, classify
from tune_dialsum.space import SearchSpace
from tune_dialsum.storage import ExperimentStore

logger = logging.getLogger(__name__)


def summarize(
    results,
    space: SearchSpace,
    context: ExperimentContext,
    store: ExperimentStore,
    out_of_time: bool = False,
    early: EarlyRescoring | None = None,
) -> SearchOutcome:
    """Classify every trial (outcome.py), then choose, export and trim (:class:`Finish`).

    ``results`` are this run's; trials of earlier runs of the experiment (a search continued with
    more trials) are read from their directories. ``out_of_time``: ``trials.time_budget_s`` ended the
    run, so trials it stopped have ended (as if stopped early) and those it never started never will.
    ``early``: the re-scoring tasks started while the last trials trained.
    """
    outcome = classify(results, space, context, store, out_of_time)
    return Finish(outcome, space, context, store, early=early).run()


@dataclass
class Finish:
    outcome: SearchOutcome
    space: SearchSpace
    context: ExperimentContext
    store: ExperimentStore
    records: list = field(default_factory=list)  # checkpoints.CheckpointRecord: every checkpoint kept
    early: EarlyRescoring | None = None  # re-scoring tasks started while the last trials trained

    @property
    def finished(self) -> bool:
        return not self.outcome.unfinished

    def run(self) -> SearchOutcome:
        outcome = self.outcome
        self.records = find_checkpoints(outcome.experiment_dir)
        if not self.records and self.finished:
            reasons = "; ".join(f"{t.trial_id}: {t.error}" for t in outcome.failed[:3])
            raise SearchError(
                f"no trial of {self.space.name!r} finished an evaluation, so nothing was exported"
                f"{' (' + reasons + ')' if reasons else ''}; logs are under {self.store.location}"
            )
        if self.records:
            if self.finished or not self._keep_earlier_finished_export():
                self._choose_and_export()
            self._trim()
        outcome.disk_bytes = self.store.disk_bytes()
        return outcome

    def _choose_and_export(self) -> None:
        """Re-score the best checkpoints on all of validation, refit, tune how they decode, export the best,
        score it on test."""
        outcome, space = self.outcome, self.space
        chosen = best_checkpoint(self.records, space.metric, space.mode)
        rescoring = rescores_validation(space) and self.finished
        if rescoring:
            chosen = self._rescore()
            if space.selection.refit:
                chosen = self._refit(chosen)
        elif space.selection.refit:
            outcome.refit_error = "the search is unfinished; resume it to re-score, refit and test"
        generation = None  # the decoding the chosen trial was scored with
        if space.decoding is not None and self.finished:
            chosen, generation = self._decode(chosen)
            if outcome.refit is not None:  # the stage may have preferred another checkpoint to the refit
                outcome.refit.exported = chosen is outcome.refit.record
        self._export(chosen, generation, rescoring)
        if self.finished:
            self._score_on_test(tuned=generation is not None and not outcome.decoding.chosen.baseline)

    def _rescore(self):
        """The top checkpoints by the subset score, re-scored on all of validation; returns the best of them."""
        outcome, space, store = self.outcome, self.space, self.store
        top = selection.top_by_subset(self.records, space.metric, space.mode, space.selection.top_k)
        try:
            locations = [store.where(r.path) for r in top]
            started = self.early.take(top) if self.early else None
            outcome.candidates = selection.rescore(top, locations, self.context, space.resources, started=started)
        except Exception as err:  # noqa: BLE001 (a model that cannot be scored must not cost the search its export)
            outcome.stage_failures["re-scoring"] = one_line(err)
            logger.warning("re-scoring failed (%s); exporting the best by the ranking score", one_line(err))
            return top[0]
        best = selection.choose(outcome.candidates, space.metric, space.mode)
        outcome.full_validation = best.full
        outcome.chosen_within_noise = selection.within_noise(outcome.candidates)
        store.push(
            selection.write_selection(outcome.experiment_dir, best, outcome.candidates, space.metric, space.mode)
        )
        return best.record

    def _refit(self, chosen):
        """The chosen settings trained anew (refit.py); returns the record to export: the refit where it scores
        at least as well, else ``chosen``. A refit that fails is a warning: the chosen checkpoint is exported."""
        from tune_dialsum.refit import refit

        outcome, scheduler = self.outcome, self.context.scheduler
        leader = next(c for c in outcome.candidates if c.record is chosen)
        if chosen.budget(scheduler.budget_unit) >= scheduler.max_budget:
            # the same settings, seed and data to the same budget: a refit would train this very model again
            outcome.refit_error = "the chosen checkpoint trained the full budget already"
            return chosen
        try:
            outcome.refit = refit(leader, self.context, self.space.resources, self.store)
        except Exception as err:  # noqa: BLE001 (a refit that fails must not cost the search its export)
            outcome.refit_error = one_line(err)
            logger.warning("the refit failed (%s); exporting the chosen checkpoint", outcome.refit_error)
            return chosen
        outcome.refit_of = chosen.path
        if not outcome.refit.exported:
            return chosen
        outcome.full_validation = outcome.refit.full
        return outcome.refit.record

    def _decode(self, chosen):
        """The decoding study on the best checkpoints: (the checkpoint to export, its decoding or None).

        The best by full-validation score where the search re-scored them, else by the ranking score.
        Whatever goes wrong in the stage, the search's choice is exported with the decoding it was ranked with.
        """
        outcome, space = self.outcome, self.space
        k = space.decoding.top_k_checkpoints
        if outcome.candidates:
            ranked = [c.record for c in selection.ranked(outcome.candidates, space.metric, space.mode)]
            if chosen not in ranked:  # the refit, exported in place of the best candidate
                ranked = [chosen, *ranked]
        else:
            top = selection.top_by_subset(self.records, space.metric, space.mode, k)
            ranked = [chosen, *(r for r in top if r is not chosen)]
        try:
            outcome.decoding = self._decoding_study(ranked[:k])
        except Exception as err:  # a bug or a broken node must not cost the search its export
            from tune_dialsum.choices import forget_choice

            outcome.stage_failures["decoding stage"] = one_line(err)
            logger.warning(
                "the decoding stage failed (%s); exporting with the decoding trials were ranked with", one_line(err)
            )
            forget_choice(self.store.local)  # `export` must not apply an earlier run's choice to this export
            if (self.store.local / DECODING_FILE).is_file():
                self.store.push(self.store.local / DECODING_FILE)
            return chosen, None
        if outcome.decoding.chosen is None:  # none met the constraints: the decoding it was ranked with stays
            return chosen, None
        chosen = next(r for r in ranked if label(r) == outcome.decoding.chosen.checkpoint)
        scored = [(c.record, c.full) for c in outcome.candidates]
        if outcome.refit is not None:
            scored.append((outcome.refit.record, outcome.refit.full))
        outcome.full_validation = next((full for record, full in scored if record is chosen), None)
        return chosen, outcome.decoding.chosen.generation

    def _decoding_study(self, ranked: list):
        """The decoding stage on the best checkpoints; its study and records are kept in the experiment."""
        from tune_dialsum.decoding import DecodingStudy, run_decoding_study

        space, store = self.space, self.store
        models = {label(r): (store.where(r.path), trial_decoding(r.snapshot.get("config", {}))) for r in ranked}
        study = DecodingStudy(
            f"{space.name}-decoding", store.local, models, space.decoding, self.context, space.resources, space.seed
        )
        try:
            return run_decoding_study(study)
        finally:  # what was measured is kept, whatever ends the stage
            store.push_study(store.local / DECODING_DB)
            if (store.local / DECODING_FILE).is_file():
                store.push(store.local / DECODING_FILE)

    def _export(self, chosen, generation: dict | None, rescored: bool) -> None:
        """``best_model/``, written once with everything measured so far, and pushed to the store."""
        outcome, space, store = self.outcome, self.space, self.store
        scores = {}
        if rescored:
            scores["full_validation"] = outcome.full_validation
            scores["selection"] = [c.as_dict(space.metric) for c in outcome.candidates]
            scores["selection_within_noise"] = outcome.chosen_within_noise
        if outcome.refit is not None:
            leader = next(c for c in outcome.candidates if c.record.path == outcome.refit_of)
            scores["refit"] = outcome.refit.as_dict(space.metric, leader)
        if outcome.decoding is not None:
            scores["decoding"] = outcome.decoding.as_record(space.name)
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
            scores=scores,
        )
        store.push(outcome.best_model_dir)
        outcome.best_model_location = store.where(outcome.best_model_dir)

    def _score_on_test(self, tuned: bool) -> None:
        """The export on test, decoded as exported; where the decoding was tuned, also its checkpoint decoded as
        its trial was ranked (the checkpoint: the export's generation config holds every tuned setting)."""
        outcome = self.outcome
        models = [(outcome.best_model_location, None)]
        if tuned:  # the gain the decoding stage brought, on test
            trained_with = trial_decoding(outcome.best.snapshot.get("config", {}))
            models.append((self.store.where(outcome.best.path), trained_with))
        try:
            scores = scoring.score_on_test(models, self.context, self.space.resources)
        except Exception as err:  # noqa: BLE001 (the export is written already: it stays)
            outcome.stage_failures["test scoring"] = one_line(err)
            return
        if scores is None:
            return
        outcome.test = scores[0]
        outcome.test_training_decoding = scores[1] if tuned else None
        record_scores(outcome.best_model_dir, test=outcome.test, test_training_decoding=outcome.test_training_decoding)
        for name in (TUNING_FILE, MODEL_CARD):  # the weights are in the store already
            self.store.push(outcome.best_model_dir / name)

    def _keep_earlier_finished_export(self) -> bool:
        """Whether a finished run of this experiment exported ``best_model``: then it stays, as it was.

        A continuation (``--resume --num-samples N``) that is interrupted has only ranking scores: its
        choice must not replace a model that was re-scored, decoded and tested, nor its recorded choices.
        """
        outcome = self.outcome
        tuning_file = outcome.experiment_dir / BEST_MODEL_DIR / TUNING_FILE
        if not tuning_file.is_file():
            return False
        tuning = json.loads(tuning_file.read_text())
        if "test" not in tuning and "full_validation" not in tuning:  # an interrupted run's export: choose again
            return False
        record = find_record(self.records, tuning.get("trial_id"), tuning.get("step")) or read_checkpoint(
            outcome.experiment_dir / REFIT_DIR / "final"
        )
        if record is None:
            return False
        outcome.best, outcome.kept_earlier_export = record, True
        outcome.best_model_dir = outcome.experiment_dir / BEST_MODEL_DIR
        outcome.best_model_location = self.store.where(outcome.best_model_dir)
        return True

    def _trim(self) -> None:
        outcome = self.outcome
        keep = {outcome.best.path, *(c.record.path for c in outcome.candidates)}
        trim_ended_trials(
            self.store,
            self.records,
            # --resume may continue the trials the time budget stopped: their checkpoints stay whole
            stopped={t.trial_id for t in outcome.stopped} - outcome.stopped_by_time,
            finished={t.trial_id for t in outcome.trials if t.status == TERMINATED},
            metric=self.space.metric,
            mode=self.space.mode,
            keep=keep | recorded_choices(outcome.experiment_dir, self.records),
        )


def recorded_choices(experiment_dir: Path, records: list) -> set[Path]:
    """The checkpoints selection.json and decoding.json name: a trim must keep them, whatever this run chose."""
    from tune_dialsum.choices import read_decoding, read_selection

    chosen = read_selection(experiment_dir) or {}
    named = [chosen.get("chosen") or {}, *chosen.get("candidates", [])]
    labels = {(c.get("trial_id"), c.get("step")) for c in named if c}
    decoded = (read_decoding(experiment_dir) or {}).get("chosen") or {}
    if decoded.get("checkpoint"):
        trial_id, _, step = decoded["checkpoint"].rpartition("@")
        labels.add((trial_id, int(step)))
    return {r.path for r in records if (r.trial_id, r.step) in labels}


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
