"""Experiment tracking with real MLflow on a local store: one parent run per search, a child per trial."""

from __future__ import annotations

import json
import os

import pytest

from tests.conftest import run_cli, run_process, tiny_search_command
from tune_dialsum.errors import SpaceError
from tune_dialsum.space import parse_space

mlflow = pytest.importorskip("mlflow", reason="mlflow is the optional 'tracking' extra")


def _runs(experiment_dir):
    from mlflow import MlflowClient

    record = json.loads((experiment_dir / "tracking.json").read_text())
    client = MlflowClient(record["uri"])
    runs = client.search_runs([record["experiment_id"]])
    parent = [r for r in runs if r.info.run_id == record["parent_run_id"]]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == record["parent_run_id"]]
    return client, record, runs, parent, children


@pytest.mark.slow
def test_a_tracked_search_logs_a_run_per_trial_under_one_run_per_search_and_resuming_continues_it(tmp_path):
    sets = (
        "trials.num_samples=2",
        "scheduler.max_budget=400",
        "scheduler.grace_period=200",
        "scheduler.eval_interval=200",
        "selection.top_k=1",
    )
    command = tiny_search_command(tmp_path, "tracked", *sets) + ["--track", "mlflow"]
    completed = run_process(command, timeout=900)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    experiment_dir = tmp_path / "tracked"
    assert "tracking: MLflow run" in completed.stdout
    assert (experiment_dir / "mlruns" / "mlflow.db").is_file()  # the default store is inside the experiment

    client, record, runs, parent, children = _runs(experiment_dir)
    assert len(runs) == 3 and len(parent) == 1 and len(children) == 2
    assert parent[0].info.status == "FINISHED" and all(c.info.status == "FINISHED" for c in children)
    assert {c.data.tags["tune_dialsum.state"] for c in children} <= {"TERMINATED", "STOPPED"}

    # the best trial's child run holds the settings it trained with and every report at its budget
    tuning = json.loads((experiment_dir / "best_model" / "tuning.json").read_text())
    best_id = parent[0].data.tags["tune_dialsum.best_trial_id"]
    assert best_id == tuning["trial_id"]
    best = next(c for c in children if c.data.tags["tune_dialsum.trial_id"] == best_id)
    assert best.data.params["learning_rate"] == str(tuning["config"]["learning_rate"])
    assert best.data.params["model"] == tuning["config"]["model"]
    history = client.get_metric_history(best.info.run_id, "rougeL")
    assert [m.step for m in history] == list(range(200, 200 * (len(history) + 1), 200))  # examples seen
    assert "test_rougeL" in parent[0].data.metrics and "validation_rougeL" in parent[0].data.metrics

    # the exported model and the analysis report are the parent's artifacts
    model_files = {f.path for f in client.list_artifacts(record["parent_run_id"], "best_model")}
    assert {"best_model/config.json", "best_model/generation_config.json", "best_model/tuning.json"} <= model_files
    report_files = {f.path for f in client.list_artifacts(record["parent_run_id"], "report")}
    assert {"report/index.html", "report/curves.png"} <= report_files

    # a resumed search (one more trial) continues the same parent run
    resumed = run_cli("search", "--resume", "--name", "tracked", "--storage-path", str(tmp_path), "--num-samples", "3")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    _, again, runs, parent, children = _runs(experiment_dir)
    assert again == record and len(parent) == 1 and len(runs) == 4 and len(children) == 3
    assert parent[0].info.status == "FINISHED"

    # analyze logs its report to the same parent run
    analyzed = run_cli("analyze", str(experiment_dir))
    assert analyzed.returncode == 0, analyzed.stderr
    assert "MLflow run " + record["parent_run_id"] in analyzed.stdout


def test_tracking_section_is_validated():
    base = {
        "fixed": {"model": "tiny:bart"},
        "search": {"learning_rate": {"loguniform": [1e-4, 1e-3]}},
        "scheduler": {"max_budget": 100},
    }
    with pytest.raises(SpaceError, match="tracking.backend.*wandb"):
        parse_space({**base, "tracking": {"backend": "wandb"}})
    with pytest.raises(SpaceError, match="tracking.url.*unknown key"):
        parse_space({**base, "tracking": {"url": "x"}})
    space = parse_space({**base, "tracking": {"uri": "/tmp/m"}})
    assert space.tracking == {"backend": "mlflow", "uri": "/tmp/m"}
    assert parse_space(base).tracking is None
    assert parse_space({**base, "tracking": {"backend": "none"}}).tracking is None


def test_tracking_without_mlflow_is_a_one_line_error_naming_the_extra(tmp_path):
    hidden = tmp_path / "hide" / "mlflow"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text("raise ImportError(\"No module named 'mlflow'\")\n")
    env = {**os.environ, "PYTHONPATH": str(hidden.parent)}
    command = tiny_search_command(tmp_path, "untracked") + ["--track", "mlflow"]
    completed = run_process(command, timeout=300, env=env)
    assert completed.returncode == 2, completed.stderr[-2000:]
    assert "tune_dialsum[tracking]" in completed.stderr and "Traceback" not in completed.stderr
    assert len(completed.stderr.strip().splitlines()) == 1
