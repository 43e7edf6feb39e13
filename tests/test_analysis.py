"""Analysis frames, the analyze command and its report, and the notebook, on a real finished experiment."""

import itertools
import math
import os

import pytest

from tests.conftest import REPO, run_cli, trial_results
from tune_dialsum.analysis import Experiment
from tune_dialsum.errors import UsageError

pytestmark = pytest.mark.slow


def test_trials_frame_has_a_row_per_trial_with_state_and_scores(tiny_search):
    _, experiment_dir = tiny_search
    experiment = Experiment.load(experiment_dir)
    trials = experiment.trials
    results = trial_results(experiment_dir)
    assert len(trials) == len(results) == 8
    assert set(trials["state"]) <= {"TERMINATED", "STOPPED"} and "STOPPED" in set(trials["state"])
    for row in trials.itertuples():
        rows = results[f"trial_{row.trial_id}"]
        assert row.best_rougeL == pytest.approx(max(r["rougeL"] for r in rows))
        assert row.last_rougeL == pytest.approx(rows[-1]["rougeL"])
        assert row.samples == rows[-1]["samples"] and row.stopped_early == (row.samples < 6400)
        assert row.wall_time_s > 0 and row.model in ("tiny:bart", "tiny:t5")


def test_curves_and_leaderboard(tiny_search):
    experiment = Experiment.load(tiny_search[1])
    assert len(experiment.curves) == sum(len(r) for r in trial_results(tiny_search[1]).values())
    board = experiment.leaderboard()
    assert list(board["best_rougeL"]) == sorted(board["best_rougeL"], reverse=True)
    assert len(experiment.leaderboard(top=3)) == 3


def test_importance_comes_from_the_optuna_study(tiny_search):
    importance = Experiment.load(tiny_search[1]).importance()
    if importance.empty:
        pytest.skip("too few finished trials for importance in this run")
    assert set(importance.index) <= {
        "model",
        "learning_rate",
        "dialogue_format",
        "batch_size",
        "max_target_length",
        "learning_rate@t5",
    }
    assert math.isclose(importance.sum(), 1.0, rel_tol=1e-6)


def test_boundary_warning_names_a_setting_whose_best_value_is_at_an_edge(tiny_search, tmp_path):
    import shutil

    import yaml

    copy = tmp_path / "exp"
    shutil.copytree(tiny_search[1], copy, ignore=shutil.ignore_patterns("checkpoint_*", "hf"))
    experiment = Experiment.load(copy)
    best = experiment.leaderboard().iloc[0]
    space = yaml.safe_load((copy / "space.yaml").read_text())
    # Narrow the best trial's batch size range to end exactly at its value: it is now at the edge.
    space["search"]["batch_size"] = {"int": [1, int(best["batch_size"])]}
    (copy / "space.yaml").write_text(yaml.safe_dump(space))
    warnings = Experiment.load(copy).boundary_warnings()
    assert any(w.startswith("batch_size:") and "upper edge" in w for w in warnings)


def test_analyze_writes_the_leaderboard_plots_and_page(tiny_search):
    _, experiment_dir = tiny_search
    completed = run_cli("analyze", str(experiment_dir))
    assert completed.returncode == 0, completed.stderr
    assert "best_rougeL" in completed.stdout and "report:" in completed.stdout
    report = experiment_dir / "report"
    for name in ("curves.png", "settings.png", "parallel_coordinates.png", "importance.png", "decoding.png"):
        assert (report / name).stat().st_size > 1000
        assert (report / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (report / "index.html").read_text()
    assert "<table" in page and all(n in page for n in ("curves.png", "importance.png", "decoding.png"))


def test_not_an_experiment_is_a_clear_error(tmp_path):
    with pytest.raises(UsageError, match="not an experiment directory"):
        Experiment.load(tmp_path)
    completed = run_cli("analyze", str(tmp_path / "missing"), timeout=120)
    assert completed.returncode == 2 and "Traceback" not in completed.stderr


def test_the_notebook_runs_clean(tiny_search):
    import nbclient
    import nbformat

    notebook = nbformat.read(REPO / "notebooks" / "trial_analysis.ipynb", as_version=4)
    os.environ["TUNE_DIALSUM_EXPERIMENT"] = str(tiny_search[1])
    try:
        nbclient.NotebookClient(
            notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(REPO / "notebooks")}}
        ).execute()
    finally:
        os.environ.pop("TUNE_DIALSUM_EXPERIMENT")
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    # the learning curves, importance, settings and the decoding front
    assert sum(o.output_type == "display_data" and "image/png" in o.data for o in outputs) == 4
    summaries = notebook.cells[-1].outputs[-1].data["text/html"]  # the exported model on three validation rows
    assert summaries.count("<tr>") == 3 and "reference" in summaries and "summary" in summaries


