"""A search's checkpoints, as the trainable leaves them: found on disk, read, ranked.

Checkpoints are found on disk, not through Ray: every checkpoint the trainable reports holds
``trial_config.json`` (the trial's resolved config) and ``trainer_state.json`` (every evaluation so
far), so an experiment directory, finished or still running, is enough to pick the best checkpoint
over all trials and all their reports. Every stage after the trials (selection, decoding, export,
analysis) reads checkpoints through this module.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from tune_dialsum.contract import (
    REPORTED_SCORES,
    TRAINER_STATE_FILE,
    TRIAL_CONFIG_FILE,
    VALIDATION_SCORES_FILE,
    budget_trained,
    score_key,
)
from tune_dialsum.errors import ExportError, UsageError
from tune_dialsum.generation import trial_decoding

# What a checkpoint holds that a model directory does not need: the state its trial goes on training
# from, and what the search reads of it.
OPTIMIZER_STATE = ("optimizer.pt", "scheduler.pt", "scaler.pt")
TRAINING_ONLY = {
    *OPTIMIZER_STATE,
    TRAINER_STATE_FILE,
    "training_args.bin",
    "rng_state.pth",
    TRIAL_CONFIG_FILE,
    VALIDATION_SCORES_FILE,
}
# What the stages after the trials read of a checkpoint without its weights (all that is mirrored of one
# kept at a URI).
CHECKPOINT_METADATA = (TRIAL_CONFIG_FILE, TRAINER_STATE_FILE, VALIDATION_SCORES_FILE)


@dataclass(frozen=True)
class CheckpointRecord:
    path: Path
    trial_id: str
    step: int
    scores: dict[str, float]
    snapshot: dict  # the trial_config.json written by the trainable
    epoch: float = 0.0

    def budget(self, unit: str) -> float:
        """How far the trial had trained at this checkpoint, in the search's budget unit."""
        trained = budget_trained(unit, self.step, self.epoch, int(self.snapshot.get("samples_per_step") or 1))
        return round(trained, 2) if unit == "epochs" else trained


def read_checkpoint(path: Path) -> CheckpointRecord | None:
    """The record of one reported checkpoint, or None when it is incomplete (still being written)."""
    try:
        snapshot = json.loads((path / TRIAL_CONFIG_FILE).read_text())
        state = json.loads((path / TRAINER_STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    step = state["global_step"]
    evaluations = [e for e in state["log_history"] if e.get("step") == step and "eval_loss" in e]
    if not evaluations:
        return None
    scores = {k: evaluations[-1][f"eval_{k}"] for k in REPORTED_SCORES if f"eval_{k}" in evaluations[-1]}
    return CheckpointRecord(
        path, snapshot.get("trial_id", path.parent.name), step, scores, snapshot, float(state.get("epoch") or 0.0)
    )


def scored_in_trial(record: CheckpointRecord) -> dict | None:
    """The scores on all of validation that ``record``'s trial measured itself (trainable.py), decoded as
    the search would score it; None where it did not, failed to, or used another decoding."""
    try:
        stored = json.loads((record.path / VALIDATION_SCORES_FILE).read_text())
    except (OSError, ValueError):
        return None
    return stored.get("scores") if stored.get("decoding") == trial_decoding(record.snapshot.get("config", {})) else None


def find_checkpoints(experiment_dir: str | Path) -> list[CheckpointRecord]:
    """Every complete checkpoint of every trial under ``experiment_dir``."""
    experiment_dir = Path(experiment_dir)
    if not experiment_dir.is_dir():
        raise UsageError(f"{experiment_dir}: no such experiment directory; pass <storage-path>/<name>")
    records = (read_checkpoint(p) for p in sorted(experiment_dir.glob("*/checkpoint_*")) if p.is_dir())
    return [r for r in records if r is not None]


def find_record(records: list[CheckpointRecord], trial_id: str, step: int) -> CheckpointRecord | None:
    return next((r for r in records if r.trial_id == trial_id and r.step == step), None)


def best_checkpoint(records: list[CheckpointRecord], metric: str, mode: str, trial_id: str | None = None):
    key = score_key(metric)
    candidates = [
        r
        for r in records
        if (trial_id is None or r.trial_id == trial_id) and math.isfinite(r.scores.get(key, math.nan))
    ]
    if not candidates:
        which = f"trial {trial_id}" if trial_id else "any trial"
        raise ExportError(f"no checkpoint of {which} has a {metric} score; nothing to export")
    sign = 1 if mode == "max" else -1
    return max(candidates, key=lambda r: (sign * r.scores[key], -r.step))


def label(record: CheckpointRecord) -> str:
    """``trial@step``: how decoding.json and the decoding study name a checkpoint."""
    return f"{record.trial_id}@{record.step}"
