"""What happens after the trials, without Ray: stages that fail, decodings left queued, scoring options.

Each stage after the trials (re-scoring, the decoding stage, test scoring) can fail on a model or a
node; the export must survive it, the summary must say it and the exit code must tell a script.
"""

from __future__ import annotations

import dataclasses
import json
import sys

import pytest
import yaml

from tests.conftest import REPO
from tests.test_export import _fake_checkpoint
from tune_dialsum import finish, outcome, scoring, selection
from tune_dialsum.experiment_context import experiment_context
from tune_dialsum.space import load_space, parse_space
from tune_dialsum.storage import ExperimentStore


def _finished_experiment(root, model_dir, space):
    """Two trials that ran their whole budget, as Ray leaves them: checkpoints, reports, the saved state."""
    for trial, index, step, score in (("a", 1, 200, 0.61), ("b", 1, 300, 0.55)):
        _fake_checkpoint(root, trial, index, step, score, model_dir)
        report = {"samples": space.scheduler.max_budget, "rougeL": score, "done": True, "trial_id": trial}
        (root / f"trial_{trial}" / "result.json").write_text(json.dumps(report) + "\n")
    trial_data = [[json.dumps({"trial_id": t}), "{}"] for t in ("a", "b")]
    (root / "experiment_state-0.json").write_text(json.dumps({"trial_data": trial_data}))
    return root


@pytest.fixture
def demo_without_decoding():
    raw = yaml.safe_load((REPO / "search_spaces" / "tiny.yaml").read_text())
    raw.pop("decoding")
    raw["trials"]["num_samples"] = 2
    return parse_space(raw, source="tiny.yaml", default_name="tiny")


def _raise(*_, **__):
    raise RuntimeError("ray::score_model() failed\nTraceback (most recent call last):\n  ...\nOSError: no such model")


def test_a_failing_rescore_or_test_scoring_keeps_the_export_and_is_named(
    tmp_path, tiny_models, demo_without_decoding, monkeypatch
):
    """Issue 24.13/14: a stage after the trials that fails is one line in the summary, not a lost export."""
    space = demo_without_decoding
    experiment = _finished_experiment(tmp_path / "exp", tiny_models["bart"], space)
    monkeypatch.setattr(selection, "rescore", _raise)
    monkeypatch.setattr(scoring, "score_on_test", _raise)
    store = ExperimentStore(str(experiment))
    result = finish.summarize([], space, experiment_context(space, store), store)
    assert set(result.stage_failures) == {"re-scoring", "test scoring"}
    assert (result.best.trial_id, result.best.step) == ("a", 200)  # the best by the ranking score
    assert (experiment / "best_model" / "model.safetensors").is_file()
    summary = outcome.format_summary(result)
    assert "Failed: the re-scoring (" in summary and "Traceback" not in summary
    assert all("\n" not in error for error in result.stage_failures.values())


def test_the_search_command_says_a_failed_stage_in_its_exit_code(monkeypatch, capsys, tmp_path):
    from tune_dialsum import cli, search

    failed = outcome.SearchOutcome(str(tmp_path), tmp_path, "rougeL", "max", 100, "steps")
    failed.stage_failures["decoding stage"] = "OSError: no such model"
    monkeypatch.setattr(search, "run_search", lambda space, address=None: failed)
    assert cli.main(["search", "--space", str(REPO / "search_spaces" / "tiny.yaml")]) == 3
    captured = capsys.readouterr()
    assert "Failed: the decoding stage (OSError: no such model)" in captured.out
    assert "the search exported its best model, but the decoding stage failed" in captured.err


