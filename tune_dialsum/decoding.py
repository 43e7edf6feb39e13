"""The decoding stage: how the chosen checkpoints write, searched without retraining them.

Trials are ranked during training with one cheap decoding (greedy by default). Beam width, length
penalty and repetition settings matter as much as a learning rate, but searched as training
settings each value costs a retraining; here they cost a decoding of the validation split.

Once the training search has chosen its best checkpoints (selection.py), an Optuna study (TPE,
seeded) samples ``generate()`` settings and the checkpoint; each decoding trial decodes the
validation split (or its first ``max_eval_samples``) as a Ray task with a trial's resources,
several at once, and records ROUGE, the summaries' mean length and the seconds per summary. The
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
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tune_dialsum.atomic import atomic_directory, atomic_write_text
from tune_dialsum.choices import BASELINE, chosen_decoding, forget_choice, read_decoding  # noqa: F401 (re-exported)
from tune_dialsum.cluster import task_slots
from tune_dialsum.contract import DECODING_DB, DECODING_FILE, DECODING_SOURCE_FILE, RECIPE_FILE, TUNING_FILE
from tune_dialsum.errors import UsageError, one_line
from tune_dialsum.export import format_settings
from tune_dialsum.scoring import remote_scorer
from tune_dialsum.space import DECODING_SETTINGS, SearchSpace, default_startup_trials
from tune_dialsum.space_schema import DecodingSpace, ResourcesSection
from tune_dialsum.trainable import ExperimentSettings

logger = logging.getLogger(__name__)

CHECKPOINT_PARAM = "checkpoint"  # the study's parameter naming which checkpoint decodes, where there are several


@dataclass
class DecodingTrial:
    number: int  # the Optuna trial's number; BASELINE for a checkpoint's training decoding
    checkpoint: str  # the label of the checkpoint (trial_id@step) or model that decoded
    settings: dict  # the generate() settings, as passed
    scores: dict = field(default_factory=dict)  # ROUGE, mean_words, mean_tokens, seconds_per_summary, examples
    error: str | None = None
    feasible: bool = False  # meets the constraints
    front_length: bool = False  # on the Pareto front of ROUGE-L against mean length
    front_time: bool = False  # on the Pareto front of ROUGE-L against seconds per summary

    @property
    def baseline(self) -> bool:
        return self.number == BASELINE


@dataclass
class DecodingStudy:
    """What the stage decodes: checkpoints by label, each with its location and training decoding."""

    name: str
    directory: Path  # where decoding.db and decoding.json are kept
    models: dict[str, tuple[str, dict]]  # label -> (location, the decoding it was scored with in training)
    space: DecodingSpace
    settings: ExperimentSettings  # the data, and the objective
    resources: ResourcesSection
    seed: int = 0

    @property
    def objective(self) -> str:
        return "rougeL" if self.settings.objective.metric == "eval_loss" else self.settings.objective.metric

    @property
    def study_name(self) -> str:
        """The name and a digest of what makes trials comparable: the checkpoints, the searched ranges, the
        examples scored. Changed, it is another study (Optuna refuses a parameter's range changed mid-study)."""
        identity = [sorted(self.models), repr(sorted(self.space.search.items())), self.space.max_eval_samples]
        identity += [self.settings.data.path, self.settings.data.validation_split, self.settings.seed]
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
        best = [{**asdict(r), "chosen": r is chosen} for r in self.best()]
        return {
            "study": self.study,
            "training_study": training_study,
            "objective": self.objective,
            "trial": None if chosen is None else chosen.number,
            "checkpoint": None if chosen is None else chosen.checkpoint,
            "settings": None if chosen is None else chosen.settings,
            "scores": None if chosen is None else chosen.scores,
            "constraints": self.constraints,
            "length_unit": self.length_unit,
            "examples": best[0]["scores"]["examples"] if best else None,
            "trials": sum(not r.baseline for r in self.records),
            "wall_seconds": round(self.wall_seconds, 1),
            "best": best,
        }


# generate() settings that act only with beam search: transformers 5 refuses to save a greedy config with them
BEAM_ONLY = ("length_penalty", "early_stopping")


def generate_settings(training_decoding: dict, sampled: dict) -> dict:
    """The sampled settings over the training decoding, made consistent for ``generate()``."""
    settings = {**training_decoding, **sampled}
    if "max_new_tokens" in settings:  # generate() would warn and use max_new_tokens anyway
        settings.pop("max_length", None)
    if "min_new_tokens" in settings and "max_new_tokens" in settings:
        settings["min_new_tokens"] = min(settings["min_new_tokens"], settings["max_new_tokens"])
    if settings.get("num_beams", 1) == 1:  # greedy: a length penalty would change nothing
        for name in BEAM_ONLY:
            settings.pop(name, None)
    return settings


def run_decoding_study(study: DecodingStudy) -> DecodingResult:
    """Run (or continue) the decoding study to ``space.num_samples`` trials; choose and mark the fronts."""
    clock = time.perf_counter()
    earlier = read_decoding(study.directory) or {}
    if earlier.get("study") != study.study_name:  # other checkpoints, settings or data: not comparable
        earlier = {}
    # a baseline that failed (the machine busy, say) is measured again: the choice is compared with it
    baselines = [DecodingTrial(**r) for r in earlier.get("records", []) if r["number"] == BASELINE and not r["error"]]
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
    import ray

    space, labels = study.space, list(study.models)
    scorer = remote_scorer(study.resources)

    def submit(label: str, settings: dict):
        location = study.models[label][0]
        return scorer.remote(location, study.settings, "validation", settings, space.max_eval_samples)

    pending = {}  # Ray reference -> (Optuna trial, or None for a baseline; label; settings)
    for label in labels:
        if not any(r.checkpoint == label for r in baselines):
            pending[submit(label, study.models[label][1])] = (None, label, study.models[label][1])
    remaining = space.num_samples - len(_study_records(optuna_study))
    slots = task_slots(study.resources, remaining + len(pending), per="worker")
    try:
        _decode_until_done(study, optuna_study, baselines, written, submit, pending, remaining, slots)
    finally:  # a stage that fails (or is interrupted) gives back what its queued decodings hold
        for reference in pending:
            try:
                ray.cancel(reference, force=True)
            except Exception:  # noqa: BLE001, S110 (a node already lost: the failure that ended the stage is the one to tell)
                pass


def _decode_until_done(study, optuna_study, baselines, written, submit, pending: dict, remaining: int, slots: int):
    import ray

    space, labels = study.space, list(study.models)
    while remaining > 0 or pending:
        while remaining > 0 and len(pending) < slots:
            trial = optuna_study.ask()
            # in a fixed order: Optuna refuses a categorical whose choices come in another order next time
            label = trial.suggest_categorical(CHECKPOINT_PARAM, sorted(labels)) if len(labels) > 1 else labels[0]
            sampled = {name: dist.suggest(trial, name) for name, dist in space.search.items()}
            settings = generate_settings(study.models[label][1], sampled)
            pending[submit(label, settings)] = (trial, label, settings)
            remaining -= 1
        [ready], _ = ray.wait(list(pending), num_returns=1)
        trial, label, settings = pending.pop(ready)
        record = DecodingTrial(BASELINE if trial is None else trial.number, label, settings)
        try:
            record.scores = ray.get(ready)
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

    trial.set_user_attr("record", asdict(record))
    if record.error is not None:
        optuna_study.tell(trial, state=optuna.trial.TrialState.FAIL)
        return
    for key, limit in constraints.items():  # Optuna's constrained TPE: a value at or below 0 is met
        if limit is not None:
            trial.set_constraint(key, record.scores[key] - limit)
    optuna_study.tell(trial, record.scores[objective])


def _study_records(optuna_study) -> list[DecodingTrial]:
    trials = optuna_study.get_trials(deepcopy=False)
    return [DecodingTrial(**t.user_attrs["record"]) for t in trials if "record" in t.user_attrs]


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
        "records": [asdict(r) for r in records],
    }
    atomic_write_text(study.directory / DECODING_FILE, json.dumps(document, indent=2, default=str))


