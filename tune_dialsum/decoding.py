"""The decoding stage: how the chosen checkpoints write, searched without retraining them.

Trials are ranked during training with one cheap decoding (greedy by default). Beam width, length
penalty and repetition settings matter as much as a learning rate, but searched as training
settings each value costs a retraining; here they cost a decoding of the validation split.

Once the training search has chosen its best checkpoints (selection.py), an Optuna study (TPE,
seeded) samples ``generate()`` settings and the checkpoint; each decoding trial decodes the
validation split (or its first ``max_eval_samples``) as a Ray task with a trial's resources,
several at once (executor.py), and records ROUGE, the summaries' mean length and the seconds per summary. The
decoding each checkpoint was scored with in training is measured beside them (the baseline), so
among decodings that meet the constraints the choice is never worse than it on these examples. The chosen decoding is the best by the
objective among those that meet the constraints (which TPE is told: Optuna's constrained TPE);
the Pareto fronts of ROUGE-L against length and against time are marked in the records.

The study is kept in SQLite beside the experiment (``decoding.db``), the records in
``decoding.json``: run again, the stage continues where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tune_dialsum.atomic import atomic_write_text
from tune_dialsum.choices import BASELINE, read_decoding
from tune_dialsum.cluster import task_slots
from tune_dialsum.contract import DECODING_DB, DECODING_FILE
from tune_dialsum.errors import one_line
from tune_dialsum.experiment_context import ExperimentContext
from tune_dialsum.export import format_settings
from tune_dialsum.generation import generate_settings
from tune_dialsum.scoring import score_model, scoring_tasks
from tune_dialsum.space import default_startup_trials
from tune_dialsum.space_schema import DecodingSpace, ResourcesSection

logger = logging.getLogger(__name__)

CHECKPOINT_PARAM = "checkpoint"  # the study's parameter naming which checkpoint decodes, where there are several


@dataclass
class DecodingTrial:
    number: int  # the Optuna trial's number; BASELINE for a checkpoint's training decoding
    checkpoint: str  # the label of the checkpoint (trial_id@step) or model that decoded
    generation: dict  # the generate() keyword arguments, as passed (kept under "settings" in files)
    scores: dict = field(default_factory=dict)  # ROUGE, mean_words, mean_tokens, seconds_per_summary, examples
    error: str | None = None
    feasible: bool = False  # meets the constraints
    front_length: bool = False  # on the Pareto front of ROUGE-L against mean length
    front_time: bool = False  # on the Pareto front of ROUGE-L against seconds per summary

    @property
    def baseline(self) -> bool:
        return self.number == BASELINE

    def as_json(self) -> dict:
        """The record as decoding.json, tuning.json and the study's database keep it."""
        return {("settings" if key == "generation" else key): value for key, value in asdict(self).items()}

    @classmethod
    def from_json(cls, record: dict) -> DecodingTrial:
        return cls(**{("generation" if key == "settings" else key): value for key, value in record.items()})


@dataclass
class DecodingStudy:
    """What the stage decodes: checkpoints by label, each with its location and training decoding."""

    name: str
    directory: Path  # where decoding.db and decoding.json are kept
    models: dict[str, tuple[str, dict]]  # label -> (location, the decoding it was scored with in training)
    space: DecodingSpace
    context: ExperimentContext  # the data, and the objective
    resources: ResourcesSection
    seed: int = 0

    @property
    def objective(self) -> str:
        return "rougeL" if self.context.objective.metric == "eval_loss" else self.context.objective.metric

    @property
    def study_name(self) -> str:
        """The name and a digest of what makes trials comparable: the checkpoints, the searched ranges, the
        examples scored. Changed, it is another study (Optuna refuses a parameter's range changed mid-study)."""
        identity = [sorted(self.models), repr(sorted(self.space.search.items())), self.space.max_eval_samples]
        identity += [self.context.data.path, self.context.data.validation_split, self.context.seed]
        return f"{self.name}-{hashlib.sha1(repr(identity).encode()).hexdigest()[:8]}"


