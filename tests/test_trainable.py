"""The trainable's decisions that need no Ray: best-so-far, which failures are retried, the summary's wording."""

from __future__ import annotations

import math
import shutil

import pytest
import torch

from tune_dialsum.checkpoints import CheckpointRecord
from tune_dialsum.errors import UsageError
from tune_dialsum.outcome import SearchOutcome, format_summary
from tune_dialsum.retry import NotRetryable, TrialDiverged, is_retryable
from tune_dialsum.rungs import best_score


def test_best_so_far_keeps_the_peak_of_a_dipping_curve():
    # seen on DialogSum: 0.145 at epoch 1, then 0.09: ASHA must see 0.145 at the second rung
    history = [{"eval_rougeL": 0.145}, {"loss": 2.0}, {"eval_rougeL": 0.09}, {"eval_rougeL": float("nan")}]
    assert best_score(history, "rougeL", "max") == 0.145
    assert best_score([{"eval_loss": 3.0}, {"eval_loss": 2.5}, {"eval_loss": 2.7}], "eval_loss", "min") == 2.5
    assert math.isnan(best_score([{"loss": 1.0}], "rougeL", "max"))


@pytest.mark.parametrize(
    "error",
    [
        TrialDiverged("training loss became nan"),
        torch.OutOfMemoryError("CUDA out of memory"),
        RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 GB (out of memory)"),
        UsageError("unknown dialogue format"),
        ValueError("a bad setting"),
        NotRetryable("failed before"),
    ],
)
def test_failures_another_attempt_cannot_fix_are_not_retried(error):
    assert not is_retryable(error)


@pytest.mark.parametrize("error", [RuntimeError("NCCL timeout"), OSError("connection reset"), ConnectionError()])
def test_transient_failures_are_retried(error):
    assert is_retryable(error)


def _outcome(unit: str, record: CheckpointRecord) -> SearchOutcome:
    outcome = SearchOutcome("exp", None, "rougeL", "max", 5, unit, best=record)
    outcome.at_once = 2
    return outcome


def test_the_summary_names_the_budget_in_its_own_unit():
    snapshot = {"config": {"generation_num_beams": 1}, "settings": {}, "samples_per_step": 16}
    record = CheckpointRecord(None, "t1", 1250, {"rougeL": 0.3}, snapshot, epoch=2.0)
    assert "at epoch 2." in format_summary(_outcome("epochs", record))  # not the step count, 1250
    assert "at training examples 20000." in format_summary(_outcome("samples", record))
    assert "at step 1250." in format_summary(_outcome("steps", record))
    assert "(2 at a time)" in format_summary(_outcome("steps", record))


def test_a_trial_that_ran_its_whole_budget_is_finished_even_without_a_done_mark():
    from types import SimpleNamespace

    from tests.conftest import TINY
    from tune_dialsum.experiment_context import experiment_context
    from tune_dialsum.outcome import _classify
    from tune_dialsum.space import load_space

    space = SimpleNamespace(metric="rougeL", mode="max")
    sets = ["scheduler.type=fifo", "scheduler.budget_unit=steps", "scheduler.max_budget=300"]
    context = experiment_context(load_space(TINY, sets))
    rows = [{"step": 100, "rougeL": 0.2}, {"step": 300, "rougeL": 0.3}]  # FIFO: the last report is not marked
    assert _classify("t", rows, rows[-1], {}, None, space, context).status == "TERMINATED"
    assert _classify("t", rows[:1], rows[0], {}, None, space, context).status == "UNFINISHED"
    assert _classify("t", rows[:1], {**rows[0], "done": True}, {}, None, space, context).status == "STOPPED"
    assert _classify("t", rows[:1], rows[0], {}, "boom", space, context).status == "ERROR"


