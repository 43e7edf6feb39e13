"""One test per internal of Ray or Optuna that tune_dialsum/ray_compat.py reaches: a release that
moves one fails here, naming it. None starts Ray; the running cases are in the slow searches."""

from __future__ import annotations

import inspect
import json

import pytest

from tests.conftest import BUNDLED_DATA, TINY
from tune_dialsum import ray_compat
from tune_dialsum.experiment_context import experiment_context
from tune_dialsum.space import load_space
from tune_dialsum.tuner import build_searcher


@pytest.fixture
def searcher():
    space = load_space(TINY, [f"data.path={BUNDLED_DATA}"])
    return build_searcher(space, experiment_context(space))


def test_optuna_search_keeps_each_tune_trials_optuna_trial_its_study_and_what_it_told(searcher):
    import optuna

    searcher.suggest("a")
    trials, study = ray_compat.optuna_trials(searcher), ray_compat.optuna_study(searcher)
    assert isinstance(trials["a"], optuna.Trial) and isinstance(study, optuna.Study)
    told = ray_compat.told_trials(searcher)
    assert isinstance(told, set) and "a" not in told
    searcher.on_trial_complete("a", None, error=True)
    assert "a" in ray_compat.told_trials(searcher)  # OptunaSearch's own record, which a resume corrects


def test_a_study_trial_is_read_and_labelled_through_its_storage(searcher):
    searcher.suggest("a")
    study, trial = ray_compat.optuna_study(searcher), ray_compat.optuna_trials(searcher)["a"]
    frozen = ray_compat.stored_trial(study, trial)
    assert frozen.number == trial.number and frozen.state.name == "RUNNING"
    ray_compat.label_trial(study, frozen, "abandoned", "why")
    assert ray_compat.stored_trial(study, trial).user_attrs["abandoned"] == "why"


def test_the_session_directory_is_none_where_no_ray_runs_here():
    import ray

    if ray.is_initialized():
        pytest.skip("a Ray started by an earlier test of this process runs")
    assert ray_compat.session_dir() is None


def test_the_loopback_flag_is_where_an_imported_ray_reads_it(monkeypatch):
    from ray._private import ray_constants

    assert hasattr(ray_constants, "ENABLE_RAY_CLUSTER")
    monkeypatch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", True)
    ray_compat.keep_imported_ray_on_loopback()
    assert ray_constants.ENABLE_RAY_CLUSTER is False


def test_the_train_controller_callback_is_called_after_each_report_with_its_metrics_and_checkpoint():
    callback = ray_compat.train_controller_callback()
    assert list(inspect.signature(callback.after_report).parameters) == ["self", "run_context", "metrics", "checkpoint"]


def test_a_placement_group_is_addressed_by_the_hex_id_the_table_lists():
    import ray

    group_id = ray.PlacementGroupID.from_random().hex()
    assert ray_compat.placement_group(group_id).id.hex() == group_id


def test_the_trials_a_run_recorded_are_read_from_its_saved_state(tmp_path):
    trial_data = [[json.dumps({"trial_id": t, "status": "TERMINATED"}), "{}"] for t in ("a", "b")]
    (tmp_path / "experiment_state-2026-12-05_10-00-00.json").write_text(json.dumps({"trial_data": trial_data}))
    (tmp_path / "experiment_state-2026-12-05_11-00-00.json").write_text("{half written")  # being written
    assert ray_compat.recorded_trial_ids(tmp_path) == {"a", "b"}


def test_what_older_experiments_pickled_still_resolves_for_resume():
    """Ray pickles the trainable, the trial-name function and the space into tuner.pkl by module path:
    ``--resume`` of an experiment started before a module moved unpickles these names."""
    import importlib

    pickled_before = {
        "tune_dialsum.search": ["_trial_name"],
        "tune_dialsum.trainable": ["train_dialsum", "ExperimentSettings"],
        "tune_dialsum.space": ["SearchSpace", "Distribution"],
        "tune_dialsum.space_schema": ["DataSection", "SchedulerSection", "ResourcesSection", "TrialsSection"],
    }
    for module, names in pickled_before.items():
        for name in names:
            assert hasattr(importlib.import_module(module), name), f"{module}.{name}"