def tune_model(
    model: str, out: Path, space: SearchSpace, settings: ExperimentSettings, address: str | None = None
) -> DecodingResult:
    """``tune-decoding``: the decoding study on any seq2seq model (a directory, a hub name, ``tiny:FAMILY``).

    ``out`` gets a copy of the model, the study (``decoding.db``, ``decoding.json``) and, once chosen,
    the tuned ``generation_config.json``; run again with the same ``out``, the study continues.
    """
    from tune_dialsum.cluster import start_ray
    from tune_dialsum.export import record_scores, set_generation_config

    out = Path(out).expanduser().resolve()  # Ray tasks read the model from here
    holds_study = (out / DECODING_FILE).is_file() or (out / DECODING_DB).is_file()  # stopped before its first record
    if out.exists() and not holds_study and any(out.iterdir()):
        raise UsageError(f"--out {out}: exists and holds no decoding study; pass a new directory")
    source = str(Path(model).expanduser().resolve()) if Path(model).expanduser().is_dir() else model
    source_file = out / DECODING_SOURCE_FILE  # (a study begun before it was recorded continues unchecked)
    recorded = json.loads(source_file.read_text())["model"] if source_file.is_file() else None
    if recorded is not None and recorded != source and Path(recorded) != out:
        raise UsageError(
            f"--out {out}: holds the decoding study of {recorded}, not of {model}; pass that model to continue "
            "its study, or a new --out for this one"
        )
    if not (out / "config.json").is_file():
        with atomic_directory(out) as staging:  # an interrupted copy leaves no half model behind
            _copy_model(model, staging, settings)
            atomic_write_text(staging / DECODING_SOURCE_FILE, json.dumps({"model": source}))
    settings = _on_the_models_rows(settings, out)
    earlier = read_decoding(out) or {}
    baseline = next((r["settings"] for r in earlier.get("records", []) if r["number"] == BASELINE), None)
    study = DecodingStudy(
        f"{space.name}-decoding",
        out,
        {"model": (str(out), baseline or _model_decoding(out))},
        space.decoding,
        settings,
        space.resources,
        space.seed,
    )
    started_ray = start_ray(address)
    try:
        result = run_decoding_study(study)
    finally:
        if started_ray:
            import ray

            ray.shutdown()
    set_generation_config(out, result.chosen.settings if result.chosen else study.models["model"][1])
    if (out / TUNING_FILE).is_file():  # an export: its record and card gain the decoding stage
        _set_aside_earlier_scores(out)
        record_scores(out, decoding=result.as_record(None))
    return result


