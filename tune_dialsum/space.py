"""Search-space files: YAML -> a validated :class:`SearchSpace` -> Optuna distributions.

This module imports neither Ray nor torch: a space is checked completely, with
one-line errors that name the file and key, before anything starts.

A space file has these sections (all but ``search`` optional; every key, with its default and help,
is a field in space_schema.py, and ``python -m tune_dialsum space-keys`` prints them all)::

    name, description, storage_path, seed, trust_remote_code
    data, objective, scheduler, trials, resources, checkpoints, selection, tracking, decoding
    fixed: {SETTING: value}       # held fixed for every trial
    search: {SETTING: DISTRIBUTION}
    per_family: {bart|t5|pegasus: {SETTING: DISTRIBUTION}}   # overrides once the model is known

``budget_unit: samples`` counts training examples seen (steps x batch x accumulation x workers),
so trials with different batch sizes are compared after equal work; evaluations and ASHA's rungs
fall at multiples of ``eval_interval`` examples. ``max_concurrent`` left out runs as many trials at
once as the cluster's resources fit.

A DISTRIBUTION is one of ``{choice: [..]}``, ``{uniform: [low, high]}``,
``{loguniform: [low, high]}``, ``{quniform: [low, high, step]}``,
``{int: [low, high]}``, ``{logint: [low, high]}``, ``{qint: [low, high, step]}``.

Trials are scored during training with one cheap decoding (``generation_num_beams``, greedy by
default). How the chosen checkpoints *write* (beams, length penalty, repetition) is searched
afterwards, in ``decoding``, without retraining (decoding.py).
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from tune_dialsum.contract import BUDGET_UNITS, OBJECTIVES, RUNG_METRICS, default_mode
from tune_dialsum.data.formats import DIALOGUE_FORMATS
from tune_dialsum.errors import SpaceError
from tune_dialsum.models import FAMILIES, family_of
from tune_dialsum.space_schema import (
    SECTIONS,
    SETTINGS_SECTIONS,
    TOP_LEVEL,
    CheckpointsSection,
    DataSection,
    DecodingSpace,
    ObjectiveSection,
    ResourcesSection,
    SchedulerSection,
    SelectionSection,
    TrackingSection,
    TrialSettings,
    TrialsSection,
    section_keys,
)
from tune_dialsum.uris import credentials_problem

logger = logging.getLogger(__name__)

# Every setting a trial takes, with its type: the fields of the one record a trial trains with.
SETTINGS: dict[str, type] = {f.name: f.metadata["kind"] for f in fields(TrialSettings)}
DEFAULT_SETTINGS = {f.name: f.default for f in fields(TrialSettings) if f.default is not None}
MIXED_PRECISION = ("auto", "bf16", "fp16", "no")  # auto: bf16 where the GPU has it, else fp16; none on CPU
# ``generate()`` settings the decoding stage searches, with their types.
DECODING_SETTINGS: dict[str, type] = {
    "num_beams": int,
    "length_penalty": float,
    "no_repeat_ngram_size": int,
    "min_new_tokens": int,
    "max_new_tokens": int,
    "repetition_penalty": float,
}
LENGTH_UNITS = ("words", "tokens")
TRACKING_BACKENDS = ("mlflow",)
DISTRIBUTIONS = {"choice", "uniform", "loguniform", "quniform", "int", "logint", "qint"}
TOP_LEVEL_KEYS = [*TOP_LEVEL, *SECTIONS, *SETTINGS_SECTIONS]


@dataclass(frozen=True)
class Distribution:
    kind: str
    args: tuple

    def suggest(self, trial, name: str):
        """Ask an Optuna trial (or Ray's captor of one) for a value."""
        low, high, *rest = self.args if self.kind != "choice" else (None, None)
        if self.kind == "choice":
            return trial.suggest_categorical(name, list(self.args))
        if self.kind in ("uniform", "loguniform", "quniform"):
            return trial.suggest_float(name, low, high, log=self.kind == "loguniform", step=rest[0] if rest else None)
        return trial.suggest_int(name, low, high, log=self.kind == "logint", step=rest[0] if rest else 1)

    @property
    def bounds(self) -> tuple | None:
        return None if self.kind == "choice" else self.args[:2]


@dataclass(frozen=True)
class SearchSpace:
    """A validated search space; see the module docstring for the file format, space_schema.py for every key."""

    name: str
    source: str
    data: DataSection
    objective: ObjectiveSection  # its mode filled in from the metric
    fixed: dict[str, Any]
    search: dict[str, Distribution]
    per_family: dict[str, dict[str, Distribution]]
    scheduler: SchedulerSection  # grace_period and eval_interval filled in
    trials: TrialsSection  # startup_trials filled in
    resources: ResourcesSection  # both the trial's totals and one worker's share filled in
    checkpoints: CheckpointsSection
    selection: SelectionSection
    storage_path: str
    seed: int
    trust_remote_code: bool = False
    decoding: DecodingSpace | None = None  # None: exported with the decoding trials were scored with
    tracking: TrackingSection | None = None  # None: no experiment tracker
    raw: dict = field(default_factory=dict, repr=False)

    @property
    def metric(self) -> str:
        return self.objective.metric

    @property
    def mode(self) -> str:
        return self.objective.mode

    # -- sampling -------------------------------------------------------------------
    def define_by_run(self, trial) -> dict[str, Any]:
        """Optuna define-by-run: sample one trial's settings, family-specific ranges included.

        A family's ranges are sampled under their own names (``learning_rate@t5``)
        because their bounds differ; the returned dict maps them back to the setting.
        """
        config = dict(self.fixed)
        if "model" in self.search:
            config["model"] = self.search["model"].suggest(trial, "model")
        family = family_of(config["model"]).name
        family_ranges = self.per_family.get(family, {})
        for name, distribution in self.search.items():
            if name != "model" and name not in family_ranges:
                config[name] = distribution.suggest(trial, name)
        for name, distribution in family_ranges.items():
            config[name] = distribution.suggest(trial, f"{name}@{family}")
        return config

    @property
    def searched_settings(self) -> list[str]:
        names = [*self.search, *(n for family in self.per_family.values() for n in family)]
        return list(dict.fromkeys(names))

    @property
    def models(self) -> list[str]:
        if "model" in self.search:
            return list(self.search["model"].args)
        return [self.fixed["model"]]


# -- loading and validation --------------------------------------------------------------


def default_startup_trials(num_samples: int) -> int:
    """Random trials before TPE models the results: 3 below 64 trials, one in 16 above, at most 10.

    Chosen by replaying recorded curves (BENCHMARKS.md, "Defaults chosen from the replay"): 3 start-up
    trials reached the best configuration sooner than 5, 8 or 10 at 64 trials per search, and than the
    earlier rule's 4 at 16.
    Optuna's default of 10 would leave a search of 8 trials entirely random; fewer than 3 gives TPE
    nothing to split into good and bad.
    """
    return min(10, max(3, num_samples // 16))


def _searched(search: dict, per_family: dict) -> set[str]:
    return set(search) | {name for block in per_family.values() for name in block}


def load_space(path: str | Path, overrides: list[str] | None = None) -> SearchSpace:
    """Read, override (``key.sub=value``) and validate a space file."""
    raw = read_space_file(path)
    for override in overrides or []:
        _apply_override(raw, override, Path(path))
    return parse_space(raw, source=str(path), default_name=Path(path).stem)


# What ``tune-decoding`` searches where no space file (or one without a decoding section) is given.
DEFAULT_DECODING = {
    "search": {
        "num_beams": {"choice": [1, 2, 4, 6]},
        "length_penalty": {"uniform": [0.6, 2.0]},
        "no_repeat_ngram_size": {"choice": [0, 3]},
        "max_new_tokens": {"choice": [64, 128]},  # a bound of its own: a config without one stops at 20 tokens
    },
    "num_samples": 12,
}


def decoding_space(path: str | Path | None, data_path: str, model: str) -> SearchSpace:
    """The space ``tune-decoding`` runs: the file's data and decoding sections (or the defaults), on ``data_path``."""
    raw = read_space_file(path) if path is not None else {"name": "tune-decoding"}
    raw["scheduler"] = {"max_budget": 1, **(raw.get("scheduler") or {})}  # nothing trains: any budget will do
    raw["data"] = {**(raw.get("data") or {}), "path": data_path}
    raw["fixed"] = {**(raw.get("fixed") or {}), "model": model}
    raw["decoding"] = raw.get("decoding") or DEFAULT_DECODING
    return parse_space(raw, source=str(path or "tune-decoding"), default_name="tune-decoding", training=False)


def read_space_file(path: str | Path) -> dict:
    """A space file's raw mapping; a file that is not one fails in one line."""
    path = Path(path)
    if not path.is_file():
        raise SpaceError(f"{path}: no such space file; see search_spaces/ for examples")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise SpaceError(f"{path}: YAML syntax error{where}: {problem}") from None
    except UnicodeDecodeError:
        raise SpaceError(f"{path}: not UTF-8 text; save the file as UTF-8") from None
    if raw is None:
        raise SpaceError(f"{path}: the file is empty; it needs at least a 'search' section")
    if not isinstance(raw, dict):
        raise SpaceError(f"{path}: the top level must be a mapping of sections, not a {type(raw).__name__}")
    return raw


def _apply_override(raw: dict, override: str, path: Path) -> None:
    key, sep, value = override.partition("=")
    if not sep or not key:
        raise SpaceError(f"--set {override!r}: expected KEY=VALUE, e.g. --set trials.num_samples=4")
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise SpaceError(f"--set {override!r}: {part!r} in {path} is not a section")
    node[parts[-1]] = yaml.safe_load(value)
    if parts[0] == "resources" and parts[-1] in _OTHER_SPELLING:  # a trial's total and a worker's share
        node.pop(_OTHER_SPELLING[parts[-1]], None)  # name the same resource: the override replaces both


_OTHER_SPELLING = {
    f"{kind}_per_{a}": f"{kind}_per_{b}"
    for kind in ("cpus", "gpus")
    for a, b in (("trial", "worker"), ("worker", "trial"))
}


class _Checker:
    """Reads typed values out of the raw mapping, naming the file and key in every error."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, message: str):
        raise SpaceError(f"{self.source}: {key}: {message}")

    def section(self, raw: dict, key: str, allowed: set[str] | None) -> dict:
        value = raw.get(key) or {}
        if not isinstance(value, dict):
            self.fail(key, f"must be a mapping, not {type(value).__name__}")
        if allowed is not None:
            for name in value:
                if name not in allowed:
                    self.fail(f"{key}.{name}", f"unknown key; valid keys: {', '.join(sorted(allowed))}")
        return value

    def number(self, key: str, value, kind: type, minimum=None, strict: bool = False):
        # YAML 1.1 reads 1e-5 (no dot) as a string: coerce explicitly.
        if isinstance(value, bool):
            self.fail(key, f"expected a number but got {value!r}")
        try:
            number = kind(value)
        except (TypeError, ValueError):
            self.fail(key, f"expected {'an integer' if kind is int else 'a number'} but got {value!r}")
        if kind is int and float(value) != number:
            self.fail(key, f"expected an integer but got {value!r}")
        if kind is float and not math.isfinite(number):
            self.fail(key, f"expected a finite number but got {value!r}")
        if minimum is not None and (number <= minimum if strict else number < minimum):
            self.fail(key, f"must be {'greater than' if strict else 'at least'} {minimum} but got {value!r}")
        return number

    def setting(self, key: str, name: str, value):
        kind = SETTINGS.get(name) or DECODING_SETTINGS[name]
        if kind is bool:
            if not isinstance(value, bool):
                self.fail(key, f"expected true or false but got {value!r}")
            return value
        if name == "mixed_precision" and value is False:
            value = "no"  # YAML 1.1 reads a bare `no` as false
        if kind is str:
            if not isinstance(value, str) or not value:
                self.fail(key, f"expected a non-empty string but got {value!r}")
            if name == "mixed_precision" and value not in MIXED_PRECISION:
                self.fail(key, f"unknown precision {value!r}; use one of {', '.join(MIXED_PRECISION)}")
            if name == "dialogue_format" and value not in DIALOGUE_FORMATS:
                self.fail(key, f"unknown dialogue format {value!r}; use one of {', '.join(DIALOGUE_FORMATS)}")
            if name == "model" and value.startswith("tiny:") and value[5:] not in FAMILIES:
                self.fail(key, f"unknown model family {value[5:]!r} in {value!r}; use tiny:{'|tiny:'.join(FAMILIES)}")
            return value
        positive = name in (
            "learning_rate",
            "max_input_length",
            "max_target_length",
            "batch_size",
            "gradient_accumulation_steps",
            "num_train_epochs",
            "generation_num_beams",
            "generation_max_length",
            "num_beams",
            "max_new_tokens",
            "repetition_penalty",
        )
        if name == "length_penalty":  # an exponent on the length: negative favours short summaries
            return self.number(key, value, kind)
        number = self.number(key, value, kind, minimum=0, strict=positive)
        if name in ("warmup_ratio", "label_smoothing") and number >= 1:
            self.fail(key, f"{name} is a fraction: it must be below 1 but got {value!r}")
        return number

    def distribution(self, key: str, name: str, spec) -> Distribution:
        if not isinstance(spec, dict) or len(spec) != 1:
            self.fail(
                key, f"expected one distribution such as {{choice: [...]}} or {{loguniform: [low, high]}}, got {spec!r}"
            )
        kind, args = next(iter(spec.items()))
        if kind not in DISTRIBUTIONS:
            self.fail(key, f"unknown distribution {kind!r}; use one of {', '.join(sorted(DISTRIBUTIONS))}")
        if not isinstance(args, list):
            self.fail(f"{key}.{kind}", f"expected a list but got {args!r}")
        if kind == "choice":
            if not args:
                self.fail(f"{key}.choice", "the list of choices is empty; give at least one value")
            return Distribution(kind, tuple(self.setting(f"{key}.choice[{i}]", name, v) for i, v in enumerate(args)))
        setting_kind = SETTINGS.get(name) or DECODING_SETTINGS[name]
        if setting_kind is str:
            self.fail(key, f"{name} takes text values; use {{choice: [...]}}")
        stepped = kind in ("quniform", "qint")
        if len(args) != (3 if stepped else 2):
            self.fail(f"{key}.{kind}", f"expected [low, high{', step' if stepped else ''}] but got {args!r}")
        number_kind = int if kind in ("int", "logint", "qint") else float
        if setting_kind is int and number_kind is float:
            self.fail(key, f"{name} takes whole numbers; use int, logint or qint instead of {kind}")
        values = [self.number(f"{key}.{kind}", v, number_kind) for v in args]
        low, high = values[0], values[1]
        if low >= high:
            self.fail(f"{key}.{kind}", f"low must be below high but got low={args[0]!r}, high={args[1]!r}")
        if kind.startswith("log") and low <= 0:
            self.fail(
                f"{key}.{kind}", f"a log range must be above 0 but got low={args[0]!r}; use uniform, or a positive low"
            )
        if stepped and values[2] <= 0:
            self.fail(f"{key}.{kind}", f"step must be positive but got {args[2]!r}")
        self.setting(f"{key}.{kind}", name, low)
        self.setting(f"{key}.{kind}", name, high)
        return Distribution(kind, tuple(values))


def parse_space(raw: dict, source: str = "<space>", default_name: str = "search", training: bool = True) -> SearchSpace:
    """Validate a raw space; ``training=False`` (the decoding stage alone) needs nothing searched in training."""
    check = _Checker(source)
    for key in raw:
        if key not in TOP_LEVEL_KEYS:
            check.fail(key, f"unknown key; valid keys: {', '.join(TOP_LEVEL_KEYS)}")
    fixed, search, per_family = _parse_settings(check, raw, training)
    scheduler = _parse_scheduler(check, raw)
    _warn_about_searched(source, scheduler, _searched(search, per_family))
    objective = _parse_objective(check, raw)
    selection = _parse_selection(check, raw)
    if selection.refit and objective.metric == "eval_loss":
        check.fail(
            "selection.refit",
            "a refit is compared with the chosen checkpoint on ROUGE over all of validation; with the objective "
            "eval_loss set it to false, or optimise a ROUGE score",
        )
    resources = _parse_resources(check, _values(check, raw, "resources"), source)
    if selection.refit and resources.workers_per_trial > 1:
        check.fail(
            "selection.refit",
            "a refit trains in one process, so it cannot repeat a data-parallel trial (workers_per_trial "
            f"{resources.workers_per_trial}); set it to false, or workers_per_trial to 1",
        )
    return SearchSpace(
        name=_parse_name(check, raw, default_name),
        source=source,
        data=_parse_data(check, raw),
        objective=objective,
        fixed=fixed,
        search=search,
        per_family=per_family,
        scheduler=scheduler,
        trials=_parse_trials(check, raw),
        resources=resources,
        checkpoints=CheckpointsSection(
            keep=check.number(
                "checkpoints.keep",
                _values(check, raw, "checkpoints").get("keep", CheckpointsSection.keep),
                int,
                minimum=1,
            )
        ),
        selection=selection,
        storage_path=_parse_storage_path(check, raw),
        seed=check.number("seed", raw.get("seed", TOP_LEVEL["seed"][0]), int),
        trust_remote_code=_parse_trust_remote_code(check, raw),
        decoding=_parse_decoding(check, raw, selection.top_k),
        tracking=_parse_tracking(check, raw),
        raw=copy.deepcopy(raw),
    )


def _parse_selection(check: _Checker, raw: dict) -> SelectionSection:
    values = _values(check, raw, "selection")
    refit = values.get("refit", SelectionSection.refit)
    if not isinstance(refit, bool):
        check.fail("selection.refit", f"expected true or false but got {refit!r}")
    top_k = check.number("selection.top_k", values.get("top_k", SelectionSection.top_k), int, 1)
    return SelectionSection(top_k=top_k, refit=refit)


def _values(check: _Checker, raw: dict, name: str) -> dict:
    """The keys a section sets, every one of them a field of its dataclass (the first part, where nested)."""
    return check.section(raw, name, {spelled.split(".")[0] for spelled in section_keys(SECTIONS[name])})


def _defaults(section: type) -> dict:
    return {f.name: f.default for f in fields(section)}


def _parse_name(check: _Checker, raw: dict, default_name: str) -> str:
    name = str(raw.get("name") or default_name)
    if not name.replace("-", "").replace("_", "").replace(".", "").isalnum() or name.startswith("."):
        check.fail("name", f"{name!r} must be letters, digits, '-', '_' or '.' (it names a directory)")
    return name


def _parse_storage_path(check: _Checker, raw: dict) -> str:
    storage_path = raw.get("storage_path", TOP_LEVEL["storage_path"][0])
    if not isinstance(storage_path, str) or not storage_path:
        check.fail("storage_path", f"expected a path but got {storage_path!r}")
    if credentials_problem(storage_path):
        check.fail("storage_path", credentials_problem(storage_path))
    return storage_path


def _parse_trust_remote_code(check: _Checker, raw: dict) -> bool:
    trust = raw.get("trust_remote_code", TOP_LEVEL["trust_remote_code"][0])
    if not isinstance(trust, bool):
        check.fail("trust_remote_code", f"expected true or false but got {trust!r}")
    return trust


def _parse_data(check: _Checker, raw: dict) -> DataSection:
    data = {**_defaults(DataSection), **_values(check, raw, "data")}
    if not isinstance(data["path"], str) or not data["path"]:
        check.fail("data.path", f"expected a directory path but got {data['path']!r}")
    if credentials_problem(data["path"]):
        check.fail("data.path", credentials_problem(data["path"]))
    for key in ("max_train_samples", "max_eval_samples"):
        if data[key] is not None:
            data[key] = check.number(f"data.{key}", data[key], int, minimum=1)
    data["validation_split"] = check.number(
        "data.validation_split", data["validation_split"], float, minimum=0, strict=True
    )
    if data["validation_split"] >= 1:
        check.fail("data.validation_split", f"must be below 1 but got {data['validation_split']!r}")
    return DataSection(**data)


def _parse_objective(check: _Checker, raw: dict) -> ObjectiveSection:
    objective = _values(check, raw, "objective")
    metric = objective.get("metric", ObjectiveSection.metric)
    if metric not in OBJECTIVES:
        check.fail("objective.metric", f"unknown metric {metric!r}; use one of {', '.join(OBJECTIVES)}")
    mode = objective.get("mode", default_mode(metric))
    if mode not in ("min", "max"):
        check.fail("objective.mode", f"must be 'min' or 'max' but got {mode!r}")
    if mode != default_mode(metric):
        better = {"min": "lower", "max": "higher"}[default_mode(metric)]
        check.fail("objective.mode", f"{metric} is better {better}: use mode: {default_mode(metric)}")
    return ObjectiveSection(metric=metric, mode=mode)


def _parse_settings(check: _Checker, raw: dict, training: bool) -> tuple[dict, dict, dict]:
    """``fixed`` (with the defaults), ``search`` and ``per_family``: what a trial trains with."""
    _refuse_decoding_settings(check, raw)
    fixed = {**DEFAULT_SETTINGS}
    for name, value in check.section(raw, "fixed", set(SETTINGS)).items():
        fixed[name] = check.setting(f"fixed.{name}", name, value)
    search_raw = check.section(raw, "search", set(SETTINGS))
    search = {name: check.distribution(f"search.{name}", name, spec) for name, spec in search_raw.items()}
    for name in search:
        fixed.pop(name, None)
    if not search and training:
        check.fail("search", "no setting is searched; add at least one, e.g. learning_rate: {loguniform: [1e-5, 1e-4]}")
    per_family = {}
    for family, settings in check.section(raw, "per_family", set(FAMILIES)).items():
        block = check.section({family: settings}, family, set(SETTINGS))
        per_family[family] = {n: check.distribution(f"per_family.{family}.{n}", n, s) for n, s in block.items()}
        if "model" in per_family[family]:
            check.fail(f"per_family.{family}.model", "the model decides the family; search it under 'search'")
    if "model" not in search and "model" not in fixed:
        check.fail("search", "no model: set fixed.model or search model: {choice: [...]}")
    for where, block in (("search", search), *((f"per_family.{f}", b) for f, b in per_family.items())):
        if "num_train_epochs" in block:
            check.fail(
                f"{where}.num_train_epochs",
                "has no effect: the scheduler sets every trial's budget (scheduler.max_budget); remove it from the search",
            )
    return fixed, search, per_family


def _parse_scheduler(check: _Checker, raw: dict) -> SchedulerSection:
    scheduler = {**_defaults(SchedulerSection), **_values(check, raw, "scheduler")}
    if scheduler["type"] not in ("asha", "fifo"):
        check.fail("scheduler.type", f"must be 'asha' or 'fifo' but got {scheduler['type']!r}")
    if scheduler["budget_unit"] not in BUDGET_UNITS:
        check.fail(
            "scheduler.budget_unit", f"must be one of {', '.join(BUDGET_UNITS)} but got {scheduler['budget_unit']!r}"
        )
    if scheduler["max_budget"] is None:
        check.fail("scheduler.max_budget", f"missing: the most {scheduler['budget_unit']} a trial may train")
    scheduler["max_budget"] = check.number("scheduler.max_budget", scheduler["max_budget"], int, minimum=1)
    for key, default in (("eval_interval", max(1, scheduler["max_budget"] // 4)), ("grace_period", None)):
        value = scheduler[key] if scheduler[key] is not None else (default or scheduler["eval_interval"])
        scheduler[key] = check.number(f"scheduler.{key}", value, int, minimum=1)
    scheduler["reduction_factor"] = check.number(
        "scheduler.reduction_factor", scheduler["reduction_factor"], float, minimum=1, strict=True
    )
    if scheduler["rung_metric"] not in RUNG_METRICS:
        check.fail(
            "scheduler.rung_metric",
            f"must be one of {', '.join(RUNG_METRICS)} but got {scheduler['rung_metric']!r}",
        )
    for key in ("eval_interval", "grace_period"):
        if scheduler[key] > scheduler["max_budget"]:
            check.fail(
                f"scheduler.{key}",
                f"{scheduler[key]} exceeds max_budget {scheduler['max_budget']}; lower it or raise max_budget",
            )
    return SchedulerSection(**scheduler)


def _warn_about_searched(source: str, scheduler: SchedulerSection, searched: set[str]) -> None:
    """Searches that run but compare trials unfairly or waste retrainings: warned about, not refused."""
    batch_searched = [n for n in ("batch_size", "gradient_accumulation_steps") if n in searched]
    if scheduler.budget_unit == "steps" and batch_searched and scheduler.type == "asha":
        # A user may mean it. But a step of batch 16 is twice the work of a step of batch 8.
        logger.warning(
            "%s: %s searched with budget_unit: steps, so ASHA compares trials after unequal work; "
            "budget_unit: samples compares them after the same number of training examples",
            source,
            " and ".join(batch_searched) + (" are" if len(batch_searched) > 1 else " is"),
        )
    loss_scale = [n for n in ("model", "max_target_length", "label_smoothing") if n in searched]
    if scheduler.rung_metric != "objective" and loss_scale:
        logger.warning(
            "%s: scheduler.rung_metric %s compares validation losses, but %s %s searched and changes the "
            "loss's scale (vocabulary, tokens scored, smoothing); rung_metric: objective compares them fairly",
            source,
            scheduler.rung_metric,
            " and ".join(loss_scale),
            "are" if len(loss_scale) > 1 else "is",
        )
    if "generation_num_beams" in searched:
        logger.warning(
            "%s: generation_num_beams searched in training: each value costs a retraining; the decoding section "
            "(decoding.search.num_beams) tries beam widths on the trained checkpoints instead",
            source,
        )


def _parse_trials(check: _Checker, raw: dict) -> TrialsSection:
    trials = {**_defaults(TrialsSection), **_values(check, raw, "trials")}
    if trials["sampler"] not in ("tpe", "random"):
        check.fail("trials.sampler", f"must be 'tpe' or 'random' but got {trials['sampler']!r}")
    trials["num_samples"] = check.number("trials.num_samples", trials["num_samples"], int, minimum=1)
    if trials["max_concurrent"] is not None:  # None: as many as the cluster's resources fit
        trials["max_concurrent"] = check.number("trials.max_concurrent", trials["max_concurrent"], int, minimum=1)
    if trials["startup_trials"] is None:  # TPE's random start-up, sized to the search (benchmarks/replay.py)
        trials["startup_trials"] = default_startup_trials(trials["num_samples"])
    trials["startup_trials"] = check.number("trials.startup_trials", trials["startup_trials"], int, minimum=1)
    if trials["time_budget_s"] is not None:
        trials["time_budget_s"] = check.number(
            "trials.time_budget_s", trials["time_budget_s"], float, minimum=0, strict=True
        )
    return TrialsSection(**trials)


def _parse_resources(check: _Checker, section: dict, source: str) -> ResourcesSection:
    """A trial's resources: one process (``*_per_trial``) or ``workers_per_trial`` data-parallel workers.

    The result holds both views: ``cpus_per_trial``/``gpus_per_trial`` are a trial's totals (what the
    cluster must have room for), ``*_per_worker`` what one process gets (a scoring task's share too).
    """
    workers = section.get("workers_per_trial", ResourcesSection.workers_per_trial)
    workers = check.number("resources.workers_per_trial", workers, int, minimum=1)
    per_worker = {}
    for kind in ("cpus", "gpus"):
        trial_key, worker_key = f"{kind}_per_trial", f"{kind}_per_worker"
        if trial_key in section and worker_key in section:
            check.fail(f"resources.{trial_key}", f"give a trial's total or resources.{worker_key}, not both")
        key = f"resources.{worker_key if worker_key in section else trial_key}"
        value = section.get(worker_key, section.get(trial_key, getattr(ResourcesSection, trial_key)))
        value = check.number(key, value, float, minimum=0, strict=kind == "cpus")
        # a trial's total is split evenly over its workers
        per_worker[kind] = value if worker_key in section else value / workers
        if kind == "gpus" and per_worker[kind] > 1 and per_worker[kind] != int(per_worker[kind]):
            check.fail(key, f"above 1 must be a whole number per worker but got {per_worker[kind]:g}")
        if kind == "gpus" and workers > 1 and 0 < per_worker[kind] < 1:  # NCCL: "Duplicate GPU detected"
            check.fail(key, f"data-parallel workers need a whole GPU each but got {per_worker[kind]:g} per worker")
    if per_worker["gpus"] > 1:
        logger.warning(
            "%s: resources: %g GPUs for one process: transformers trains on them with torch's DataParallel, "
            "which is slower than data-parallel workers: workers_per_trial: %g with gpus_per_worker: 1",
            source,
            per_worker["gpus"],
            per_worker["gpus"],
        )
    return ResourcesSection(
        workers_per_trial=workers,
        cpus_per_worker=per_worker["cpus"],
        gpus_per_worker=per_worker["gpus"],
        cpus_per_trial=workers * per_worker["cpus"],
        gpus_per_trial=workers * per_worker["gpus"],
    )


def _parse_tracking(check: _Checker, raw: dict) -> TrackingSection | None:
    """``tracking: {backend: mlflow, uri: URI}``; no section, or ``backend: none``, tracks nothing."""
    tracking = _values(check, raw, "tracking")
    backend = tracking.get("backend", "mlflow" if tracking else "none")
    if backend in (None, "none"):
        return None
    if backend not in TRACKING_BACKENDS:
        check.fail("tracking.backend", f"must be one of {', '.join(TRACKING_BACKENDS)} or none but got {backend!r}")
    uri = tracking.get("uri")
    if uri is not None and (not isinstance(uri, str) or not uri):
        check.fail("tracking.uri", f"expected a tracking URI (a server or a local path) but got {uri!r}")
    if credentials_problem(uri):
        check.fail("tracking.uri", credentials_problem(uri))
    return TrackingSection(backend=backend, uri=uri)


def _refuse_decoding_settings(check: _Checker, raw: dict) -> None:
    """generate() settings belong to the decoding stage: searched in training, each value costs a retraining."""
    per_family = raw.get("per_family") if isinstance(raw.get("per_family"), dict) else {}
    blocks = [("fixed", raw.get("fixed")), ("search", raw.get("search"))]
    blocks += [(f"per_family.{family}", block) for family, block in per_family.items()]
    for where, block in blocks:
        for name in block if isinstance(block, dict) else ():
            if name in DECODING_SETTINGS:
                check.fail(
                    f"{where}.{name}",
                    f"a decoding setting: put it under decoding.search ({name}: {{choice: [...]}}), where it is "
                    "tried on the trained checkpoints without retraining",
                )


def _parse_decoding(check: _Checker, raw: dict, top_k: int) -> DecodingSpace | None:
    section = _values(check, raw, "decoding")
    if not section:
        return None
    search_raw = check.section({"decoding.search": section.get("search")}, "decoding.search", set(DECODING_SETTINGS))
    search = {n: check.distribution(f"decoding.search.{n}", n, spec) for n, spec in search_raw.items()}
    if not search:
        check.fail("decoding.search", "nothing to search; add a setting, e.g. num_beams: {choice: [1, 4]}")
    top_k_checkpoints = check.number(
        "decoding.top_k_checkpoints", section.get("top_k_checkpoints", DecodingSpace.top_k_checkpoints), int, 1
    )
    if top_k_checkpoints > top_k:
        check.fail(
            "decoding.top_k_checkpoints",
            f"{top_k_checkpoints} exceeds selection.top_k {top_k} (the checkpoints scored on all of validation); "
            f"lower it or raise selection.top_k",
        )
    max_eval = section.get("max_eval_samples")
    constrained = [spelled.split(".")[1] for spelled in section_keys(DecodingSpace) if "." in spelled]
    constraints = check.section(
        {"decoding.constraints": section.get("constraints")}, "decoding.constraints", set(constrained)
    )
    unit = constraints.get("length_unit", DecodingSpace.length_unit)
    if unit not in LENGTH_UNITS:
        check.fail("decoding.constraints.length_unit", f"must be one of {', '.join(LENGTH_UNITS)} but got {unit!r}")

    def limit(key: str) -> float | None:
        value = constraints.get(key)
        return None if value is None else check.number(f"decoding.constraints.{key}", value, float, 0, strict=True)

    return DecodingSpace(
        search=search,
        num_samples=check.number("decoding.num_samples", section.get("num_samples", DecodingSpace.num_samples), int, 1),
        top_k_checkpoints=top_k_checkpoints,
        max_eval_samples=None if max_eval is None else check.number("decoding.max_eval_samples", max_eval, int, 1),
        max_mean_length=limit("max_mean_length"),
        length_unit=unit,
        max_seconds_per_summary=limit("max_seconds_per_summary"),
    )
