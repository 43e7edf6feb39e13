"""Refit: the chosen settings trained anew to the full budget, as users of other tools do by hand.

The search exports its best re-scored checkpoint. That checkpoint may be an early one of a trial
(its best evaluation) or one of a trial ASHA stopped, and its score is the maximum over many noisy
evaluations. With ``selection.refit: true`` the chosen trial's settings are trained from scratch to
``scheduler.max_budget`` with the same seed and data, the result is scored on all of validation
as the candidates were, and it is exported where it scores at least as well as the chosen checkpoint
(point estimates on the same examples; both, with the paired difference, go to the summary and
``tuning.json``).

It trains on train only: a refit on train + validation would leave no data to check it against
before it replaces a model that was checked.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tune_dialsum import executor, locations
from tune_dialsum.checkpoints import CheckpointRecord, read_checkpoint
from tune_dialsum.contract import REFIT_DIR, score_key
from tune_dialsum.experiment_context import ExperimentContext
from tune_dialsum.generation import trial_decoding
from tune_dialsum.metrics import Difference, paired_difference
from tune_dialsum.scoring import score_model, scoring_tasks
from tune_dialsum.selection import Candidate
from tune_dialsum.space_schema import ResourcesSection
from tune_dialsum.trainable import TrialRun, train_one
from tune_dialsum.worker_memory import release_memory

logger = logging.getLogger(__name__)

REFIT_TRIAL_ID = "refit"


@dataclass
class Refit:
    record: CheckpointRecord  # the model trained anew, as a checkpoint the export reads
    full: dict  # its scores on all of validation
    versus_chosen: Difference  # refit minus the chosen checkpoint, paired (the objective's direction)
    exported: bool  # it scored at least as well, so it is the model exported
    seconds: float = 0.0  # training and scoring it took

    def as_dict(self, metric: str, chosen: Candidate) -> dict:
        key = score_key(metric)
        return {
            "full_validation": self.full.get(key),
            "interval": (self.full.get("intervals") or {}).get(key),
            "chosen_full_validation": chosen.full.get(key),
            "difference_from_chosen": self.versus_chosen.as_list(),
            "exported": self.exported,
            "step": self.record.step,
            "seconds": round(self.seconds, 1),
        }


def train_anew(config: dict, context: ExperimentContext, target: str, experiment: str) -> None:
    """Train ``config`` from scratch to the full budget and store its last checkpoint at ``target``.

    Runs as a Ray task with a trial's resources: the trainer reports each evaluation as a trial
    would, and the last checkpoint it saved is what is kept.
    """
    scratch = Path(tempfile.mkdtemp(prefix="tune_dialsum-refit-"))
    saved: list[str] = []
    trial = {"trial_id": REFIT_TRIAL_ID, "trial_name": REFIT_TRIAL_ID, "experiment": experiment}
    try:
        train_one(config, context, scratch, TrialRun(trial, publish=lambda _report, path: saved.append(path)))
        if locations.is_uri(target):
            locations.upload(Path(saved[-1]), target)
        else:  # a path every node reaches (the search checked it)
            shutil.copytree(saved[-1], target, dirs_exist_ok=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        release_memory()


def refit(chosen: Candidate, context: ExperimentContext, resources: ResourcesSection, store) -> Refit:
    """Train ``chosen``'s settings anew, score it on all of validation, decide whether it is exported."""
    import time

    clock = time.perf_counter()
    config = chosen.record.snapshot.get("config", {})
    local = store.local / REFIT_DIR / "final"
    shutil.rmtree(local, ignore_errors=True)
    training = executor.tasks(resources.cpus_per_trial, resources.gpus_per_trial, max_retries=0)
    experiment = chosen.record.snapshot.get("experiment", REFIT_TRIAL_ID)
    training.result(training.submit(train_anew, config, context, store.where(local), experiment))
    store.fetch(local)
    record = read_checkpoint(local)
    if record is None:
        raise RuntimeError(f"the refit left no complete checkpoint at {store.where(local)}")
    scoring = scoring_tasks(resources)  # decoded where the candidates were, with a trial's resources
    decoding = trial_decoding(config)
    full = scoring.result(
        scoring.submit(score_model, store.where(local), context, "validation", decoding, per_example=True)
    )
    judged = judge(record, full, chosen, context.objective.metric, context.objective.mode)
    judged.seconds = time.perf_counter() - clock
    return judged


def judge(record: CheckpointRecord, full: dict, chosen: Candidate, metric: str, mode: str) -> Refit:
    """The refit against the chosen checkpoint on the same validation examples; exported where at least as good.

    ``full``: :func:`scoring.score_model`'s result with ``per_example`` (taken out here). Degenerate
    output is never exported, whatever its ROUGE.
    """
    key, sign = score_key(metric), 1 if mode == "max" else -1
    each = full.pop("per_example")[key]
    versus = paired_difference(each, chosen.per_example)
    if sign < 0:
        versus = Difference(-versus.mean, -versus.high, -versus.low)
    exported = not full.get("degenerate") and sign * full[key] >= sign * chosen.full[key]
    return Refit(record, full, versus, exported)
