"""Re-scoring on the slots the last trials leave free (early_rescoring.py), without Ray.

The scoring tasks are recorded by a fake executor: what is tested is when they start, which
checkpoints they score, and that the re-scoring after the trials uses them instead of scoring again.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from tests.conftest import REPO
from tests.test_export import _fake_checkpoint
from tune_dialsum import executor, selection
from tune_dialsum.checkpoints import find_checkpoints
from tune_dialsum.early_rescoring import EarlyRescoring
from tune_dialsum.experiment_context import experiment_context
from tune_dialsum.space import load_space


@dataclass(eq=False)
class _Handle:
    path: str
    fails: bool = False


class _RecordingTasks:
    """Scores each model at the ROUGE-L its trial reported (read from its path), and records what it did."""

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
            self.failing = self.failing - {handle.path}  # the checkpoint was being written: scored again, it works
            raise RuntimeError("ray::score_model() failed: no such file")
        score = 0.5 + int(handle.path.rsplit("checkpoint_", 1)[1]) / 100
        return {"rougeL": score, "examples": 3, "per_example": {"rougeL": [score] * 3}, "intervals": {}}

    def cancel(self, handle: _Handle) -> None:
        self.cancelled.append(handle.path)


@dataclass
class _Trial:
    status: str


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


def test_scoring_starts_only_once_every_trial_has_started(experiment):
    root, space = experiment
    tasks = _RecordingTasks()
    with executor.installed(tasks):
        early = EarlyRescoring(space, experiment_context(space), root, num_samples=3)
        early.on_progress([_Trial("RUNNING"), _Trial("TERMINATED")])  # a third trial is still to come
        early.on_progress([_Trial("RUNNING"), _Trial("TERMINATED"), _Trial("PENDING")])  # it waits for a slot
        assert tasks.submitted == []
        early.on_progress([_Trial("RUNNING"), _Trial("TERMINATED"), _Trial("RUNNING")])
        early.on_progress([_Trial("TERMINATED"), _Trial("TERMINATED"), _Trial("RUNNING")])  # nothing new to score
    assert sorted(tasks.submitted) == [
        str(root / "trial_a" / "checkpoint_000001"),
        str(root / "trial_b" / "checkpoint_000001"),
    ]


def test_the_rescoring_uses_what_was_scored_early_and_cancels_what_is_no_longer_a_candidate(experiment, tiny_models):
    root, space = experiment
    tasks = _RecordingTasks()
    context = experiment_context(space)
    with executor.installed(tasks):
        early = EarlyRescoring(space, context, root, num_samples=1)
        early.on_progress([_Trial("RUNNING")])  # a@1 and b@1 lead
        _fake_checkpoint(root, "c", 2, 200, 0.7, tiny_models["bart"])  # the last trial overtakes b
        early.on_progress([_Trial("RUNNING")])
        top = selection.top_by_subset(find_checkpoints(root), space.metric, space.mode, space.selection.top_k)
        started = early.take(top)
        candidates = selection.rescore(top, [str(r.path) for r in top], context, space.resources, started=started)
    c2, a1, b1 = (str(root / f"trial_{t}" / f"checkpoint_00000{i}") for t, i in (("c", 2), ("a", 1), ("b", 1)))
    assert sorted(tasks.submitted) == sorted([a1, b1, c2])  # each scored once
    assert tasks.cancelled == [b1]  # b@1 fell out of the top 2
    assert [(str(c.record.path), c.full["rougeL"], c.scored_during_trials) for c in candidates] == [
        (c2, 0.52, True),
        (a1, 0.51, True),
    ]


def test_a_checkpoint_whose_early_scoring_failed_is_scored_again(experiment):
    root, space = experiment
    a1 = str(root / "trial_a" / "checkpoint_000001")
    tasks = _RecordingTasks(failing={a1})
    context = experiment_context(space)
    with executor.installed(tasks):
        early = EarlyRescoring(space, context, root, num_samples=1)
        early.on_progress([_Trial("RUNNING")])
        top = selection.top_by_subset(find_checkpoints(root), space.metric, space.mode, space.selection.top_k)
        candidates = selection.rescore(
            top, [str(r.path) for r in top], context, space.resources, started=early.take(top)
        )
    assert tasks.submitted.count(a1) == 2
    assert {str(c.record.path): c.scored_during_trials for c in candidates} == {
        a1: False,
        str(root / "trial_b" / "checkpoint_000001"): True,
    }


def test_an_error_while_scoring_early_does_not_reach_tune(experiment, monkeypatch, caplog):
    """A Tune callback that raises ends the search: the callback warns once and leaves the re-scoring for later."""
    import tune_dialsum.early_rescoring as early_rescoring

    root, space = experiment
    calls = []

    def broken(_experiment_dir):
        calls.append(1)
        raise OSError("disk gone")

    monkeypatch.setattr(early_rescoring, "find_checkpoints", broken)
    with executor.installed(_RecordingTasks()):
        early = EarlyRescoring(space, experiment_context(space), root, num_samples=1)
        callback = early.callback()
        callback.on_trial_complete(0, [_Trial("TERMINATED")], None)
        callback.on_checkpoint(0, [_Trial("TERMINATED")], None, None)
    assert calls == [1] and early.failed and early.started == {}
    assert "re-scoring during the trials stopped (disk gone); it runs after them" in caplog.text
