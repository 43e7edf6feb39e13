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
    per_adapter: {none|lora: {SETTING: DISTRIBUTION}}        # overrides once the adapter is known

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

from pathlib import Path

import yaml

from tune_dialsum.errors import SpaceError
from tune_dialsum.space_checks import OTHER_SPELLING
from tune_dialsum.space_model import (  # noqa: F401 (the space's model, read where the space is loaded)
    DECODING_SETTINGS,
    DEFAULT_SETTINGS,
    SETTINGS,
    Distribution,
    SearchSpace,
    default_startup_trials,
)
from tune_dialsum.space_parse import parse_space


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
    if parts[0] == "resources" and parts[-1] in OTHER_SPELLING:  # a trial's total and a worker's share
        node.pop(OTHER_SPELLING[parts[-1]], None)  # name the same resource: the override replaces both
