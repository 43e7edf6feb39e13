"""The comparison benchmark's peer trains what ours trains: the same examples and evaluation points per trial."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import vs_transformers  # noqa: E402

TRAIN_ROWS = 2400  # the bundled bed's train split


def steps_transformers_runs(model_dir, budget: dict, batch: int, tmp_path) -> tuple[int, int]:
    """(steps trained, steps between evaluations) as a Trainer works them out from these arguments."""
    from transformers import AutoModelForSeq2SeqLM, Seq2SeqTrainer, Seq2SeqTrainingArguments, TrainerState

    args = Seq2SeqTrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=batch, eval_strategy="steps", report_to="none", **budget
    )
    rows = [{"input_ids": [1], "labels": [1]}] * TRAIN_ROWS  # only how many count here
    model = AutoModelForSeq2SeqLM.from_pretrained(str(model_dir))
    trainer = Seq2SeqTrainer(model=model, args=args, train_dataset=rows, eval_dataset=rows[:1])
    steps = trainer.set_initial_training_values(args, trainer.get_train_dataloader())[-1]
    state = TrainerState()
    state.compute_steps(args, steps)
    return steps, state.eval_steps


@pytest.mark.parametrize("batch", [8, 16])
def test_a_searched_batch_size_trains_our_examples_and_reports_at_our_rungs(batch, tiny_models, tmp_path):
    scheduler = SimpleNamespace(budget_unit="samples", max_budget=6400, eval_interval=1600)
    budget = vs_transformers._trial_budget(scheduler, 8, batch_searched=True, train_rows=TRAIN_ROWS)
    steps, every = steps_transformers_runs(tiny_models["t5"], budget, batch, tmp_path)
    assert (steps * batch, every * batch) == (6400, 1600)


def test_a_fixed_batch_size_or_a_step_budget_counts_steps(tiny_models, tmp_path):
    samples = SimpleNamespace(budget_unit="samples", max_budget=6400, eval_interval=1600)
    fixed = vs_transformers._trial_budget(samples, 16, False, TRAIN_ROWS)
    assert steps_transformers_runs(tiny_models["t5"], fixed, 16, tmp_path) == (400, 100)
    steps = SimpleNamespace(budget_unit="steps", max_budget=600, eval_interval=100)
    by_steps = vs_transformers._trial_budget(steps, 8, True, TRAIN_ROWS)
    assert steps_transformers_runs(tiny_models["t5"], by_steps, 16, tmp_path) == (600, 100)


def test_a_single_evaluation_is_refused_rather_than_one_at_every_step():
    once = SimpleNamespace(budget_unit="samples", max_budget=1600, eval_interval=1600)
    with pytest.raises(SystemExit, match="evaluates once"):
        vs_transformers._trial_budget(once, 8, True, TRAIN_ROWS)


def test_the_tail_is_the_time_the_last_trial_trains_alone(tmp_path):
    for trial, ends in (("a", [10.0, 30.0]), ("b", [12.0, 41.5]), ("c", [20.0])):
        (tmp_path / f"trial_{trial}").mkdir()
        rows = [json.dumps({"timestamp": t, "rougeL": 0.5}) for t in ends]
        (tmp_path / f"trial_{trial}" / "result.json").write_text("\n".join(rows) + "\n")
    (tmp_path / "trial_d").mkdir()
    (tmp_path / "trial_d" / "result.json").write_text("")  # a trial that never reported
    assert vs_transformers.last_trial_alone_s(tmp_path) == pytest.approx(11.5)