def test_a_decoding_stage_that_fails_cancels_what_it_queued(monkeypatch, tmp_path):
    """Issue 24.14: queued decodings hold CPUs or a GPU share until cancelled."""
    from tune_dialsum import decoding, executor

    submitted, cancelled = [], []

    class NodeLost:  # the tasks queue, then a node dies before the first one ends
        def at_once(self):
            return None  # as many as the cluster fits: two, below

        def submit(self, fn, *args, **kwargs):
            submitted.append(object())
            return submitted[-1]

        def first_done(self, handles):
            raise RuntimeError("the node died")

        def cancel(self, handle):
            cancelled.append(handle)

    monkeypatch.setattr(decoding, "task_slots", lambda resources, tasks, per: 2)  # room for two at once
    space = load_space(REPO / "search_spaces" / "tiny.yaml")
    context = experiment_context(space)
    study = decoding.DecodingStudy(
        "d", tmp_path, {"a@1": ("m1", {}), "b@2": ("m2", {})}, space.decoding, context, space.resources
    )
    with executor.installed(NodeLost()), pytest.raises(RuntimeError, match="the node died"):
        decoding.run_decoding_study(study)
    assert submitted and cancelled == submitted


def test_a_cancel_that_fails_hides_nothing_of_the_failure_that_ended_the_stage(monkeypatch):
    """A node already lost cannot cancel its task: the stage's own error is the one to tell."""
    import ray

    from tune_dialsum.executor import RayTasks

    def lost(reference, force=False):
        raise ray.exceptions.RaySystemError("the node is gone")

    monkeypatch.setattr(ray, "cancel", lost)
    RayTasks(1, 0).cancel(object())  # does not raise


def test_scoring_loads_a_model_with_the_spaces_trust_remote_code(monkeypatch, tiny_models):
    """Issue 24.13: a model that needs its own code loads in re-scoring as it did in training."""
    import tune_dialsum.models as models

    asked = []
    real = models.load_model_and_tokenizer

    def loading(name, trust_remote_code=False, data_dir=None):
        asked.append(trust_remote_code)
        return real(name, trust_remote_code, data_dir)

    monkeypatch.setattr(models, "load_model_and_tokenizer", loading)
    space = load_space(REPO / "search_spaces" / "tiny.yaml")
    settings = dataclasses.replace(experiment_context(space), trust_remote_code=True)
    scores = scoring.score_model(str(tiny_models["t5"]), settings, "validation", max_examples=2)
    assert asked == [True] and scores["examples"] == 2