def _on_the_models_rows(settings: ExperimentSettings, model_dir: Path) -> ExperimentSettings:
    """``settings`` with the seed the model's held-out rows were drawn with, where it records one.

    Where the data has no validation split, rows are held out of train by a seeded draw: decoding
    chosen with another seed would be chosen on rows the model trained on.
    """
    import dataclasses

    recorded = None
    for name in (TUNING_FILE, RECIPE_FILE):
        if recorded is None and (model_dir / name).is_file():
            document = json.loads((model_dir / name).read_text())
            # an export from before data_seed was recorded: its search's settings hold the seed
            recorded = document.get("data_seed", (document.get("settings") or {}).get("seed"))
    if recorded is None or recorded == settings.seed:
        return settings
    logger.info("held-out rows drawn with the model's seed %s (the space says %s)", recorded, settings.seed)
    return dataclasses.replace(settings, seed=int(recorded))


def _set_aside_earlier_scores(model_dir: Path) -> None:
    """An export's validation and test scores were measured with its earlier decoding: keep them, labelled so."""
    tuning = json.loads((model_dir / TUNING_FILE).read_text())
    earlier = {k: tuning.pop(k) for k in ("full_validation", "test", "test_training_decoding") if k in tuning}
    if earlier:
        tuning["scores_before_decoding_tuning"] = earlier
        atomic_write_text(model_dir / TUNING_FILE, json.dumps(tuning, indent=2, default=str))


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
    settings = format_settings(chosen.settings)
    return f"{head}\n  chosen, trial {chosen.number}{where} ({settings}): {_describe(chosen, result)}{versus}"


def _describe(record: DecodingTrial, result: DecodingResult) -> str:
    scores = record.scores
    return (
        f"{result.objective} {scores[result.objective]:.4f}, {scores[f'mean_{result.length_unit}']:.1f} "
        f"{result.length_unit}, "
        f"{scores['seconds_per_summary']:.3f} s per summary"
    )


def _copy_model(model: str, out: Path, settings: ExperimentSettings) -> None:
    """The model's files in ``out``: copied from a directory, else loaded (hub, tiny) and saved."""
    from tune_dialsum.checkpoints import TRAINING_ONLY
    from tune_dialsum.models import load_model_and_tokenizer

    if Path(model).is_dir():
        if not (Path(model) / "config.json").is_file():
            raise UsageError(f"{model}: not a model directory (no config.json); pass an export or a model name")
        shutil.copytree(model, out, ignore=shutil.ignore_patterns(*TRAINING_ONLY, "rng_state*"), dirs_exist_ok=True)
        return
    loaded, tokenizer = load_model_and_tokenizer(model, settings.trust_remote_code, settings.data.path)
    loaded.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _model_decoding(model_dir: Path) -> dict:
    """The model's own decoding (what its generation config sets): the baseline tuned decodings are compared with."""
    from transformers import GenerationConfig

    if not (model_dir / "generation_config.json").is_file():
        return {}
    config = GenerationConfig.from_pretrained(model_dir)
    names = ("num_beams", "max_length", "max_new_tokens", *DECODING_SETTINGS)
    return {name: getattr(config, name) for name in dict.fromkeys(names) if getattr(config, name, None) is not None}


__all__ = [
    "DECODING_DB",
    "DECODING_FILE",
    "DecodingResult",
    "DecodingStudy",
    "DecodingTrial",
    "choose",
    "chosen_decoding",
    "forget_choice",
    "format_result",
    "generate_settings",
    "mark_fronts",
    "read_decoding",
    "run_decoding_study",
    "tune_model",
]
