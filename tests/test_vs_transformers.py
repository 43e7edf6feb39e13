"""The comparison benchmark's peer trains what ours trains: the same examples and evaluation points per trial."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import vs_transformers  # noqa: E402

TRAIN_ROWS = 2400  # the bundled bed's train split


def steps_transformers_runs(budget: dict, batch: int, tmp_path) -> tuple[int, int]:
    """(steps trained, steps between evaluations) as transformers works them out from these arguments."""
    from transformers import Seq2SeqTrainingArguments, TrainerState

    args = Seq2SeqTrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=batch, eval_strategy="steps", report_to="none", **budget
    )
    per_epoch = math.ceil(TRAIN_ROWS / batch)  # the train dataloader's length (drop_last is off)
    steps = args.max_steps if args.max_steps > 0 else math.ceil(args.num_train_epochs * per_epoch)
    state = TrainerState()
    state.compute_steps(args, steps)
    return steps, state.eval_steps


@pytest.mark.parametrize("batch", [8, 16])
def test_a_searched_batch_size_trains_our_examples_and_reports_at_our_rungs(batch, tmp_path):
    scheduler = SimpleNamespace(budget_unit="samples", max_budget=6400, eval_interval=1600)
    budget = vs_transformers._trial_budget(scheduler, 8, batch_searched=True, train_rows=TRAIN_ROWS)
    steps, every = steps_transformers_runs(budget, batch, tmp_path)
    assert (steps * batch, every * batch) == (6400, 1600)


def test_a_fixed_batch_size_or_a_step_budget_counts_steps(tmp_path):
    samples = SimpleNamespace(budget_unit="samples", max_budget=6400, eval_interval=1600)
    assert steps_transformers_runs(vs_transformers._trial_budget(samples, 16, False, TRAIN_ROWS), 16, tmp_path) == (
        400,
        100,
    )
    steps = SimpleNamespace(budget_unit="steps", max_budget=600, eval_interval=100)
    assert steps_transformers_runs(vs_transformers._trial_budget(steps, 8, True, TRAIN_ROWS), 16, tmp_path) == (
        600,
        100,
    )
