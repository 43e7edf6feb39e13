"""Experiments as pandas frames, for the terminal and for notebooks.

Everything is read from the experiment directory on disk (Ray's per-trial
``params.json`` and ``result.json``, the space snapshot and the Optuna study),
so an experiment can be analysed while it is still running, on a machine
without Ray, long after the cluster is gone. An experiment kept at a URI is
read from its mirror on this machine (see storage.py), brought up to date on load.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import pandas as pd
import yaml

from tune_dialsum.checkpoints import CHECKPOINT_METADATA
from tune_dialsum.choices import BASELINE, read_decoding
from tune_dialsum.contract import (
    ERROR_FILE,
    OPTUNA_DB,
    PARAMS_FILE,
    PROGRESS_FILE,
    RESULT_FILE,
    SPACE_SNAPSHOT,
    STOPPED,
    TIME_ATTRS,
    best,
    trial_state,
)
from tune_dialsum.errors import UsageError
from tune_dialsum.models import family_of
from tune_dialsum.space import SearchSpace, parse_space
from tune_dialsum.storage import ExperimentStore


def read_reports(trial_dir: Path) -> list[dict]:
    """A trial's reports, in order, from Ray's result.json, or progress.csv where that has more.

    When Ray retries a failed trial it can leave result.json shorter than what was reported
    (even empty); progress.csv keeps every row.
    """
    result_file, progress_file = trial_dir / RESULT_FILE, trial_dir / PROGRESS_FILE
    reports = []
    if result_file.is_file():
        reports = [json.loads(line) for line in result_file.read_text().splitlines() if line.strip()]
    if progress_file.is_file() and progress_file.stat().st_size:
        progress = pd.read_csv(progress_file)
        if len(progress) > len(reports):
            reports = progress.to_dict("records")
    return reports


@dataclass
class Experiment:
    """One experiment: ``Experiment.load("ray_results/tiny-demo")`` or ``Experiment.load("s3://bucket/exps/tiny-demo")``."""

    path: Path  # where it is read: the experiment directory, or the mirror of a URI
    space: SearchSpace
    store: ExperimentStore

    @classmethod
    def load(cls, location: str | Path) -> Experiment:
        store = ExperimentStore(str(location))
        path = store.pull(CHECKPOINT_METADATA)
        snapshot = path / SPACE_SNAPSHOT
        if not snapshot.is_file():
            raise UsageError(
                f"{location}: not an experiment directory (no {SPACE_SNAPSHOT}); pass <storage-path>/<name> (a path or a URI)"
            )
        return cls(path, parse_space(yaml.safe_load(snapshot.read_text()), source=str(snapshot)), store)

    @property
    def metric(self) -> str:
        return self.space.metric

    @property
    def time_attr(self) -> str:
        return TIME_ATTRS[self.space.scheduler.budget_unit]

    # -- frames -----------------------------------------------------------------------
    @cached_property
    def curves(self) -> pd.DataFrame:
        """Every report of every trial: one row per evaluation."""
        rows = []
        for trial_dir in sorted(self.path.glob("trial_*")):
            trial_id = trial_dir.name.removeprefix("trial_")
            rows += [{"trial_id": trial_id, **report} for report in read_reports(trial_dir)]
        columns = ["trial_id", "step", "epoch", "samples", self.metric, "time_total_s"]
        frame = pd.DataFrame(rows)
        return frame if not frame.empty else pd.DataFrame(columns=columns)

    @cached_property
    def trials(self) -> pd.DataFrame:
        """One row per trial: its settings, state, best and last objective, budget used, wall time."""
        rows = []
        budget = self.space.scheduler.max_budget
        for trial_dir in sorted(self.path.glob("trial_*")):
            trial_id = trial_dir.name.removeprefix("trial_")
            params_file = trial_dir / PARAMS_FILE
            config = json.loads(params_file.read_text()) if params_file.is_file() else {}
            reports = self.curves[self.curves["trial_id"] == trial_id] if len(self.curves) else self.curves
            scores = [s for s in reports.get(self.metric, []) if isinstance(s, float) and math.isfinite(s)]
            used = float(reports[self.time_attr].iloc[-1]) if len(reports) else 0.0
            done = bool(len(reports) and reports["done"].iloc[-1]) if "done" in reports else False
            failed = (trial_dir / ERROR_FILE).is_file()  # (kept where a retry recovered: done says so)
            state = trial_state(used, budget, done, failed, reported=bool(len(reports)))
            rows.append(
                {
                    "trial_id": trial_id,
                    "state": state,
                    f"best_{self.metric}": best(scores, self.space.mode),
                    f"last_{self.metric}": scores[-1] if scores else math.nan,
                    self.time_attr: used,
                    "stopped_early": state == STOPPED,
                    "wall_time_s": float(reports["time_total_s"].iloc[-1]) if len(reports) else 0.0,
                    **{name: config.get(name) for name in self.space.searched_settings},
                }
            )
        columns = [
            "trial_id",
            "state",
            f"best_{self.metric}",
            f"last_{self.metric}",
            self.time_attr,
            "stopped_early",
            "wall_time_s",
            *self.space.searched_settings,
        ]
        return pd.DataFrame(rows, columns=columns)

    @cached_property
    def decoding(self) -> pd.DataFrame:
        """The decoding stage: one row per decoding trial, and per checkpoint its training decoding (trial -1).

        Columns: the trial, the checkpoint, each generate() setting, ROUGE, mean summary length (words,
        tokens), seconds per summary, whether it met the constraints, whether it lies on the Pareto
        front of ROUGE-L against length / against time, and which was chosen. Empty where the stage has
        not run.
        """
        document = read_decoding(self.path)
        if document is None:
            return pd.DataFrame(columns=["number", "checkpoint", "training_decoding", "rougeL", "chosen"])
        chosen = document.get("chosen") or {}
        rows = [
            {
                "number": r["number"],
                "checkpoint": r["checkpoint"],
                "training_decoding": r["number"] == BASELINE,
                **r["settings"],
                **r["scores"],
                "error": r["error"],
                "feasible": r["feasible"],
                "front_length": r["front_length"],
                "front_time": r["front_time"],
                "chosen": (r["number"], r["checkpoint"]) == (chosen.get("number"), chosen.get("checkpoint")),
            }
            for r in document["records"]
        ]
        return pd.DataFrame(rows)

    def leaderboard(self, top: int | None = None) -> pd.DataFrame:
        """Trials ranked by their best objective (best first)."""
        column = f"best_{self.metric}"
        board = self.trials.sort_values(column, ascending=self.space.mode == "min", na_position="last")
        return board.head(top).reset_index(drop=True) if top else board.reset_index(drop=True)

    # -- the Optuna study -------------------------------------------------------------
    def study(self):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        return optuna.load_study(study_name=self.space.name, storage=f"sqlite:///{self.path / OPTUNA_DB}")

    def importance(self) -> pd.Series:
        """Hyperparameter importance (fANOVA) over every finished trial, on the settings all of them have.

        ``.attrs["trials"]`` says how many trials it used. Empty when too few trials finished.
        """
        return param_importances(self.study())

    def importance_by_family(self) -> dict[str, pd.Series]:
        """Importance within each model family's trials, its own settings (``learning_rate@t5``) included."""
        return param_importances_by(self.study(), "model")

    def boundary_warnings(self, margin: float = 0.05) -> list[str]:
        """Searched ranges whose best value lies at an edge: the optimum may be outside the range."""
        board = self.leaderboard()
        if board.empty or pd.isna(board.iloc[0][f"best_{self.metric}"]):
            return []
        best = board.iloc[0]
        family_ranges = self.space.per_family.get(family_of(str(best.get("model") or self.space.models[0])).name, {})
        adapter = best.get("adapter") if isinstance(best.get("adapter"), str) else self.space.adapters[0]
        adapter_ranges = self.space.per_adapter.get(adapter, {})
        messages = []
        for name in self.space.searched_settings:
            distribution = adapter_ranges.get(name) or family_ranges.get(name) or self.space.search.get(name)
            if distribution is None or distribution.bounds is None or best.get(name) is None:
                continue
            low, high = distribution.bounds
            value = float(best[name])
            scale = math.log if distribution.kind.startswith("log") else float
            position = (scale(value) - scale(low)) / (scale(high) - scale(low))
            if position <= margin or position >= 1 - margin:
                edge = "lower" if position <= margin else "upper"
                messages.append(
                    f"{name}: the best trial's {value:g} is at the {edge} edge of [{low:g}, {high:g}]; "
                    f"widen the range past it"
                )
        return messages