@dataclass
class DecodingResult:
    study: str
    objective: str
    records: list[DecodingTrial]
    chosen: DecodingTrial | None  # None: no decoding met the constraints, or every one failed
    constraints: str  # in words; "" where there are none
    wall_seconds: float
    length_unit: str = "words"

    def baseline_of(self, label: str) -> DecodingTrial | None:
        """The decoding checkpoint ``label`` was ranked with in training, as measured here."""
        return next((r for r in self.records if r.baseline and r.checkpoint == label), None)

    def best(self, top: int = 5) -> list[DecodingTrial]:
        """The ``top`` best by the objective, and always the chosen one and its checkpoint's baseline."""
        scored = sorted((r for r in self.records if r.error is None), key=lambda r: -r.scores[self.objective])
        shown = scored[:top]
        if self.chosen is not None:
            baseline = self.baseline_of(self.chosen.checkpoint)
            shown += [r for r in (self.chosen, baseline) if r is not None and r.error is None and r not in shown]
        return shown

    def as_record(self, training_study: str | None) -> dict:
        """The stage as tuning.json and the model card record it: the choice, and the best trials beside
        the training decoding of the chosen checkpoint."""
        chosen = self.chosen
        best = [{**r.as_json(), "chosen": r is chosen} for r in self.best()]
        return {
            "study": self.study,
            "training_study": training_study,
            "objective": self.objective,
            "trial": None if chosen is None else chosen.number,
            "checkpoint": None if chosen is None else chosen.checkpoint,
            "settings": None if chosen is None else chosen.generation,
            "scores": None if chosen is None else chosen.scores,
            "constraints": self.constraints,
            "length_unit": self.length_unit,
            "examples": best[0]["scores"]["examples"] if best else None,
            "trials": sum(not r.baseline for r in self.records),
            "wall_seconds": round(self.wall_seconds, 1),
            "best": best,
        }


def run_decoding_study(study: DecodingStudy) -> DecodingResult:
    """Run (or continue) the decoding study to ``space.num_samples`` trials; choose and mark the fronts."""
    clock = time.perf_counter()
    earlier = read_decoding(study.directory) or {}
    if earlier.get("study") != study.study_name:  # other checkpoints, settings or data: not comparable
        earlier = {}
    # a baseline that failed (the machine busy, say) is measured again: the choice is compared with it
    baselines = [
        DecodingTrial.from_json(r) for r in earlier.get("records", []) if r["number"] == BASELINE and not r["error"]
    ]
    optuna_study = _open_study(study)
    _decode(
        study, optuna_study, baselines, lambda: _write(study, baselines + _study_records(optuna_study), clock, earlier)
    )
    result = _choose(study, baselines + _study_records(optuna_study), clock, earlier)
    _write(study, result.records, clock, earlier, chosen=result.chosen)
    return result


