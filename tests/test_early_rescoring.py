"""Re-scoring on the slots the last trials leave free (early_rescoring.py), without Ray.

The scoring tasks are recorded by a fake executor, and the Tune callback is called as Tune calls it
(keywords): what is tested is when tasks start, which checkpoints they score, and that the
re-scoring after the trials uses them instead of scoring again, only where they scored the candidate.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.conftest import REPO
from tests.test_export import _fake_checkpoint
from tune_dialsum import executor, selection
from tune_dialsum.checkpoints import find_checkpoints
from tune_dialsum.contract import VALIDATION_SCORES_FILE
from tune_dialsum.early_rescoring import EarlyRescoring
from tune_dialsum.experiment_context import experiment_context
from tune_dialsum.space import load_space


@dataclass(eq=False)
class _Handle:
    path: str
    fails: bool = False


class _RecordingTasks:
    """Scores each model at 0.5 + its checkpoint index / 100, and records what it did."""

    def __init__(self, failing: set[str] = frozenset()):
        self.submitted: list[str] = []
        self.cancelled: list[str] = []
        self.failing = failing

    def submit(self, fn, location, context, split, decoding, per_example=False):
        assert (split, per_example) == ("validation", True)
        self.submitted.append(location)
        return _Handle(location, fails=location in self.failing)

    def result(self, handle: _Handle) -> dict:
        if handle.fails:
            self.failing = self.failing - {handle.path}  # the next task on it works
            raise RuntimeError("ray::score_model() failed: no such file")
        score = 0.5 + int(handle.path.rsplit("checkpoint_", 1)[1]) / 100
        return {"rougeL": score, "examples": 3, "per_example": {"rougeL": [score] * 3}, "intervals": {}}

    def cancel(self, handle: _Handle) -> None:
        self.cancelled.append(handle.path)


@dataclass
class _Trial:
    status: str


def _path(root: Path, trial: str, index: int) -> str:
    return str(root / f"trial_{trial}" / f"checkpoint_{index:06d}")


@pytest.fixture
def experiment(tmp_path, tiny_models):
    root = tmp_path / "exp"
    # subset scores: a@1 0.61, a@2 0.48, b@1 0.55, c@1 0.40; top 2: a@1, b@1
    for trial, index, step, score in (
        ("a", 1, 200, 0.61),
        ("a", 2, 300, 0.48),
        ("b", 1, 300, 0.55),
        ("c", 1, 100, 0.4),
    ):
        _fake_checkpoint(root, trial, index, step, score, tiny_models["bart"])
    space = load_space(REPO / "search_spaces" / "tiny.yaml", ["selection.top_k=2", "trials.num_samples=3"])
    return root, space


def _reported(callback, root: Path, trials: list, *checkpoints: tuple[str, int]) -> None:
    """Tune received these checkpoints (as its controller calls the callback)."""
    for trial, index in checkpoints:
        checkpoint = SimpleNamespace(path=_path(root, trial, index))
        callback.on_checkpoint(iteration=1, trials=trials, trial=None, checkpoint=checkpoint)


def _received_all(early: EarlyRescoring, root: Path) -> None:
    """Tune has received every checkpoint on disk (the callback has seen each, earlier)."""
    early.reported |= set(root.glob("*/checkpoint_*"))


def test_scoring_starts_once_every_trial_has_started_on_checkpoints_tune_received(experiment):
    root, space = experiment
    tasks = _RecordingTasks()
    with executor.installed(tasks):
        early = EarlyRescoring(space, experiment_context(space), num_samples=3)
        callback = early.callback()
        _received_all(early, root)
        _reported(callback, root, [_Trial("RUNNING"), _Trial("TERMINATED")], ("a", 1))  # a third trial is to come
        _reported(callback, root, [_Trial("RUNNING"), _Trial("TERMINATED"), _Trial("PENDING")])  # it waits for a slot
        assert tasks.submitted == []
        everyone = [_Trial("RUNNING"), _Trial("TERMINATED"), _Trial("RUNNING")]
        callback.on_trial_complete(iteration=2, trials=everyone, trial=None)
        callback.on_trial_complete(iteration=3, trials=everyone, trial=None)  # nothing new to score
    assert sorted(tasks.submitted) == [_path(root, "a", 1), _path(root, "b", 1)]


def test_a_checkpoint_tune_has_not_received_is_not_scored(experiment):
    """One on disk before Tune has it may still be being copied there."""
    root, space = experiment
    tasks = _RecordingTasks()
    with executor.installed(tasks):
        callback = EarlyRescoring(space, experiment_context(space), num_samples=1).callback()
        _reported(callback, root, [_Trial("RUNNING")], ("b", 1), ("c", 1))  # a@1, the best, not received yet
    assert sorted(tasks.submitted) == [_path(root, "b", 1), _path(root, "c", 1)]


def test_the_rescoring_uses_what_was_scored_early_and_cancels_what_is_no_longer_a_candidate(experiment, tiny_models):
    root, space = experiment
    tasks = _RecordingTasks()
    context = experiment_context(space)
    with executor.installed(tasks):
        early = EarlyRescoring(space, context, num_samples=1)
        callback = early.callback()
        _received_all(early, root)
        callback.on_trial_complete(iteration=1, trials=[_Trial("RUNNING")], trial=None)  # a@1 and b@1 lead
        _fake_checkpoint(root, "c", 2, 200, 0.7, tiny_models["bart"])  # the last trial overtakes b
        _reported(callback, root, [_Trial("RUNNING")], ("c", 2))
        assert tasks.cancelled == [_path(root, "b", 1)]  # b@1 fell out of the top 2: its slot is freed at once
        top = selection.top_by_subset(find_checkpoints(root), space.metric, space.mode, space.selection.top_k)
        candidates = selection.rescore(
            top, [str(r.path) for r in top], context, space.resources, started=early.take(top)
        )
    assert sorted(tasks.submitted) == sorted([_path(root, "a", 1), _path(root, "b", 1), _path(root, "c", 2)])
    assert [(str(c.record.path), c.full["rougeL"], c.scored_during_trials) for c in candidates] == [
        (_path(root, "c", 2), 0.52, True),
        (_path(root, "a", 1), 0.51, True),
    ]


def test_a_checkpoint_rewritten_at_the_same_path_is_scored_again(experiment):
    """A trial retried after a crash writes its next checkpoint where it wrote one Tune never received."""
    root, space = experiment
    tasks = _RecordingTasks()
    context = experiment_context(space)
    with executor.installed(tasks):
        early = EarlyRescoring(space, context, num_samples=1)
        _received_all(early, root)
        early.callback().on_trial_complete(iteration=1, trials=[_Trial("RUNNING")], trial=None)
        state = Path(_path(root, "a", 1)) / "trainer_state.json"
        history = [{"step": 250, "eval_loss": 0.9, "eval_rougeL": 0.66, "eval_rouge1": 0.66}]
        state.write_text(json.dumps({"global_step": 250, "log_history": history}))
        top = selection.top_by_subset(find_checkpoints(root), space.metric, space.mode, space.selection.top_k)
        candidates = selection.rescore(
            top, [str(r.path) for r in top], context, space.resources, started=early.take(top)
        )
    assert tasks.submitted.count(_path(root, "a", 1)) == 2 and tasks.cancelled == [_path(root, "a", 1)]
    assert {str(c.record.path): c.scored_during_trials for c in candidates} == {
        _path(root, "a", 1): False,
        _path(root, "b", 1): True,
    }


def test_a_checkpoint_whose_early_scoring_failed_is_scored_again(experiment):
    root, space = experiment
    tasks = _RecordingTasks(failing={_path(root, "a", 1)})
    context = experiment_context(space)
    with executor.installed(tasks):
        early = EarlyRescoring(space, context, num_samples=1)
        _received_all(early, root)
        early.callback().on_trial_complete(iteration=1, trials=[_Trial("RUNNING")], trial=None)
        top = selection.top_by_subset(find_checkpoints(root), space.metric, space.mode, space.selection.top_k)
        candidates = selection.rescore(
            top, [str(r.path) for r in top], context, space.resources, started=early.take(top)
        )
    assert tasks.submitted.count(_path(root, "a", 1)) == 2
    assert [(c.full["rougeL"], c.scored_during_trials) for c in candidates] == [(0.51, False), (0.51, True)]


def test_an_error_while_scoring_early_does_not_reach_tune(experiment, monkeypatch, caplog):
    """A Tune callback that raises ends the search: the callback warns once and leaves the re-scoring for later."""
    import tune_dialsum.early_rescoring as early_rescoring

    root, space = experiment
    calls = []

    def broken(_checkpoint):
        calls.append(1)
        raise OSError("disk gone")

    monkeypatch.setattr(early_rescoring, "read_checkpoint", broken)
    with executor.installed(_RecordingTasks()):
        early = EarlyRescoring(space, experiment_context(space), num_samples=1)
        callback = early.callback()
        callback.on_trial_complete(iteration=1, trials=[_Trial("TERMINATED")], trial=None)
        _reported(callback, root, [_Trial("TERMINATED")], ("a", 1))
    assert calls == [1] and early.failed and early.started == {}
    assert "re-scoring during the trials stopped (disk gone); it runs after them" in caplog.text


def test_a_resumed_search_gets_a_callback_that_does_nothing(experiment):
    """Tune pickles its callbacks with the experiment (tuner.pkl) and a resumed run calls them again."""
    from ray import cloudpickle
    from ray.tune import Callback

    root, space = experiment
    tasks = _RecordingTasks()
    with executor.installed(tasks):
        restored = cloudpickle.loads(cloudpickle.dumps(EarlyRescoring(space, experiment_context(space), 1).callback()))
        assert type(restored) is Callback
        _reported(restored, root, [_Trial("RUNNING")], ("a", 1), ("b", 1))
    assert tasks.submitted == []


def _scored_by_its_trial(root: Path, trial: str, index: int, score: float | None, decoding: dict) -> None:
    """What the trainable writes into a last checkpoint it scored on all of validation itself (None: it failed)."""
    scores = None
    if score is not None:
        scores = {"rougeL": score, "examples": 3, "per_example": {"rougeL": [score] * 3}, "intervals": {}}
    path = Path(_path(root, trial, index)) / VALIDATION_SCORES_FILE
    path.write_text(json.dumps({"decoding": decoding, "scores": scores}))


def test_a_checkpoint_its_trial_scored_is_not_scored_again(experiment):
    """The trainable scores a trial's last checkpoint in its own process: no task scores it, early or late."""
    root, space = experiment
    context = experiment_context(space)
    _scored_by_its_trial(root, "a", 1, 0.9, {"num_beams": 3, "max_length": 40})  # the fake trials' decoding
    tasks = _RecordingTasks()
    with executor.installed(tasks):
        early = EarlyRescoring(space, context, num_samples=1)
        _received_all(early, root)
        early.callback().on_trial_complete(iteration=1, trials=[_Trial("RUNNING")], trial=None)
        assert tasks.submitted == [_path(root, "b", 1)]
        top = selection.top_by_subset(find_checkpoints(root), space.metric, space.mode, space.selection.top_k)
        candidates = selection.rescore(
            top, [str(r.path) for r in top], context, space.resources, started=early.take(top)
        )
    assert tasks.submitted == [_path(root, "b", 1)]
    assert [(str(c.record.path), c.full["rougeL"], c.per_example, c.scored_during_trials) for c in candidates] == [
        (_path(root, "a", 1), 0.9, [0.9] * 3, True),
        (_path(root, "b", 1), 0.51, [0.51] * 3, True),
    ]


