"""Re-scoring the best checkpoints on the slots the last trials leave free, before the trials end.

At the end of a search the last trials often train alone: ASHA lets one or two trials run to the
full budget after every other has stopped, and no trial is left to take the freed slots (in the
8-trial searches of the bundled bed, one of two cores stood idle for the last 5 to 24 s). The search
then re-scores its ``selection.top_k`` best checkpoints on all of validation (selection.py), in
processes that must first import torch and the model's code (about 5 of the 8 s it took there).

A trial that trains its whole budget scores its last checkpoint itself before reporting it
(trainable.py), in its warm process. So once every trial of a run has started, the other checkpoints
that are the ``top_k`` best by subset score at that moment, among those Tune has received, are scored
as they appear, by the same tasks the re-scoring submits (a task waits for a free slot; only a trial
retried after a crash may then wait for one, a few seconds). After the trials the re-scoring takes
each result whose checkpoint is still a candidate, unchanged, scores only the others and cancels the
rest: the candidates and their scores are the ones a re-scoring after the trials gives. (The tasks
run beside the last trials, so those trials' timing, and with it which of two reports first, can
differ from a search without them.)

Only where trials write to a local directory (a URI store's checkpoints reach this machine only
after the trials), in a run that starts its trials anew (not a resumed one) and with one process per
trial (Tune counts a data-parallel trial as running before its workers have their slots).
"""

from __future__ import annotations

import logging
from pathlib import Path

from tune_dialsum.checkpoints import CheckpointRecord, read_checkpoint, scored_in_trial
from tune_dialsum.errors import one_line
from tune_dialsum.experiment_context import ExperimentContext
from tune_dialsum.scoring import scoring_tasks
from tune_dialsum.selection import score_task, top_by_subset
from tune_dialsum.space import SearchSpace

logger = logging.getLogger(__name__)


class EarlyRescoring:
    """The scoring tasks started during the trials, by checkpoint path, with the record each one scored."""

    def __init__(self, space: SearchSpace, context: ExperimentContext, num_samples: int):
        self.space, self.context = space, context
        self.num_samples = num_samples  # the trials this run starts
        self.tasks = scoring_tasks(space.resources)
        # checkpoints Tune has received: one found on disk before that may still be being copied there
        self.reported: set[Path] = set()
        self.started: dict[Path, tuple[CheckpointRecord, object]] = {}
        self.failed = False  # an error while submitting: what is left is scored after the trials

    def on_progress(self, trials: list) -> None:
        """Called as trials report and end: once all have started, score the current top checkpoints
        (and cancel what fell out of them)."""
        if len(trials) < self.num_samples or any(t.status == "PENDING" for t in trials):
            return  # a slot that frees up now goes to a trial
        space = self.space
        # read only what Tune received (one it has deleted since, num_to_keep, reads as None), not every
        # checkpoint of the experiment at every report; in path order, as find_checkpoints lists them
        reported = [r for r in map(read_checkpoint, sorted(self.reported)) if r is not None]
        top = {r.path: r for r in top_by_subset(reported, space.metric, space.mode, space.selection.top_k)}
        for path in [p for p in self.started if p not in top]:
            self.tasks.cancel(self.started.pop(path)[1])
        for path, record in top.items():
            if path not in self.started and scored_in_trial(record) is None:  # its trial scored it already
                self.started[path] = (record, score_task(self.tasks, record, str(path), self.context))

    def take(self, candidates: list[CheckpointRecord]) -> dict[Path, object]:
        """The tasks started for ``candidates`` as they are now; every other one is cancelled.

        A task is taken only where it scored the very record that is a candidate: a trial retried after a
        crash writes its next checkpoint at the path of one it wrote before Tune received it.
        """
        taken = {}
        for candidate in candidates:
            record, handle = self.started.get(candidate.path, (None, None))
            if record == candidate:
                taken[candidate.path] = handle
                del self.started[candidate.path]
        self.cancel()
        if taken:
            logger.info("%d of %d candidates were submitted for scoring during the trials", len(taken), len(candidates))
        return taken

    def cancel(self) -> None:
        """Cancel the tasks not taken (an interrupted search re-scores nothing)."""
        for _, handle in self.started.values():
            self.tasks.cancel(handle)
        self.started = {}

    def callback(self):
        """A Tune callback that calls :meth:`on_progress` at every checkpoint and every trial's end."""
        from ray.tune import Callback

        early = self

        class ScoreOnFreeSlots(Callback):
            def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
                early.reported.add(Path(checkpoint.path))
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

            def __reduce__(self):
                # Tune pickles its callbacks with the experiment (tuner.pkl): a resumed run gets a callback
                # that does nothing, not one submitting tasks that no re-scoring takes
                return Callback, ()

        return ScoreOnFreeSlots()