def test_a_time_budget_ends_the_trials_and_still_chooses_and_exports(
    tmp_path, tiny_models, demo_without_decoding, monkeypatch
):
    """Issue 24.11: Ray stops running trials at trials.time_budget_s; that is the end, not an interruption."""
    space = dataclasses.replace(
        demo_without_decoding, trials=dataclasses.replace(demo_without_decoding.trials, num_samples=3, time_budget_s=60)
    )
    experiment = _finished_experiment(tmp_path / "exp", tiny_models["bart"], space)
    for trial in ("a", "b"):  # both stopped by the budget half-way: not done
        report = {"samples": space.scheduler.max_budget // 2, "rougeL": 0.5, "trial_id": trial}
        (experiment / f"trial_{trial}" / "result.json").write_text(json.dumps(report) + "\n")
    rescored = []

    def rescore(top, locations, settings, resources, started=None):
        rescored.append([r.trial_id for r in top])
        return [
            selection.Candidate(r, r.scores["rougeL"], {"rougeL": r.scores["rougeL"], "examples": 3}, []) for r in top
        ]

    monkeypatch.setattr(selection, "rescore", rescore)
    monkeypatch.setattr(scoring, "score_on_test", lambda *args: None)
    store = ExperimentStore(str(experiment))
    result = finish.summarize([], space, experiment_context(space, store), store, out_of_time=True)
    assert result.unfinished == 0 and {t.status for t in result.trials} == {"STOPPED"}
    assert rescored == [["a", "b"]]  # chosen on all of validation, as a search that ran to the end
    assert (experiment / "best_model" / "tuning.json").is_file()
    assert len(list(experiment.glob("trial_*/checkpoint_*/optimizer.pt"))) == 2  # --resume may continue them
    summary = outcome.format_summary(result)
    assert (
        "Time budget reached (trials.time_budget_s: 60 s): 2 running trials stopped at it, 1 never started" in summary
    )


def test_the_stages_after_the_trials_run_in_order_without_ray(tmp_path, tiny_models, monkeypatch):
    """finish.py's one sequence on real checkpoints, its tasks inline (executor.Inline): re-score the
    candidates, decode, export once with every score, score on test, trim what ended trials no longer need."""
    from tests.test_export import _fake_checkpoint
    from tune_dialsum import executor, export
    from tune_dialsum.contract import STOPPED, TERMINATED
    from tune_dialsum.data.synthetic import write_dataset
    from tune_dialsum.finish import Finish
    from tune_dialsum.outcome import SearchOutcome, TrialSummary
    from tune_dialsum.storage import ExperimentStore

    data, root = tmp_path / "data", tmp_path / "exp"
    write_dataset(data, sizes=(("train", 40), ("validation", 8), ("test", 8)))
    for trial, index, step, score in (("a", 1, 200, 0.61), ("a", 2, 300, 0.48), ("b", 1, 300, 0.55)):
        _fake_checkpoint(root, trial, index, step, score, tiny_models["bart"])
    overrides = [f"data.path={data}", "selection.top_k=2", "decoding.num_samples=2", "decoding.max_eval_samples=8"]
    space = load_space(REPO / "search_spaces" / "tiny.yaml", overrides)
    store = ExperimentStore(str(root))
    outcome = SearchOutcome(store.location, root, space.metric, space.mode, 6400, "samples")
    outcome.trials = [TrialSummary("a", STOPPED, 1600, 0.61, {}), TrialSummary("b", TERMINATED, 6400, 0.55, {})]
    exports, recorded = [], []
    monkeypatch.setattr(export, "record_scores", lambda *args, **kwargs: recorded.append(kwargs))
    original = export.export_checkpoint
    monkeypatch.setattr(
        sys.modules["tune_dialsum.finish"], "export_checkpoint", lambda *a, **k: exports.append(k) or original(*a, **k)
    )
    monkeypatch.setattr(sys.modules["tune_dialsum.finish"], "record_scores", export.record_scores)
    inline = executor.Inline()
    with executor.installed(inline):
        Finish(outcome, space, experiment_context(space, store), store).run()

    splits = [(args[2], args[4] if len(args) > 4 else None) for _, args, _ in inline.submitted]
    rescored, decoded, tested = splits[:2], splits[2:-2], splits[-2:] if outcome.test_training_decoding else splits[-1:]
    assert rescored == [("validation", None)] * 2  # every validation example: the two candidates
    assert len(outcome.candidates) == 2 and outcome.full_validation["examples"] == 8
    assert decoded and all(split == ("validation", 8) for split in decoded)  # the decoding study's subset
    assert outcome.decoding is not None and sum(not r.baseline for r in outcome.decoding.records) == 2
    assert all(split == "test" for split, _ in tested) and outcome.test["examples"] == 8
    # written once, with every score measured before it; the test scores added after
    assert len(exports) == 1 and {"full_validation", "selection", "decoding"} <= set(exports[0]["scores"])
    assert [set(r) for r in recorded] == [{"test", "test_training_decoding"}]
    assert not list(root.rglob("optimizer.pt"))  # both trials ended: neither trains again


def test_a_run_is_interrupted_only_by_a_trial_that_neither_ended_nor_failed():
    """A resumed trial that trained its whole budget has ended though Ray left ``done`` unset (seen in
    the faults lifecycle: --resume --num-samples then added no trial and exited as interrupted)."""
    from types import SimpleNamespace

    from tune_dialsum.search import interrupted

    sets = ["scheduler.type=fifo", "scheduler.budget_unit=steps", "scheduler.max_budget=100"]
    context = experiment_context(load_space(REPO / "search_spaces" / "tiny.yaml", sets))

    def result(step: int, done: bool = False, error: Exception | None = None):
        return SimpleNamespace(metrics={"step": step, "done": done}, error=error)

    assert not interrupted([result(100), result(100, done=True)], context)
    assert not interrupted([result(50, done=True), result(50, error=RuntimeError("out of memory"))], context)
    assert interrupted([result(100), result(50)], context)
