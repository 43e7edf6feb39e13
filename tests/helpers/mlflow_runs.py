"""Checks of the MLflow runs a tracked search leaves (used by the faults, kill and resume lifecycle)."""

from __future__ import annotations

import json

from tests.conftest import run_cli


def _runs(experiment_dir):
    from mlflow import MlflowClient

    record = json.loads((experiment_dir / "tracking.json").read_text())
    client = MlflowClient(record["uri"])
    runs = client.search_runs([record["experiment_id"]])
    parent = [r for r in runs if r.info.run_id == record["parent_run_id"]]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == record["parent_run_id"]]
    return client, record, runs, parent, children


def assert_tracked(experiment_dir, trial_ids: set[str], interval: int, analyze: bool = True) -> dict:
    """The MLflow runs of a finished search, tracked with ``--track mlflow`` and the default store: one
    parent run per search, one child per trial of ``trial_ids`` with its settings and every report at
    its budget, the export and the report as the parent's artifacts, and (``analyze``) the analysis report
    logged to the same run. Returns tracking.json's record.

    tests/test_reliability.py::test_a_search_with_faults_survives_a_kill_and_its_resumes_recover_and_grow_it
    runs such a search, kills it, resumes it, and resumes it again adding a trial: the same parent run goes on through all of it."""
    assert (experiment_dir / "mlruns" / "mlflow.db").is_file()  # the default store is inside the experiment
    client, record, runs, parent, children = _runs(experiment_dir)
    assert len(parent) == 1 and parent[0].info.status == "FINISHED"
    by_trial = {}
    for child in children:
        by_trial.setdefault(child.data.tags["tune_dialsum.trial_id"], []).append(child)
    assert trial_ids <= set(by_trial) and all(len(by_trial[t]) == 1 for t in trial_ids)  # one run per trial
    for trial_id in trial_ids:
        child = by_trial[trial_id][0]
        assert child.info.status == "FINISHED", (trial_id, child.info.status)
        assert child.data.tags["tune_dialsum.state"] in {"TERMINATED", "STOPPED"}
    # a trial set aside after the kill (started, never recorded) is not left looking alive
    assert all(c.info.status != "RUNNING" for c in children)

    # the best trial's run holds the settings it trained with and every report at its budget
    tuning = json.loads((experiment_dir / "best_model" / "tuning.json").read_text())
    best_id = parent[0].data.tags["tune_dialsum.best_trial_id"]
    assert best_id == tuning["trial_id"]
    best = by_trial[best_id][0]
    assert best.data.params["model"] == tuning["config"]["model"]
    assert float(best.data.params["learning_rate"]) == tuning["config"]["learning_rate"]
    steps = sorted({m.step for m in client.get_metric_history(best.info.run_id, "rougeL")})
    assert steps == list(range(interval, steps[-1] + 1, interval))  # at its budget: every evaluation
    assert "test_rougeL" in parent[0].data.metrics and "validation_rougeL" in parent[0].data.metrics

    # the exported model and the analysis report are the parent's artifacts
    model_files = {f.path for f in client.list_artifacts(record["parent_run_id"], "best_model")}
    assert {"best_model/config.json", "best_model/generation_config.json", "best_model/tuning.json"} <= model_files
    report_files = {f.path for f in client.list_artifacts(record["parent_run_id"], "report")}
    assert {"report/index.html", "report/curves.png"} <= report_files

    if not analyze:
        return record
    # analyze logs its report to the same run
    analyzed = run_cli("analyze", str(experiment_dir))
    assert analyzed.returncode == 0, analyzed.stderr
    assert "MLflow run " + record["parent_run_id"] in analyzed.stdout
    return record
