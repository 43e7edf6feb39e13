"""The same search on a real two-node Ray cluster on loopback, through --address."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pyarrow.fs as pafs
import pytest

from tests.conftest import (
    REPO,
    TINY,
    cli_command,
    mechanics_sets,
    run_cli,
    run_process,
    training_only_sets,
    trial_results,
)
from tune_dialsum.locations import download, filesystem, join
from tune_dialsum.storage import ExperimentStore

pytestmark = pytest.mark.slow


TOKEN = "0123456789abcdef0123456789abcdef"
DEAD_ENDPOINT = "http://127.0.0.1:1"  # where the worker node looks for S3 when a URI names no endpoint
# Started in a process of its own: Ray reads its authentication mode once per process, and other
# tests in this one may already have used Ray without a token.
CLUSTER = """
import json, sys
from ray.cluster_utils import Cluster
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
try:
    cluster.add_node(num_cpus=1, env_vars={"AWS_ENDPOINT_URL": sys.argv[1]})
    cluster.wait_for_nodes()
    print(json.dumps({"address": cluster.address, "nodes": [n.node_id for n in cluster.list_all_nodes()]}), flush=True)
    sys.stdin.read()  # until the test closes stdin
finally:
    cluster.shutdown()
"""


@pytest.fixture(scope="module")
def two_node_cluster(s3_endpoint, tmp_path_factory):
    """A head and a worker node on 127.0.0.1 (ray.cluster_utils) with token authentication; always shut down.

    Both reach the mock S3 through a URI's endpoint_override; without one, the head's default
    endpoint (AWS_ENDPOINT_URL) is the mock and the worker's is a dead port: a bucket one node cannot read.
    Their workers can inject faults: a test writes them to TUNE_DIALSUM_TEST_FAULTS_FILE (tests/faults).
    """
    env = {
        **os.environ,
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # loopback only
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": TOKEN,
        "AWS_ENDPOINT_URL": f"http://{s3_endpoint}",
        "PYTHONPATH": os.pathsep.join([str(REPO / "tests" / "faults"), os.environ.get("PYTHONPATH", "")]),
        "TUNE_DIALSUM_TEST_FAULTS_FILE": str(tmp_path_factory.mktemp("faults") / "faults"),
    }  # as docs/cluster.md says, and the faults
    process = subprocess.Popen(
        [sys.executable, "-c", CLUSTER, DEAD_ENDPOINT],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        info = json.loads(process.stdout.readline())
        yield info["address"], set(info["nodes"]), env
    finally:
        process.stdin.close()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()


def _search_command(address: str, storage: str) -> list[str]:
    """Four tiny T5 trials to 800 examples through --address, on the mechanics data (no decoding stage)."""
    sets = (
        "trials.num_samples=4",
        "scheduler.max_budget=800",
        "scheduler.eval_interval=400",
        "scheduler.grace_period=800",
    )
    sets += ("search.model={choice: ['tiny:t5']}", "selection.top_k=1", *mechanics_sets(), *training_only_sets())
    command = cli_command("search", "--space", str(TINY), "--address", address, "--storage-path", storage)
    return command + [arg for item in sets for arg in ("--set", item)]


def _search_on(address: str, storage: str, env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    return run_process(_search_command(address, storage), timeout=timeout, env=env)


def _reports_written(experiment: str) -> bool:
    """Whether any trial of the experiment (a directory or a URI) has reported yet."""
    fs, path = filesystem(experiment)
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True, recursive=True))
    return any(info.base_name == "result.json" and info.size for info in infos)


def test_a_bucket_search_across_both_nodes_is_interrupted_resumed_analysed_and_exported(
    two_node_cluster, s3_storage, tmp_path
):
    """One lifecycle through --address with storage in a bucket: Ctrl-C, resume, analyse, export, resume again.

    The harder case of Ctrl-C: the study and the trials' files must reach the store before exit 130.
    (With a directory as storage the same handler runs with nothing to upload; a directory's resume
    is covered by the kill -9 lifecycle in test_reliability.py.)
    """
    address, node_ids, env = two_node_cluster
    assert address.startswith("127.0.0.1:")
    driver = subprocess.Popen(
        _search_command(address, s3_storage),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    experiment = join(s3_storage, "tiny-demo")
    deadline = time.time() + 300
    while time.time() < deadline and not _reports_written(experiment):
        assert driver.poll() is None, (
            "the search ended before its first report: " + "".join(driver.communicate())[-3000:]
        )
        time.sleep(1)
    driver.send_signal(signal.SIGINT)
    start = time.time()
    out, err = driver.communicate(timeout=120)
    assert time.time() - start < 60
    assert driver.returncode == 130, out[-2000:] + err[-2000:]
    assert "Traceback" not in err
    # The command the driver prints, as a shell would split it (a URI's query holds '&').
    resume = shlex.split(err.strip().splitlines()[-1].partition("continue with: ")[2])
    assert resume[:3] == ["python", "-m", "tune_dialsum"] and "--resume" in resume
    assert resume[resume.index("--address") + 1] == address
    completed = run_process([sys.executable, *resume[1:]], timeout=600, env=env)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert f"Best model: {join(experiment, 'best_model')}" in completed.stdout

    # Every report, the study and the best model are in the bucket, where a single-node run puts them locally.
    mirror = tmp_path / "mirror"
    download(experiment, mirror)
    results = trial_results(mirror)
    assert len(results) == 4 and all(rows and rows[-1].get("done") for rows in results.values())
    assert {rows[0]["node_id"] for rows in results.values() if rows} == node_ids  # trials ran on both nodes
    study = optuna.load_study(study_name="tiny-demo", storage=f"sqlite:///{mirror / 'optuna.db'}")
    assert len([t for t in study.trials if t.state != optuna.trial.TrialState.FAIL]) == 4
    tuning = json.loads((mirror / "best_model" / "tuning.json").read_text())
    assert tuning["experiment"] == "tiny-demo" and (mirror / "best_model" / "model.safetensors").is_file()
    assert tuning["checkpoint"].startswith(experiment.partition("?")[0]) and tuning["full_validation"]["examples"]
    assert {"space.yaml", "optuna.db"} <= {p.name for p in mirror.iterdir()}
    assert not (mirror / "tokenized").exists()  # tokenized data is cached on each node, not in the bucket

    # Analysis and export read the bucket from a machine that has no copy of it.
    analyzed = run_cli("analyze", experiment, env=env)
    assert analyzed.returncode == 0, analyzed.stderr[-2000:]
    assert f"stored at {join(experiment, 'report', 'index.html')}" in analyzed.stdout
    exported = tmp_path / "model"
    completed = run_cli("export", experiment, "--out", str(exported), env=env)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert json.loads((exported / "tuning.json").read_text())["trial_id"] == tuning["trial_id"]
    assert (exported / "model.safetensors").read_bytes() == (mirror / "best_model" / "model.safetensors").read_bytes()
    into_bucket = join(s3_storage, "exported")
    assert run_cli("export", experiment, "--out", into_bucket, env=env).returncode == 0
    refused = run_cli("export", experiment, "--out", into_bucket, env=env)
    assert refused.returncode == 2 and "already exists; pass --force" in refused.stderr
    assert (download(into_bucket, tmp_path / "exported") / "model.safetensors").is_file()

    # Resuming reads the experiment back from the bucket; with every trial finished, nothing runs again.
    completed = run_cli(
        "search", "--space", str(TINY), "--address", address, "--storage-path", s3_storage, "--resume", env=env
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert "Search finished: 4 trials" in completed.stdout and f"Best trial: {tuning['trial_id']}" in completed.stdout


def test_storage_a_node_cannot_read_fails_before_any_trial(two_node_cluster, s3_storage):
    address, _, env = two_node_cluster
    # The driver and the head find the bucket at their default endpoint; the worker node's is dead.
    bucket_on_default_endpoint = s3_storage.replace(f"endpoint_override={env['AWS_ENDPOINT_URL'][7:]}&", "")
    completed = _search_on(address, bucket_on_default_endpoint, env, timeout=300)
    assert completed.returncode == 2, completed.stdout[-2000:] + completed.stderr[-2000:]
    last = completed.stderr.strip().splitlines()[-1]
    assert last.startswith(
        f"error: storage_path {join(bucket_on_default_endpoint, 'tiny-demo')} cannot be read on node"
    )
    # the dead endpoint, as the S3 client words it (pyarrow's SDK: "127.0.0.1:1" or curl's "127.0.0.1 port 1")
    assert ("127.0.0.1:1" in last or "127.0.0.1 port 1" in last) and "--storage-path" in last
    store = ExperimentStore(join(s3_storage, "tiny-demo"))
    assert not any(p.startswith("trial_") for p in os.listdir(store.pull(()))), "no trial may start"


def test_a_driver_with_the_wrong_token_is_refused_in_one_line(two_node_cluster, tmp_path):
    address, _, env = two_node_cluster
    # Ray asks a refused driver's session name 20 times, 1 s apart: what is tested is the message, not the wait
    refused = {**env, "RAY_AUTH_TOKEN": "f" * 32, "RAY_NUM_REDIS_GET_RETRIES": "3"}
    completed = _search_on(address, str(tmp_path), refused, timeout=300)
    assert completed.returncode == 2, completed.stderr[-2000:]
    last = completed.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: --address {address}: cannot connect") and "RAY_AUTH_TOKEN" in last


def test_unreachable_address_is_one_line(tmp_path):
    completed = run_cli(
        "search", "--space", str(TINY), "--address", "127.0.0.1:1", "--storage-path", str(tmp_path), timeout=300
    )
    assert completed.returncode == 2, completed.stderr[-2000:]
    assert completed.stderr.strip().splitlines()[-1].startswith("error: --address 127.0.0.1:1: cannot connect")


def test_a_data_parallel_search_spreads_each_trial_over_both_nodes_and_fails_an_oom_once(two_node_cluster, tmp_path):
    """Each node has one CPU and each worker asks for one: PACK cannot keep a trial's workers together.

    One configuration runs out of memory on both ranks at step 5: its trial fails with the workers'
    error, and Ray's retry does not train it again; the other trial trains to the end and is exported.
    """
    from tests.conftest import tiny_search_command
    from tests.test_data_parallel import DATA_PARALLEL, check_data_parallel_trials

    address, node_ids, env = two_node_cluster
    markers = tmp_path / "markers"
    markers.mkdir()
    faults = Path(env["TUNE_DIALSUM_TEST_FAULTS_FILE"])
    faults.write_text(f"oom@5:standard\n{markers}\n")
    sets = (*training_only_sets(), *DATA_PARALLEL, "search.dialogue_format={choice: [standard, turns]}")
    try:
        completed = run_process(
            tiny_search_command(tmp_path, "dp", *sets) + ["--address", address], timeout=900, env=env
        )
    finally:
        faults.unlink()
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    experiment_dir = tmp_path / "dp"
    formats = sorted(
        json.loads((d / "params.json").read_text())["dialogue_format"] for d in experiment_dir.glob("trial_*")
    )
    assert formats == ["standard", "turns"], f"the space's seed must sample one trial of each format, not {formats}"
    check_data_parallel_trials(experiment_dir, node_ids=node_ids, failing_format="standard")
    assert len(list(markers.glob("fired-oom-standard-*"))) == 2  # once on each rank, never retried
    assert "OutOfMemoryError" in completed.stdout + completed.stderr
    assert not (experiment_dir / ".data_parallel").exists()  # the staged Train runs are gone
    assert "Best model:" in completed.stdout
    assert "(1 at a time, 2 data-parallel workers each)" in completed.stdout
