"""What every trial of one experiment shares: the space's sections minus what is sampled.

Kept apart from the trainable so that the stages after the trials (selection, decoding, refit)
read it without importing the trainer. Its name is not "settings": that word is a trial's
(``TrialSettings``, the space's ``fixed`` and ``search`` keys).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from tune_dialsum.contract import TIME_ATTRS, TOKENIZED_CACHE, trial_state
from tune_dialsum.space import SearchSpace
from tune_dialsum.space_schema import DataSection, ObjectiveSection, ResourcesSection, SchedulerSection

# ExperimentContext.cache_dir for experiments kept at a URI: each node caches under its own tune_dialsum cache.
NODE_LOCAL = "node-local"


@dataclass(frozen=True)
class ExperimentContext:
    """What every trial of one experiment shares: the space's sections minus what is sampled."""

    data: DataSection  # its path resolved, so that every node reads the same directory
    objective: ObjectiveSection
    scheduler: SchedulerSection
    resources: ResourcesSection  # workers_per_trial above 1: data-parallel trials (data_parallel.py)
    seed: int
    trust_remote_code: bool = False
    # Tokenized datasets are shared here by every trial with the same tokenizer, format and lengths
    # (None: not cached; NODE_LOCAL: in the tune_dialsum cache of the node a trial runs on).
    cache_dir: str | None = None
    # The experiment (a directory or a URI): where a trial records an error that must not be retried.
    experiment_location: str | None = None
    # A trial that trains its whole budget scores its last checkpoint on all of validation itself, in the
    # process that is warm already (trials_score_last_checkpoint).
    trials_score_last_checkpoint: bool = False

    @property
    def time_attr(self) -> str:
        """The result key that measures a trial's training budget."""
        return TIME_ATTRS[self.scheduler.budget_unit]

    def budget_used(self, report: dict) -> float:
        """How much of its budget a trial had trained at ``report``."""
        return float(report.get(self.time_attr, 0) or 0)

    def state_of(self, last: dict, failed: bool) -> str:
        """A trial's state from its last report (contract.trial_state): the rule the summary and ``--resume``
        share, so that a trial that trained its whole budget has ended whether or not Ray marked it done."""
        return trial_state(self.budget_used(last), self.scheduler.max_budget, bool(last.get("done")), failed)

    @property
    def ranked_by(self) -> str:
        """The result key the scheduler and the searcher rank on: the objective's best value so far.

        A trial is exported at its best checkpoint, so a curve that dips at a rung must not get a
        trial stopped whose best checkpoint is the best of all; the raw value stays under ``metric``.
        """
        return f"best_{self.objective.metric}"


def rescores_validation(space: SearchSpace) -> bool:
    """Whether a finished search re-scores its best checkpoints on all of validation (selection.py).

    ROUGE is re-scored by decoding; a loss objective is not (the subset's loss is what ranks). A refit
    is compared with the chosen checkpoint on all of validation, so it needs the re-scoring.
    """
    subset = space.data.max_eval_samples is not None or space.selection.refit
    return subset and space.metric != "eval_loss"


def trials_score_last_checkpoint(space: SearchSpace) -> bool:
    """Whether a trial that trains its whole budget scores its last checkpoint on all of validation before
    reporting it (trainable.py), where the search would re-score it after the trials.

    Under ASHA the few trials that train the whole budget are most often candidates; under FIFO every
    trial does, and most are not. Not where trials share a GPU (the second copy of the model could push
    the other trial out of memory), not for data-parallel trials (one rank would decode while the others
    wait), and not under a time budget (one that ends during the decoding would lose the last report).
    """
    return (
        rescores_validation(space)
        and space.scheduler.type == "asha"
        and not 0 < space.resources.gpus_per_trial < 1
        and not space.resources.data_parallel
        and space.trials.time_budget_s is None
    )


def experiment_context(space: SearchSpace, store=None) -> ExperimentContext:
    """What every trial shares; tokenized data is cached in the experiment (``store``: storage.ExperimentStore),
    or per node where that is a URI."""
    cache_dir = None
    if store is not None:
        cache_dir = NODE_LOCAL if store.remote else str(store.local / TOKENIZED_CACHE)
    return ExperimentContext(
        data=dataclasses.replace(space.data, path=str(Path(space.data.path).expanduser().resolve())),
        objective=space.objective,
        scheduler=space.scheduler,
        resources=space.resources,
        seed=space.seed,
        trust_remote_code=space.trust_remote_code,
        cache_dir=cache_dir,
        experiment_location=store.location if store is not None else None,
        trials_score_last_checkpoint=trials_score_last_checkpoint(space),
    )
