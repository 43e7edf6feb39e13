"""The same search on a real two-node Ray cluster on loopback, through --address."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import TINY, mechanics_sets, run_cli, trial_results
from tune_dialsum.locations import download, join
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
def two_node_cluster(s3_endpoint):
    """A head and a worker node on 127.0.0.1 (ray.cluster_utils) with token authentication; always shut down.

    Both reach the mock S3 through a URI's endpoint_override; without one, the head's default
    endpoint (AWS_ENDPOINT_URL) is the mock and the worker's is a dead port: a bucket one node cannot read.
    """
    env = {
        **os.environ,
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # loopback only
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": TOKEN,
        "AWS_ENDPOINT_URL": f"http://{s3_endpoint}",
    }  # as docs/cluster.md says
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


def _search_on(address: str, storage: str, env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    return run_cli(
        "search",
        "--space",
        str(TINY),
        "--address",
        address,
        "--storage-path",
        storage,
        "--set",
        "trials.num_samples=4",
        "--set",
        "scheduler.max_budget=1600",
        "--set",
        "scheduler.grace_period=1600",
        "--set",
        "search.model={choice: ['tiny:t5']}",
        "--set",
        "selection.top_k=1",
        *(arg for item in mechanics_sets() for arg in ("--set", item)),
        env=env,
        timeout=timeout,
    )


def test_search_runs_across_both_nodes_through_address(two_node_cluster, tmp_path):
    address, node_ids, env = two_node_cluster
    assert address.startswith("127.0.0.1:")
    completed = _search_on(address, str(tmp_path), env)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    results = trial_results(tmp_path / "tiny-demo")
    used_nodes = {rows[0]["node_id"] for rows in results.values() if rows}
    assert len(results) == 4 and len(used_nodes) == 2  # trials ran on both nodes
    assert used_nodes == node_ids
    best = tmp_path / "tiny-demo" / "best_model"
    assert json.loads((best / "tuning.json").read_text())["experiment"] == "tiny-demo"
    assert (best / "model.safetensors").is_file()


def test_search_with_storage_in_a_bucket_runs_across_both_nodes(two_node_cluster, s3_storage, tmp_path):
    address, node_ids, env = two_node_cluster
    completed = _search_on(address, s3_storage, env)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    experiment = join(s3_storage, "tiny-demo")
    assert f"Best model: {join(experiment, 'best_model')}" in completed.stdout

    # Every report and the best model are in the bucket, where a single-node run puts them locally.
    mirror = tmp_path / "mirror"
    download(experiment, mirror)
    results = trial_results(mirror)
    assert len(results) == 4 and {rows[0]["node_id"] for rows in results.values() if rows} == node_ids
    tuning = json.loads((mirror / "best_model" / "tuning.json").read_text())
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
    completed = _search_on(address, str(tmp_path), {**env, "RAY_AUTH_TOKEN": "f" * 32}, timeout=300)
    assert completed.returncode == 2, completed.stderr[-2000:]
    last = completed.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: --address {address}: cannot connect") and "RAY_AUTH_TOKEN" in last


def test_unreachable_address_is_one_line(tmp_path):
    completed = run_cli(
        "search", "--space", str(TINY), "--address", "127.0.0.1:1", "--storage-path", str(tmp_path), timeout=300
    )
    assert completed.returncode == 2, completed.stderr[-2000:]
    assert completed.stderr.strip().splitlines()[-1].startswith("error: --address 127.0.0.1:1: cannot connect")


def test_a_data_parallel_trial_spreads_its_two_workers_over_both_nodes(two_node_cluster, tmp_path):
    """Each node has one CPU and each worker asks for one: PACK cannot keep a trial's workers together."""
    from tests.conftest import run_process, tiny_search_command
    from tests.test_data_parallel import DATA_PARALLEL, check_data_parallel_trials

    address, node_ids, env = two_node_cluster
    command = tiny_search_command(tmp_path, "dp", *DATA_PARALLEL) + ["--address", address]
    completed = run_process(command, timeout=900, env=env)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    check_data_parallel_trials(tmp_path / "dp", node_ids=node_ids)
