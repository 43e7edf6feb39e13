"""Choosing the model to export without the winner's curse, and scoring it on data it was not chosen on.

ASHA ranks trials on a validation *subset* (cheap, noisy): the maximum over dozens of (trial,
report) scores on a few hundred examples is an optimistic figure. So the ``top_k`` checkpoints by
subset score are re-scored on the whole validation split. Even there, greedy ROUGE on a hundred or
so summaries is noisy, and the maximum over checkpoints of one trial favours a lucky early one (the
winner's curse in time). So the choice is made in two steps (:func:`ranked`):

1. Within each trial, the checkpoint that stands for it: its best by full-validation score, unless
   a checkpoint of the same trial is within noise of it (the paired-bootstrap difference holds 0:
   metrics.paired_difference); among those the lower validation loss wins, then the later checkpoint.
2. Between trials, the better full-validation score of those checkpoints, within noise or not. The
   loss does not break ties between trials: it ranks the checkpoints of one run, where it falls as the
   run settles, but across learning rates it does not predict the score (on the bundled bed, of 167
   pairs of checkpoints of different trials within noise of each other, the lower loss had the better
   test ROUGE-L in 89, the better validation score in 118: BENCHMARKS.md, "The tie rule").
   A candidate whose greedy output is degenerate (every summary empty, or one summary for every
   input) is not ranked on ROUGE: it goes last. The summary and ``selection.json`` say when the
   choice was made within noise.

Where the data has a test split, the exported model is scored on it: that is the figure a user can
expect, and the only one reported as the model's; validation figures are labelled as used for selection.

Scoring runs as Ray tasks with a trial's resources (a GPU where trials had one), several at once,
reading each model from the store that every node reaches; a trial's last checkpoint its own trial has
scored already (checkpoints.scored_in_trial) is not scored again.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from tune_dialsum.atomic import atomic_write_text
from tune_dialsum.checkpoints import CheckpointRecord, scored_in_trial
from tune_dialsum.contract import SELECTION_FILE, score_key
from tune_dialsum.experiment_context import ExperimentContext
from tune_dialsum.generation import trial_decoding
from tune_dialsum.metrics import Difference, paired_difference
from tune_dialsum.scoring import score_model, scoring_tasks
from tune_dialsum.space_schema import ResourcesSection


@dataclass
class Candidate:
    record: CheckpointRecord
    subset: float  # the objective on the validation subset ASHA ranked on
    full: dict  # every score on the whole validation split (with "intervals" and "degenerate")
    per_example: list[float] = field(default_factory=list, repr=False)  # the objective per validation example
    versus_leader: Difference | None = None  # leader minus this one, paired over the same examples
    # before the trials ended: by its own trial (a last checkpoint), or on a slot the last trials left free
    scored_during_trials: bool = False

    @property
    def degenerate(self) -> bool:
        return bool(self.full.get("degenerate"))

    @property
    def loss(self) -> float:
        """The validation loss the trial reported with this checkpoint (teacher-forced, on the subset)."""
        return float(self.record.scores.get("loss", math.nan))

    def as_dict(self, metric: str) -> dict:
        key = score_key(metric)
        return {
            "trial_id": self.record.trial_id,
            "step": self.record.step,
            "subset": self.subset,
            "full_validation": self.full.get(key),
            "interval": (self.full.get("intervals") or {}).get(key),
            "eval_loss": None if math.isnan(self.loss) else self.loss,
            "degenerate": self.degenerate,
            "difference_from_leader": self.versus_leader.as_list() if self.versus_leader else None,
            "scored_during_trials": self.scored_during_trials,
        }


def top_by_subset(records: list[CheckpointRecord], metric: str, mode: str, k: int) -> list[CheckpointRecord]:
    """The ``k`` best checkpoints by their subset score (ties: the earlier step)."""
    key, sign = score_key(metric), 1 if mode == "max" else -1
    scored = [r for r in records if math.isfinite(r.scores.get(key, math.nan))]
    return sorted(scored, key=lambda r: (-sign * r.scores[key], r.step))[:k]


def rescore(
    candidates: list[CheckpointRecord],
    locations: list[str],
    context: ExperimentContext,
    resources: ResourcesSection,
    started: dict | None = None,
) -> list[Candidate]:
    """Each candidate's scores on the whole validation split, decoded as its trial was scored; in parallel.

    A candidate its trial scored itself (a last checkpoint: checkpoints.scored_in_trial) is not scored again.
    ``started``: scoring tasks already under way for some checkpoints, by path (early_rescoring.py); a
    candidate among them is not scored again, unless its task failed.
    """
    tasks = scoring_tasks(resources)
    started = started or {}
    fulls: list[dict | None] = [scored_in_trial(record) for record in candidates]
    by_trial = [full is not None for full in fulls]
    early = [not by_trial[i] and record.path in started for i, record in enumerate(candidates)]
    handles = [None] * len(candidates)
    for i, (record, location) in enumerate(zip(candidates, locations, strict=True)):
        if not by_trial[i]:
            handles[i] = started[record.path] if early[i] else score_task(tasks, record, location, context)
    for i, (record, location) in enumerate(zip(candidates, locations, strict=True)):
        if early[i]:
            try:
                fulls[i] = tasks.result(handles[i])
            except Exception:  # noqa: BLE001 (scored while the last trials trained: scored again, beside the rest)
                handles[i], early[i] = score_task(tasks, record, location, context), False
    key = score_key(context.objective.metric)
    scored = []
    for i, record in enumerate(candidates):
        full = fulls[i] if fulls[i] is not None else tasks.result(handles[i])
        each = full.pop("per_example")
        scored.append(
            Candidate(record, record.scores[key], full, each.get(key, []), scored_during_trials=by_trial[i] or early[i])
        )
    return scored


def score_task(tasks, record: CheckpointRecord, location: str, context: ExperimentContext):
    """A task scoring ``record`` on the whole validation split, decoded as its trial was scored."""
    decoding = trial_decoding(record.snapshot.get("config", {}))
    return tasks.submit(score_model, location, context, "validation", decoding, per_example=True)


def ranked(candidates: list[Candidate], metric: str, mode: str) -> list[Candidate]:
    """The candidates in the order they would be exported: the checkpoint that stands for each trial, by
    score, then the others by score, degenerate ones last (the rule in this module's docstring).

    Sets each one's ``versus_leader``, the paired difference from the best by full-validation score.
    """
    key, sign = score_key(metric), 1 if mode == "max" else -1
    by_score = sorted(
        candidates,
        key=lambda c: (not c.degenerate, sign * c.full[key], sign * c.subset),
        reverse=True,
    )
    leader = by_score[0]
    for c in by_score:
        c.versus_leader = _difference(leader, c, sign) if c.per_example and leader.per_example else None
    if leader.degenerate:  # nothing summarizes: ROUGE cannot rank them, the loss can
        return sorted(by_score, key=lambda c: (_loss_or_inf(c), -_trained(c)))
    standing = {id(_standing(by_score, trial_id, sign)) for trial_id in {c.record.trial_id for c in by_score}}
    summarizing = [c for c in by_score if not c.degenerate]
    return (
        [c for c in summarizing if id(c) in standing]
        + [c for c in summarizing if id(c) not in standing]
        + [c for c in by_score if c.degenerate]
    )


def _standing(by_score: list[Candidate], trial_id: str, sign: int) -> Candidate:
    """The checkpoint that stands for one trial: among its checkpoints within noise of its best, the lower
    loss, then the later (the best may be a lucky early one: the winner's curse in time)."""
    own = [c for c in by_score if c.record.trial_id == trial_id]
    best = own[0]
    if best.degenerate or not best.per_example:
        return best
    tied = [best] + [
        c for c in own[1:] if not c.degenerate and c.per_example and _difference(best, c, sign).within_noise
    ]
    return min(tied, key=lambda c: (_loss_or_inf(c), -_trained(c)))


def _difference(leader: Candidate, other: Candidate, sign: int) -> Difference:
    """How much better the leader is (in the objective's direction), paired over the same examples."""
    difference = paired_difference(leader.per_example, other.per_example)
    if sign > 0:
        return difference
    return Difference(-difference.mean, -difference.high, -difference.low)


def _trained(candidate: Candidate) -> float:
    """Training examples seen at the checkpoint: steps differ in size where the batch size was searched."""
    return candidate.record.budget("samples")


def _loss_or_inf(candidate: Candidate) -> float:
    return candidate.loss if math.isfinite(candidate.loss) else math.inf


def choose(candidates: list[Candidate], metric: str, mode: str) -> Candidate:
    """The candidate to export (:func:`ranked`'s first)."""
    return ranked(candidates, metric, mode)[0]


def within_noise(candidates: list[Candidate]) -> bool:
    """Whether the choice was made within noise: a candidate besides the leader was as good (after :func:`ranked`)."""
    return (
        sum(1 for c in candidates if c.versus_leader is not None and c.versus_leader.within_noise and not c.degenerate)
        > 1
    )


def write_selection(
    experiment_dir: Path, chosen: Candidate, candidates: list[Candidate], metric: str, mode: str
) -> Path:
    path = experiment_dir / SELECTION_FILE
    atomic_write_text(
        path,
        json.dumps(
            {
                "metric": metric,
                "mode": mode,
                "chosen": chosen.as_dict(metric),
                "within_noise": within_noise(candidates),
                "rule": "each trial stands as its best full-validation checkpoint or, within that one's paired 95% "
                "interval, its lower eval_loss, then later step; the best of those scores; degenerate output last",
                "candidates": [c.as_dict(metric) for c in candidates],
            },
            indent=2,
        ),
    )
    return path
