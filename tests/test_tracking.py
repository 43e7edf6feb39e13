"""Experiment tracking with real MLflow on a local store: one parent run per search, a child per trial."""

from __future__ import annotations

import dataclasses
import sys

import pytest

from tests.conftest import tiny_search_command
from tune_dialsum.errors import SpaceError
from tune_dialsum.space import parse_space

mlflow = pytest.importorskip("mlflow", reason="mlflow is the optional 'tracking' extra")

# A tracked search killed, resumed and grown:
# tests/test_reliability.py::test_a_search_with_faults_survives_a_kill_and_its_resumes_recover_and_grow_it,
# with the checks of tests/helpers/mlflow_runs.py.


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
    assert dataclasses.asdict(space.tracking) == {"backend": "mlflow", "uri": "/tmp/m"}
    assert parse_space(base).tracking is None
    assert parse_space({**base, "tracking": {"backend": "none"}}).tracking is None


def test_tracking_without_mlflow_is_a_one_line_error_naming_the_extra(tmp_path, monkeypatch, capsys):
    from tune_dialsum.cli import main

    monkeypatch.setitem(sys.modules, "mlflow", None)  # as where it is not installed: `import mlflow` fails
    argv = tiny_search_command(tmp_path, "untracked")[3:] + ["--track", "mlflow"]  # after python -m tune_dialsum
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "tune_dialsum[tracking]" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "untracked").exists()  # refused before anything is written


def test_the_tracking_store_is_the_flag_then_the_environment_then_the_experiment(tmp_path, monkeypatch):
    from tune_dialsum.errors import UsageError
    from tune_dialsum.tracking import tracking_uri

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri(None, tmp_path, remote=False) == f"sqlite:///{tmp_path.resolve()}/mlruns/mlflow.db"
    assert tracking_uri(str(tmp_path / "store"), tmp_path, remote=False) == f"sqlite:///{tmp_path}/store/mlflow.db"
    assert tracking_uri("http://127.0.0.1:5000", tmp_path, remote=True) == "http://127.0.0.1:5000"
    assert tracking_uri("databricks", tmp_path, remote=False) == "databricks"  # a scheme name, not a path
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5001")
    assert tracking_uri(None, tmp_path, remote=True) == "http://127.0.0.1:5001"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    with pytest.raises(UsageError, match="--track-uri URI .* MLFLOW_TRACKING_URI"):
        tracking_uri(None, tmp_path, remote=True)  # a bucket experiment has no folder to hold the store