def _open_study(study: DecodingStudy):
    """The Optuna study, created or continued: trials its last driver left running are failed, and a
    continued study draws anew (the same seed would repeat the first run's start-up trials)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    optuna_study = optuna.create_study(
        study_name=study.study_name,
        storage=f"sqlite:///{study.directory / DECODING_DB}",
        direction="maximize",
        load_if_exists=True,
    )
    for trial in optuna_study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        optuna_study.tell(trial.number, state=optuna.trial.TrialState.FAIL)  # no record: not counted
    optuna_study.sampler = optuna.samplers.TPESampler(  # constraints reach it through Trial.set_constraint
        seed=study.seed + len(optuna_study.get_trials(deepcopy=False)),
        n_startup_trials=default_startup_trials(study.space.num_samples),
        constant_liar=True,  # several trials are asked before the first is told
    )
    return optuna_study


def _decode(study: DecodingStudy, optuna_study, baselines: list[DecodingTrial], written) -> None:
    """Decode each checkpoint's missing baseline and the study's missing trials, ``slots`` at once."""
    space, labels = study.space, list(study.models)
    tasks = scoring_tasks(study.resources)

    def submit(label: str, generation: dict):
        location = study.models[label][0]
        return tasks.submit(score_model, location, study.context, "validation", generation, space.max_eval_samples)

    pending = {}  # Ray reference -> (Optuna trial, or None for a baseline; label; generation)
    for label in labels:
        if not any(r.checkpoint == label for r in baselines):
            pending[submit(label, study.models[label][1])] = (None, label, study.models[label][1])
    remaining = space.num_samples - len(_study_records(optuna_study))
    slots = tasks.at_once() or task_slots(study.resources, remaining + len(pending), per="worker")
    try:
        _decode_until_done(study, optuna_study, baselines, written, tasks, submit, pending, remaining, slots)
    finally:  # a stage that fails (or is interrupted) gives back what its queued decodings hold
        for handle in pending:
            tasks.cancel(handle)


def _decode_until_done(study, optuna_study, baselines, written, tasks, submit, pending: dict, remaining, slots: int):
    space, labels = study.space, list(study.models)
    while remaining > 0 or pending:
        while remaining > 0 and len(pending) < slots:
            trial = optuna_study.ask()
            # in a fixed order: Optuna refuses a categorical whose choices come in another order next time
            label = trial.suggest_categorical(CHECKPOINT_PARAM, sorted(labels)) if len(labels) > 1 else labels[0]
            sampled = {name: dist.suggest(trial, name) for name, dist in space.search.items()}
            generation = generate_settings(study.models[label][1], sampled)
            pending[submit(label, generation)] = (trial, label, generation)
            remaining -= 1
        ready = tasks.first_done(list(pending))
        trial, label, generation = pending.pop(ready)
        record = DecodingTrial(BASELINE if trial is None else trial.number, label, generation)
        try:
            record.scores = tasks.result(ready)
        except Exception as err:  # one decoding that fails (memory, a setting generate() refuses) ends alone
            record.error = one_line(err)
            logger.warning("decoding trial %s failed: %s", record.number, record.error)
        if trial is None:
            baselines.append(record)
        else:
            _tell(optuna_study, trial, record, study.space.constraints, study.objective)
        written()


def _tell(optuna_study, trial, record: DecodingTrial, constraints: dict, objective: str) -> None:
    import optuna

    trial.set_user_attr("record", record.as_json())
    if record.error is not None:
        optuna_study.tell(trial, state=optuna.trial.TrialState.FAIL)
        return
    for key, limit in constraints.items():  # Optuna's constrained TPE: a value at or below 0 is met
        if limit is not None:
            trial.set_constraint(key, record.scores[key] - limit)
    optuna_study.tell(trial, record.scores[objective])


def _study_records(optuna_study) -> list[DecodingTrial]:
    trials = optuna_study.get_trials(deepcopy=False)
    return [DecodingTrial.from_json(t.user_attrs["record"]) for t in trials if "record" in t.user_attrs]


def _choose(study: DecodingStudy, records: list[DecodingTrial], clock: float, earlier: dict) -> DecodingResult:
    length = f"mean_{study.space.length_unit}"
    limits = {k: v for k, v in study.space.constraints.items() if v is not None}
    for record in records:  # the constraints as they are now (a continued study may have changed them)
        record.feasible = record.error is None and all(record.scores[k] <= v for k, v in limits.items())
    mark_fronts(records, study.objective, length)
    return DecodingResult(
        study=study.study_name,
        objective=study.objective,
        records=sorted(records, key=lambda r: (r.number, r.checkpoint)),
        chosen=choose(records, study.objective, length),
        constraints=study.space.describe_constraints(),
        wall_seconds=earlier.get("wall_seconds", 0.0) + time.perf_counter() - clock,
        length_unit=study.space.length_unit,
    )


def choose(records: list[DecodingTrial], objective: str, length: str) -> DecodingTrial | None:
    """The best by ``objective`` among those that met the constraints; ties: shorter summaries, then the
    training decoding (it changes nothing). None where none met them (or every decoding failed)."""
    feasible = [r for r in records if r.error is None and r.feasible]
    return max(feasible, key=lambda r: (r.scores[objective], -r.scores[length], r.baseline), default=None)


def mark_fronts(records: list[DecodingTrial], objective: str, length: str) -> None:
    """Mark the Pareto fronts of ``objective`` against ``length`` and against seconds per summary."""
    scored = [r for r in records if r.error is None]
    for record in scored:
        record.front_length = _on_front(record, scored, objective, length)
        record.front_time = _on_front(record, scored, objective, "seconds_per_summary")


def _on_front(record: DecodingTrial, records: list[DecodingTrial], objective: str, cost: str) -> bool:
    """No other record scores at least as well for no more cost, and better on one of them."""
    mine = (record.scores[objective], record.scores[cost])
    for other in records:
        theirs = (other.scores[objective], other.scores[cost])
        if theirs[0] >= mine[0] and theirs[1] <= mine[1] and theirs != mine:
            return False
    return True


def _write(study: DecodingStudy, records, clock: float, earlier: dict, chosen=None) -> None:
    """decoding.json: every record so far (baselines included), and the choice once made."""
    document = {
        "study": study.study_name,
        "objective": study.objective,
        "length_unit": study.space.length_unit,
        "constraints": study.space.describe_constraints(),
        "examples": study.space.max_eval_samples,
        "wall_seconds": earlier.get("wall_seconds", 0.0) + time.perf_counter() - clock,
        "chosen": None if chosen is None else {"number": chosen.number, "checkpoint": chosen.checkpoint},
        "records": [r.as_json() for r in records],
    }
    atomic_write_text(study.directory / DECODING_FILE, json.dumps(document, indent=2, default=str))


def format_result(result: DecodingResult) -> str:
    """The stage in a few lines: the choice against the training decoding, or why nothing was chosen."""
    trials = [r for r in result.records if not r.baseline]
    failed = sum(r.error is not None for r in trials)
    examples = next((r.scores["examples"] for r in result.records if r.error is None), 0)
    head = (
        f"Decoding: {len(trials)} trials ({failed} failed) on {len({r.checkpoint for r in result.records})} "
        f"checkpoint(s), {examples} validation examples each, {result.wall_seconds:.0f} s"
    )
    chosen = result.chosen
    if chosen is None and all(r.error is not None for r in result.records):
        error = next((r.error for r in result.records), "nothing ran")
        return f"{head}; every decoding failed ({error}): kept the decoding the model was scored with"
    if chosen is None:
        return (
            f"{head}; none met the constraints ({result.constraints}): kept the decoding the model was scored "
            "with; loosen decoding.constraints to choose among them"
        )
    if chosen.baseline:
        why = "the best that met the constraints" if result.constraints else "no decoding trial scored higher"
        return f"{head}; the decoding before tuning stays ({why}): {_describe(chosen, result)}"
    baseline = result.baseline_of(chosen.checkpoint)
    versus = f"\n  before tuning: {_describe(baseline, result)}" if baseline and baseline.error is None else ""
    where = f" on checkpoint {chosen.checkpoint}" if len({r.checkpoint for r in result.records}) > 1 else ""
    generation = format_settings(chosen.generation)
    return f"{head}\n  chosen, trial {chosen.number}{where} ({generation}): {_describe(chosen, result)}{versus}"


def _describe(record: DecodingTrial, result: DecodingResult) -> str:
    scores = record.scores
    return (
        f"{result.objective} {scores[result.objective]:.4f}, {scores[f'mean_{result.length_unit}']:.1f} "
        f"{result.length_unit}, "
        f"{scores['seconds_per_summary']:.3f} s per summary"
    )