def test_scores_measured_with_another_decoding_are_not_used(experiment):
    root, space = experiment
    context = experiment_context(space)
    _scored_by_its_trial(root, "a", 1, 0.9, {"num_beams": 1, "max_length": 40})
    tasks = _RecordingTasks()
    with executor.installed(tasks):
        top = selection.top_by_subset(find_checkpoints(root), space.metric, space.mode, space.selection.top_k)
        candidates = selection.rescore(top, [str(r.path) for r in top], context, space.resources)
    assert sorted(tasks.submitted) == [_path(root, "a", 1), _path(root, "b", 1)]
    assert [c.full["rougeL"] for c in candidates] == [0.51, 0.51]


def test_a_checkpoint_its_trial_failed_to_score_is_scored_by_the_search(experiment):
    """The file says the trial's scoring failed: a retried trial's new checkpoint must not keep an older file."""
    root, space = experiment
    _scored_by_its_trial(root, "a", 1, None, {"num_beams": 3, "max_length": 40})
    tasks = _RecordingTasks()
    with executor.installed(tasks):
        top = selection.top_by_subset(find_checkpoints(root), space.metric, space.mode, space.selection.top_k)
        candidates = selection.rescore(top, [str(r.path) for r in top], experiment_context(space), space.resources)
    assert sorted(tasks.submitted) == [_path(root, "a", 1), _path(root, "b", 1)]
    assert [c.scored_during_trials for c in candidates] == [False, False]