def test_settings_plot_draws_choices_as_categories_and_labels_log_axes_legibly(tiny_search, tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    from tune_dialsum.report import plot_settings

    figures = []
    monkeypatch.setattr(plt, "close", figures.append)  # keep the figure to look at its axes
    plot_settings(Experiment.load(tiny_search[1]), tmp_path / "settings.png")
    axes = {ax.get_xlabel(): ax for ax in figures[0].axes}
    batch = axes["batch_size"]
    assert [t.get_text() for t in batch.get_xticklabels()] == ["8", "16"]  # two slots, not a 8..16 number line
    assert batch.get_xscale() == "linear" and batch.get_xlim() == (-0.5, 1.5)
    assert [t.get_text() for t in axes["dialogue_format"].get_xticklabels()] == ["standard", "turns", "compact"]
    rate = axes["learning_rate"]
    assert rate.get_xscale() == "log"
    assert not [t for t in rate.get_xticklabels(minor=True) if t.get_text()]  # no minor labels to collide
    figures[0].canvas.draw()
    boxes = [t.get_window_extent() for t in rate.get_xticklabels() if t.get_text()]
    assert 2 <= len(boxes) <= 4 and not any(a.overlaps(b) for a, b in itertools.combinations(boxes, 2))
    monkeypatch.undo()
    plt.close(figures[0])


def test_importance_uses_every_trial_of_a_conditional_space():
    """Issue 24.17: with a rate per family, Optuna alone kept one family's trials and said `model` mattered 0."""
    import optuna

    from tune_dialsum.analysis import param_importances, param_importances_by

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))

    def objective(trial):
        model = trial.suggest_categorical("model", ["tiny:bart", "tiny:t5"])
        rate = trial.suggest_float(f"learning_rate@{model.split(':')[1]}", 1e-4, 1e-2, log=True)
        trial.suggest_categorical("dialogue_format", ["standard", "turns"])
        return (0.5 if model == "tiny:bart" else 0.1) + rate  # the family decides; the rate barely

    study.optimize(objective, n_trials=24)

    importance = param_importances(study)
    assert importance.attrs["trials"] == 24  # every trial, not one family's
    assert set(importance.index) == {"model", "dialogue_format"} and importance["model"] > 0.5
    by_family = param_importances_by(study, "model")
    assert set(by_family) == {"tiny:bart", "tiny:t5"}
    assert sum(s.attrs["trials"] for s in by_family.values()) == 24
    assert "learning_rate@t5" in by_family["tiny:t5"].index


def test_a_trial_that_trained_its_whole_budget_has_ended_even_unmarked(tmp_path):
    """Issue 25: Ray marks done only what its scheduler stopped; a FIFO trial at its budget is not RUNNING."""
    import json

    experiment = tmp_path / "fifo"
    experiment.mkdir()
    (experiment / "space.yaml").write_text((REPO / "search_spaces" / "tiny.yaml").read_text())  # 6,400 examples
    for trial, last in (("full", 6400), ("half", 3200)):
        (experiment / f"trial_{trial}").mkdir()
        rows = [
            {"trial_id": trial, "samples": s, "rougeL": 0.1 * i, "time_total_s": i}
            for i, s in enumerate(range(1600, last + 1, 1600), start=1)
        ]
        (experiment / f"trial_{trial}" / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    states = Experiment.load(experiment).trials.set_index("trial_id")["state"]
    assert states.to_dict() == {"full": "TERMINATED", "half": "RUNNING"}
