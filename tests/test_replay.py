"""The replay benchmark: the project's searcher and scheduler driven against a table of curves."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import replay  # noqa: E402

COLUMNS = ["samples", "train_s", "subset_s", "rest_s", "train_loss", "subset_rougeL", "full_rougeL"]
RATES = [1e-3, 2e-3, 4e-3, 8e-3]


def write_rows(path: Path, row, columns=COLUMNS) -> Path:
    """A table over RATES x 2 formats x 2 batch sizes: 8 evaluations of 100 examples, ``row(config, k)`` each."""
    curves = []
    for lr in RATES:
        for fmt in ("standard", "turns"):
            for batch in (8, 16):
                config = {"learning_rate": lr, "dialogue_format": fmt, "batch_size": batch}
                curves.append({"config": config, "setup_s": 2.0, "rows": [row(config, k) for k in range(1, 9)]})
    meta = {
        "machine": "test",
        "recorded": "now",
        "settings": {"budget": 800, "interval": 100, "subset": 10, "family": "t5"},
    }
    path.write_text(json.dumps({"meta": meta, "columns": list(columns), "curves": curves}))
    return path


def write_table(path: Path, quality) -> Path:
    """A table whose curves rise towards ``quality(config)``; each evaluation 1 s of training."""

    def row(config: dict, k: int) -> list:
        score = round(quality(config) * (1 - math.exp(-k / 3)), 5)
        return [100 * k, 1.0, 0.5, 1.0, 1.0, score, score]

    return write_rows(path, row)


def by_rate(config: dict) -> float:
    return {1e-3: 0.1, 2e-3: 0.2, 4e-3: 0.3, 8e-3: 0.15}[config["learning_rate"]]


def test_fifo_trains_every_trial_to_the_budget_and_asha_stops_some(tmp_path):
    table = replay.CurveTable(write_table(tmp_path / "t.json", by_rate))
    fifo = replay.benchmark_space(table, "fifo", **{"scheduler.type": "fifo", "trials.num_samples": 8})
    asha = replay.benchmark_space(table, "asha", **{"trials.num_samples": 8, "scheduler.grace_period": 100})
    fifo_run, asha_run = replay.replay(table, fifo), replay.replay(table, asha)
    assert fifo_run.samples == 8 * 800
    assert asha_run.samples < fifo_run.samples
    assert fifo_run.regret >= 0 and asha_run.regret >= 0
    # two workers, identical trial lengths: four rounds of (start + 8 segments)
    assert fifo_run.wall_s == pytest.approx(4 * (2.0 + 8 * 1.0 + 2 * 0.5 + 2 * 0.5), rel=0.01)
    assert fifo_run.busy_s == pytest.approx(2 * fifo_run.wall_s, rel=0.01)


def test_compute_to_target_counts_examples_until_the_incumbent_is_within_one_percent(tmp_path):
    table = replay.CurveTable(write_table(tmp_path / "t.json", lambda config: 0.3))
    space = replay.benchmark_space(
        table,
        "one",
        **{
            "scheduler.type": "fifo",
            "trials.num_samples": 1,
            "trials.max_concurrent": 1,
            "scheduler.eval_interval": 100,
        },
    )
    run = replay.replay(table, space)
    final = 0.3 * (1 - math.exp(-8 / 3))
    first = next(100 * k for k in range(1, 9) if 0.3 * (1 - math.exp(-k / 3)) >= 0.99 * final - 1e-5)
    assert run.compute_to_target == first
    assert run.regret == pytest.approx(0.0, abs=1e-5)


def test_a_replay_is_the_same_for_the_same_seed_and_differs_across_seeds(tmp_path):
    table = replay.CurveTable(write_table(tmp_path / "t.json", by_rate))
    runs = [replay.replay(table, replay.benchmark_space(table, "s", seed=seed)) for seed in (0, 0, 1, 2, 3)]
    assert runs[0] == runs[1]
    assert len({(r.samples, r.regret) for r in runs[1:]}) > 1


def test_the_gpu_check_without_a_gpu_says_it_skipped_and_records_it(tmp_path):
    import os
    import subprocess

    out = tmp_path / "gpu.json"
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
    completed = subprocess.run(
        [sys.executable, str(script), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert "no GPU: skipped" in completed.stdout.strip().splitlines()[-1]
    assert json.loads(out.read_text())["skipped"] == "no GPU"


def test_overhead_splits_slot_time_into_before_between_inside_and_after():
    import overhead
    import pandas as pd

    # two slots; a runs 5..15 s, b 6..16 s, c waits for a's slot and runs 18..28 s; the search ran 0..35 s
    curves = pd.DataFrame(
        [
            {"trial_id": "a", "timestamp": 10.0, "time_total_s": 5.0},
            {"trial_id": "a", "timestamp": 15.0, "time_total_s": 10.0},
            {"trial_id": "b", "timestamp": 16.0, "time_total_s": 10.0},
            {"trial_id": "c", "timestamp": 28.0, "time_total_s": 10.0},
        ]
    )
    parts = overhead.slot_breakdown(curves, slots=2, began=0.0, ended=35.0)
    assert parts == {"before": 5.0, "between_per_trial": 3.0, "inside": 30.0, "after": 7.0}


def write_late_bloomer_table(path: Path) -> Path:
    """lr 4e-3 scores 0 ROUGE for 4 evaluations (then 0.5), the others plateau at 0.2 from the first; the
    loss falls fastest for lr 4e-3 from the start. Subset and full scores are equal."""

    def row(config: dict, k: int) -> list:
        bloomer = config["learning_rate"] == 4e-3
        score = (0.5 if k >= 5 else 0.0) if bloomer else 0.2
        loss = (3.0 if bloomer else 4.0) - 0.1 * k
        return [100 * k, 1.0, 0.5, 1.0, 1.0, score, score, loss, loss, 30]

    return write_rows(path, row, [*COLUMNS, "subset_loss", "full_loss", "full_distinct"])


def test_rungs_ranked_on_the_loss_keep_a_late_bloomer_that_rouge_rungs_stop(tmp_path):
    table = replay.CurveTable(write_late_bloomer_table(tmp_path / "t.json"))
    assert table.has_loss
    base = {"trials.num_samples": 16, "scheduler.grace_period": 200, "scheduler.eval_interval": 100}
    regrets = {}
    for rung_metric in ("objective", "eval_loss", "auto"):
        runs = [
            replay.replay(
                table, replay.benchmark_space(table, "r", seed=s, **base, **{"scheduler.rung_metric": rung_metric})
            )
            for s in range(5)
        ]
        regrets[rung_metric] = sum(r.regret for r in runs) / len(runs)
    assert regrets["eval_loss"] < regrets["objective"]
    assert regrets["auto"] < regrets["objective"]


def test_a_table_without_loss_refuses_a_loss_rung_metric(tmp_path):
    table = replay.CurveTable(write_table(tmp_path / "t.json", by_rate))
    space = replay.benchmark_space(table, "r", **{"scheduler.rung_metric": "eval_loss"})
    with pytest.raises(ValueError, match="no subset_loss"):
        replay.replay(table, space)
