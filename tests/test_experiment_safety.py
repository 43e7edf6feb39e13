"""Issue 24: what a driver may write, and where: the experiment it was pointed at, one driver at a time,
the model its decoding study decodes, the rows it holds out, and nothing in a read-only dataset."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tune_dialsum.errors import UsageError
from tune_dialsum.experiment_context import experiment_context
from tune_dialsum.lock import experiment_lock, lock_path
from tune_dialsum.space import load_space
from tune_dialsum.storage import ExperimentStore


def test_a_copied_experiment_runs_in_its_own_directory(tmp_path):
    """24.3: the copy's space.yaml still names the original; Ray must write where the copy is."""
    from tune_dialsum.tuner import build_tuner

    space = load_space(REPO / "search_spaces" / "tiny.yaml")  # name: tiny-demo
    store = ExperimentStore(str(tmp_path / "copy-of-demo"))
    store.local.mkdir()
    tuner = build_tuner(space, experiment_context(space, store), store, 1, False, [], at_once=1)
    assert tuner._local_tuner.get_run_config().name == "copy-of-demo"


def test_a_second_driver_on_one_experiment_is_refused_in_one_line(tmp_path):
    """24.7: the lock names its holder; a holder that died is taken over."""
    experiment = tmp_path / "demo"
    with experiment_lock(experiment):
        assert json.loads(lock_path(experiment).read_text())["pid"] == os.getpid()
    assert lock_path(experiment).read_text() == ""  # released
    # another driver of this host: refused while it lives; killed with SIGKILL, its flock goes with it
    killed = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from tune_dialsum.lock import experiment_lock\n"
            "with experiment_lock(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(60)",
            str(experiment),
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    assert killed.stdout.readline().strip() == "held"
    with pytest.raises(UsageError, match=rf"^experiment demo: in use by search pid {killed.pid} on ") as e:
        with experiment_lock(experiment):
            pass
    assert "\n" not in str(e.value) and "delete the lock file" in str(e.value)
    killed.kill()
    killed.wait()
    assert json.loads(lock_path(experiment).read_text())["pid"] == killed.pid  # as SIGKILL leaves it
    with experiment_lock(experiment):
        assert json.loads(lock_path(experiment).read_text())["pid"] == os.getpid()
        with experiment_lock(experiment):  # re-entrant in one process (a resume, then its search)
            pass
    elsewhere = {"host": "another-host", "pid": 1, "what": "search"}
    lock_path(experiment).write_text(json.dumps(elsewhere))  # cannot be checked from here: refused
    with pytest.raises(UsageError, match="in use by search pid 1 on another-host"):
        with experiment_lock(experiment):
            pass


def test_a_search_refuses_an_experiment_another_driver_holds(tmp_path):
    """24.7, end to end through the command line: before Ray starts, exit 2, no traceback."""
    experiment = tmp_path / "demo"
    experiment.mkdir()
    (experiment / "space.yaml").write_text((REPO / "search_spaces" / "tiny.yaml").read_text())
    with experiment_lock(experiment):
        completed = subprocess.run(
            [
                sys.executable,
                "-m",
                "tune_dialsum",
                "search",
                "--resume",
                "--name",
                "demo",
                "--storage-path",
                str(tmp_path),
            ],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=120,
        )
    assert completed.returncode == 2 and "in use by search pid" in completed.stderr
    assert "Traceback" not in completed.stderr


def test_tune_decoding_refuses_an_out_that_holds_another_models_study(tmp_path, tiny_models):
    """24.12: ``--out X`` with a study continues only the study of the same model."""
    from tune_dialsum.space import decoding_space
    from tune_dialsum.tune_decoding import tune_model

    out = tmp_path / "decoded"
    out.mkdir()
    (out / "decoding.json").write_text(json.dumps({"records": [], "chosen": None}))
    (out / "decoding_source.json").write_text(json.dumps({"model": str(tiny_models["bart"])}))
    space = decoding_space(None, str(REPO / "data"), str(tiny_models["t5"]))
    with pytest.raises(UsageError, match=r"holds the decoding study of .*bart.*, not of .*t5.*; pass that model"):
        tune_model(str(tiny_models["t5"]), out, space, experiment_context(space))


def test_decoding_holds_out_the_rows_the_model_was_trained_without(tmp_path):
    """24.15: the seed the model's rows were held out with, not the space's, draws tune-decoding's rows."""
    from tune_dialsum.tune_decoding import _on_the_models_rows

    space = load_space(REPO / "search_spaces" / "tiny.yaml")  # seed 0
    context = experiment_context(space)
    (tmp_path / "tune_dialsum.json").write_text(json.dumps({"dialogue_format": "standard", "data_seed": 42}))
    assert _on_the_models_rows(context, tmp_path).seed == 42
    (tmp_path / "tuning.json").write_text(json.dumps({"data_seed": 7}))  # an export records its search's
    assert _on_the_models_rows(context, tmp_path).seed == 7
    (tmp_path / "tuning.json").write_text(json.dumps({"settings": {"seed": 5}}))  # an export from before data_seed
    assert _on_the_models_rows(context, tmp_path).seed == 5
    (tmp_path / "tuning.json").write_text(json.dumps({"data_seed": 0}))
    assert _on_the_models_rows(context, tmp_path) is context


def test_a_read_only_dataset_gets_no_marker_written_into_it(tmp_path):
    """24.16: the data is only read; its reachability is checked with a file already there."""
    from tune_dialsum.cluster import shared_path_markers

    data, storage = tmp_path / "data", tmp_path / "ray_results"
    data.mkdir()
    storage.mkdir()
    (data / "train.jsonl").write_text("{}\n")
    (data / "validation.jsonl").write_text("{}\n")
    markers, created = shared_path_markers({"storage_path": str(storage)}, {"data.path": str(data)})
    assert sorted(p.name for p in data.iterdir()) == ["train.jsonl", "validation.jsonl"]  # nothing written
    assert markers["data.path"] == str(data / "train.jsonl")
    assert created == [markers["storage_path"]] and os.path.isfile(markers["storage_path"])


def test_the_dashboard_serves_reads_for_loopback_names_only(tmp_path):
    """24.9: optuna-dashboard can delete studies and tell trials; here no request may change anything."""
    from tune_dialsum.dashboard import _StudyApp

    database = tmp_path / "optuna.db"
    database.write_bytes(b"")
    served = []

    def optuna_dashboard(storage):
        def app(environ, start_response):
            served.append(environ["REQUEST_METHOD"])
            start_response("200 OK", [])
            return [b"ok"]

        return app

    app = _StudyApp(database, optuna_dashboard, "not yet")

    def call(method, host):
        statuses = []
        body = app({"REQUEST_METHOD": method, "HTTP_HOST": host}, lambda status, headers: statuses.append(status))
        return statuses[0], b"".join(body)

    assert call("GET", "127.0.0.1:8080") == ("200 OK", b"ok")
    assert call("GET", "localhost:8080")[0] == "200 OK"
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        status, body = call(method, "127.0.0.1:8080")
        assert status.startswith("405") and b"read-only" in body
    assert call("GET", "attacker.example:8080")[0].startswith("403")  # a DNS-rebound page
    assert served == ["GET", "GET"]
