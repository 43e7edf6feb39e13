"""The names every part of tune_dialsum shares: files, scores, objectives, budgets, trial states.

A trial writes what the search, the export and the analysis read back; each side spells the
same names from here, so that renaming one is a one-line change. Imports nothing of tune_dialsum.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

# -- scores ---------------------------------------------------------------------------------------
ROUGE_KEYS = ("rouge1", "rouge2", "rougeL", "rougeLsum")
# Copied from the transformers evaluation into every Tune report, minus "eval_" (eval_loss as "loss").
# degenerate: 1.0 where greedy output is empty or one summary for every input (not ranked on ROUGE).
REPORTED_SCORES = (*ROUGE_KEYS, "gen_len", "degenerate", "loss")
# What a search may optimise, with the direction that is better for each.
OBJECTIVES = {"rougeL": "max", "rougeLsum": "max", "rouge1": "max", "rouge2": "max", "eval_loss": "min"}


def default_mode(metric: str) -> str:
    """``max`` for a ROUGE score, ``min`` for the loss."""
    return OBJECTIVES.get(metric, "max")


def best(values: Iterable[float], mode: str) -> float:
    """The best of ``values`` (``max`` or ``min``), ignoring NaN; NaN where there is none."""
    finite = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if not finite:
        return math.nan
    return max(finite) if mode == "max" else min(finite)


def score_key(metric: str) -> str:
    """The key of ``metric`` among a report's scores (REPORTED_SCORES): ``eval_loss`` is kept as ``loss``."""
    return "loss" if metric == "eval_loss" else metric


# What ASHA's rungs compare (scheduler.rung_metric): the objective; the teacher-forced validation loss
# (smooth where greedy ROUGE on a hundred summaries zig-zags, and no generation); or auto: the loss
# below the last rung, the objective at it.
RUNG_METRICS = ("objective", "eval_loss", "auto")
RUNG_SCORE = "rung_score"  # the reported key ASHA ranks on where rung_metric is not the objective (higher: better)

# What the summary, the model card and the report say where the export was chosen within noise (selection.py's rule).
CHOSEN_WITHIN_NOISE = (
    "Chosen within noise: the best on validation beat another candidate by less than their paired 95% interval; "
    "within a trial the lower validation loss, then the later checkpoint, stood for it, and between trials the "
    "better validation score of those decided."
)


# -- budgets --------------------------------------------------------------------------------------
BUDGET_UNITS = ("samples", "steps", "epochs")
# The result key that measures a trial's training budget, per budget unit.
TIME_ATTRS = {"steps": "step", "epochs": "epoch", "samples": "samples"}


def budget_trained(unit: str, step: int, epoch: float, samples_per_step: int) -> float:
    """How far a trial had trained at a step, in a budget unit: steps, examples seen or epochs."""
    return {"steps": step, "samples": step * samples_per_step}.get(unit, epoch)


# -- trial states, as the summary, the analysis and the tracking runs name them ------------------
TERMINATED = "TERMINATED"  # trained to the full budget
STOPPED = "STOPPED"  # stopped early by the scheduler
ERROR = "ERROR"  # failed
UNFINISHED = "UNFINISHED"  # interrupted, or out of time: --resume continues it
RUNNING = "RUNNING"  # reported at least once, not ended (seen while a search runs)
PENDING = "PENDING"  # not reported yet


def trial_state(used: float, max_budget: float, done: bool, failed: bool, reported: bool = True) -> str:
    """A trial's state from what it left: the one rule the summary, the analysis and the tracking share.

    A trial that trained its whole budget has ended even where Ray did not mark its last report
    done (it marks only what its scheduler stopped); one that ended (done) after a failure it
    recovered from on retry is not ERROR.
    """
    if done or used >= max_budget:
        return STOPPED if used < max_budget else TERMINATED
    if failed:
        return ERROR
    return RUNNING if reported else PENDING


# -- files and directories ------------------------------------------------------------------------
TRIAL_DIR_PREFIX = "trial_"  # a trial's directory in the experiment: trial_<trial id>
TRIAL_CONFIG_FILE = "trial_config.json"  # in every checkpoint: the trial's settings, recipe and world size
RECIPE_FILE = "tune_dialsum.json"  # beside every checkpoint and model: how inputs were built
NOT_RETRYABLE_FILE = "not_retryable.json"  # in a trial's directory: an error another attempt cannot fix
SPACE_SNAPSHOT = "space.yaml"  # in the experiment: the space it started with
OPTUNA_DB = "optuna.db"  # the training search's Optuna study
DECODING_DB = "decoding.db"  # the decoding stage's Optuna study
DECODING_FILE = "decoding.json"  # the decoding stage's trials and choice
DECODING_SOURCE_FILE = "decoding_source.json"  # in a tune-decoding --out: the model its study decodes
SELECTION_FILE = "selection.json"  # which checkpoints were re-scored, and the choice
# in a trial's last checkpoint, where the search re-scores on all of validation: {"decoding": the generate()
# settings, "scores": scoring.score_model's, per example too}, measured in the trial's own process
VALIDATION_SCORES_FILE = "validation_scores.json"
BEST_MODEL_DIR = "best_model"  # the export
REFIT_DIR = "refit"  # selection.refit: the chosen settings trained anew (its model in refit/final)
TUNING_FILE = "tuning.json"  # in an export: where it came from and how it scored
REPORT_DIR = "report"  # the analysis report's plots and index.html
TRACKING_FILE = "tracking.json"  # the MLflow store and parent run a search logs to
MLRUNS_DIR = "mlruns"  # the default MLflow store, inside the experiment
TOKENIZED_CACHE = "tokenized"  # tokenized datasets shared by trials
TRAIN_RUNS_DIR = ".data_parallel"  # where data-parallel trials stage rank 0's checkpoints

# -- what Ray Tune and transformers write, as tune_dialsum reads it back -------------------------
RESULT_FILE = "result.json"  # in a trial's directory: one JSON report a line (Ray)
PROGRESS_FILE = "progress.csv"  # the same reports as CSV (Ray keeps every row where a retry cut result.json)
PARAMS_FILE = "params.json"  # the trial's sampled config (Ray)
ERROR_FILE = "error.txt"  # a trial that failed at least once (Ray)
EXPERIMENT_STATE_GLOB = "experiment_state-*.json"  # the experiment's saved trials (Ray)
TRAINER_STATE_FILE = "trainer_state.json"  # in a checkpoint: step, epoch and every evaluation (transformers)