def test_a_trial_resumed_from_a_checkpoint_at_its_whole_budget_trains_and_reports_nothing(tiny_models, tmp_path):
    """The driver died after a trial's last report and before Tune saved it: --resume restarts the trial from
    that checkpoint, and it must end at once (transformers would train one more step and report it again)."""
    import json

    from ray import tune

    from tests.conftest import TINY, mechanics_data
    from tune_dialsum.data import DialogueDataLoader
    from tune_dialsum.experiment_context import experiment_context
    from tune_dialsum.space import load_space
    from tune_dialsum.space_schema import TrialSettings
    from tune_dialsum.train import DialogueSummarizationTrainer
    from tune_dialsum.trainable import TrialRun, train_one

    config = {"model": str(tiny_models["bart"]), "batch_size": 8, "max_input_length": 64, "max_target_length": 16}
    settings = TrialSettings.from_config(config)
    trainer = DialogueSummarizationTrainer.for_settings(settings, str(tmp_path / "first"), tensorboard=False)
    splits = DialogueDataLoader(mechanics_data()).load_splits()
    data = trainer.load_and_prepare_data(splits["train"].head(48), val_df=splits["validation"].head(8))
    arguments = trainer.training_arguments(settings, max_steps=6, save_steps=6, eval_strategy="no", seed=0)
    trainer.train(data, training_args=arguments, save_final_model=False)
    checkpoint = tmp_path / "first" / "checkpoint-6"
    assert json.loads((checkpoint / "trainer_state.json").read_text())["global_step"] == 6

    sets = [f"data.path={mechanics_data()}", "scheduler.budget_unit=steps", "scheduler.max_budget=6"]
    context = experiment_context(load_space(TINY, sets))
    published = []
    run = TrialRun({"trial_id": "t"}, publish=lambda *a: published.append(a), resume_from=tune.Checkpoint(checkpoint))
    train_one(config, context, tmp_path / "scratch", run)
    assert published == []


def test_a_trial_scores_its_last_checkpoint_on_all_of_validation_before_reporting_it(
    tiny_models, tmp_path, monkeypatch
):
    """Where the search re-scores on all of validation, the trial does it for its last checkpoint, in its own
    process: the file is in that checkpoint when it is reported, and holds what the search would measure."""
    import json
    from types import SimpleNamespace

    import ray

    from tests.conftest import TINY, mechanics_data
    from tune_dialsum.checkpoints import read_checkpoint, scored_in_trial
    from tune_dialsum.contract import VALIDATION_SCORES_FILE
    from tune_dialsum.experiment_context import experiment_context
    from tune_dialsum.generation import trial_decoding
    from tune_dialsum.scoring import score_model
    from tune_dialsum.space import load_space
    from tune_dialsum.trainable import TrialRun, train_one

    monkeypatch.setattr(ray, "get_runtime_context", lambda: SimpleNamespace(get_node_id=lambda: "node"))
    sets = [
        f"data.path={mechanics_data()}",
        "data.max_eval_samples=4",
        "scheduler.budget_unit=steps",
        "scheduler.max_budget=4",
        "scheduler.eval_interval=2",
    ]
    context = experiment_context(load_space(TINY, sets))
    assert context.trials_score_last_checkpoint
    config = {"model": str(tiny_models["bart"]), "batch_size": 8, "max_input_length": 64, "max_target_length": 16}
    reported = []

    def publish(report, checkpoint_dir):  # Tune copies the directory now: what is in it is what it keeps
        path = tmp_path / "kept" / f"checkpoint-{report['step']}"
        shutil.copytree(checkpoint_dir, path)
        reported.append(path)

    run = TrialRun({"trial_id": "t"}, publish=publish, scores_last_checkpoint=True)
    train_one(config, context, tmp_path / "scratch", run)
    assert [p.name for p in reported] == ["checkpoint-2", "checkpoint-4"]
    assert not (reported[0] / VALIDATION_SCORES_FILE).exists()
    record = read_checkpoint(reported[1])
    stored = scored_in_trial(record)
    assert json.loads((reported[1] / VALIDATION_SCORES_FILE).read_text())["decoding"] == trial_decoding(
        record.snapshot["config"]
    )
    fresh = score_model(
        str(reported[1]), context, "validation", trial_decoding(record.snapshot["config"]), per_example=True
    )
    assert stored["examples"] > 4  # all of validation, not the subset the rungs compare
    assert (stored["examples"], stored["rougeL"], stored["per_example"]) == (
        fresh["examples"],
        fresh["rougeL"],
        fresh["per_example"],
    )


@pytest.mark.parametrize(
    ("sets", "scores"),
    [
        ([], True),  # the demo: ASHA, a validation subset ranks the rungs
        (["scheduler.type=fifo"], False),  # every trial trains its whole budget, most are not candidates
        (["objective.metric=eval_loss", "objective.mode=min"], False),  # nothing is re-scored
        (["resources.gpus_per_trial=0.5"], False),  # a second copy of the model beside another trial's
        (["resources.workers_per_trial=2"], False),  # one rank would decode while the others wait
        (["trials.time_budget_s=600"], False),  # a budget ending during the decoding would lose the report
    ],
)
def test_which_searches_have_their_trials_score_their_last_checkpoint(sets, scores):
    from tests.conftest import TINY
    from tune_dialsum.experiment_context import experiment_context
    from tune_dialsum.space import load_space

    assert experiment_context(load_space(TINY, sets)).trials_score_last_checkpoint is scores
