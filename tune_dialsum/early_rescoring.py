"""Re-scoring the best checkpoints on the slots the last trials leave free, before the trials end.

At the end of a search the last trials often train alone: ASHA lets one or two trials run to the
full budget after every other has stopped, and no trial is left to take the freed slots (in the
8-trial searches of the bundled bed, one of two cores stood idle for the last 22-24 s). The search
then re-scores its ``selection.top_k`` best checkpoints on all of validation (selection.py), in
processes that must first import torch and the model's code (about 5 of the 8 s it took there).

So once every trial of a run has started, the checkpoints that are the ``top_k`` best by subset
score at that moment are scored as they appear, as the same tasks the re-scoring submits (a task
waits for a free slot: no trial is left to need it). The re-scoring then uses each result whose
checkpoint is still a candidate, scores only the others (on workers that imported torch already),
and cancels the rest. The choice is the one a re-scoring after the trials would make: the same
candidates, scored by the same function.

Only where trials write to a local directory (a URI store's checkpoints reach this machine only
after the trials), and only in a run that starts its trials anew (not a resumed one).
"""

from __future__ import annotations

import logging
from pathlib import Path

from tune_dialsum.checkpoints import CheckpointRecord, find_checkpoints
from tune_dialsum.errors import one_line
from tune_dialsum.experiment_context import ExperimentContext
from tune_dialsum.scoring import scoring_tasks
from tune_dialsum.selection import score_task, top_by_subset
from tune_dialsum.space import SearchSpace

logger = logging.getLogger(__name__)


class EarlyRescoring:
    """The scoring tasks started during the trials, by checkpoint path."""

    def __init__(self, space: SearchSpace, context: ExperimentContext, experiment_dir: Path, num_samples: int):
        self.space, self.context, self.experiment_dir = space, context, experiment_dir
        self.num_samples = num_samples  # the trials this run starts
        self.tasks = scoring_tasks(space.resources)
        self.started: dict[Path, object] = {}
        self.failed = False  # an error while submitting: what is left is scored after the trials

    def on_progress(self, trials: list) -> None:
        """Called as trials report and end: once all have started, score the current top checkpoints."""
        if len(trials) < self.num_samples or any(t.status == "PENDING" for t in trials):
            return  # a slot that frees up now goes to a trial
        space = self.space
        for record in top_by_subset(
            find_checkpoints(self.experiment_dir), space.metric, space.mode, space.selection.top_k
        ):
            if record.path not in self.started:
                self.started[record.path] = score_task(self.tasks, record, str(record.path), self.context)

    def take(self, candidates: list[CheckpointRecord]) -> dict[Path, object]:
        """The tasks started for ``candidates``; every other one is cancelled."""
        wanted = {r.path for r in candidates}
        taken = {path: handle for path, handle in self.started.items() if path in wanted}
        self.started = {path: handle for path, handle in self.started.items() if path not in wanted}
        self.cancel()
        if taken:
            logger.info("%d of %d candidates were re-scored while the last trials trained", len(taken), len(wanted))
        return taken

    def cancel(self) -> None:
        """Cancel the tasks not taken (an interrupted search re-scores nothing)."""
        for handle in self.started.values():
            self.tasks.cancel(handle)
        self.started = {}

    def callback(self):
        """A Tune callback that calls :meth:`on_progress` at every checkpoint and every trial's end."""
        from ray.tune import Callback

        early = self

        class ScoreOnFreeSlots(Callback):
            def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
                self._progress(trials)

            def on_trial_complete(self, iteration, trials, trial, **info):
                self._progress(trials)

            def _progress(self, trials):
                if early.failed:
                    return
                try:
                    early.on_progress(trials)
                except Exception as err:  # noqa: BLE001 (an error here would end Tune's run: the re-scoring waits instead)
                    early.failed = True
                    logger.warning("re-scoring during the trials stopped (%s); it runs after them", one_line(err))

        return ScoreOnFreeSlots()