def param_importances(study, trials=None) -> pd.Series:
    """fANOVA importance over ``trials`` (default: the study's finished ones), on the parameters all of them share.

    Optuna's own call, on a conditional space, silently keeps only the trials that have every
    parameter it is asked about (in the demo: the T5 trials alone, so ``model`` mattered 0). Asking
    only for the shared parameters keeps every trial. ``.attrs["trials"]``: how many were used.
    """
    import optuna

    finished = (
        trials if trials is not None else study.get_trials(deepcopy=False, states=[optuna.trial.TrialState.COMPLETE])
    )
    shared = sorted(set.intersection(*(set(t.params) for t in finished))) if finished else []
    varied = [name for name in shared if len({repr(t.params[name]) for t in finished}) > 1]
    empty = pd.Series(dtype=float, name="importance")
    empty.attrs["trials"] = len(finished)
    if len(finished) < 2 or not varied:
        return empty
    subset = optuna.create_study(directions=study.directions)
    subset.add_trials(finished)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            importances = optuna.importance.get_param_importances(subset, params=varied)
    except (ValueError, RuntimeError, KeyError) as err:
        warnings.warn(f"no importance: {err}", stacklevel=2)
        return empty
    series = pd.Series(importances, name="importance", dtype=float)
    series.attrs["trials"] = len(finished)
    return series


def param_importances_by(study, param: str) -> dict[str, pd.Series]:
    """``param_importances`` within each value of ``param`` (each model family, say)."""
    import optuna

    finished = study.get_trials(deepcopy=False, states=[optuna.trial.TrialState.COMPLETE])
    groups: dict[str, list] = {}
    for trial in finished:
        if param in trial.params:
            groups.setdefault(str(trial.params[param]), []).append(trial)
    return {value: param_importances(study, trials) for value, trials in sorted(groups.items())}
