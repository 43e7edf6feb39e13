"""The same search on a real two-node Ray cluster on loopback, through --address."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import TINY, run_cli, trial_results

pytestmark = pytest.mark.slow


TOKEN = "0123456789abcdef0123456789abcdef"
# Started in a process of its own: Ray reads its authentication mode once per process, and other
# tests in this one may already have used Ray without a token.
CLUSTER = """
import json, sys
from ray.cluster_utils import Cluster
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
try:
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    print(json.dumps({"address": cluster.address, "nodes": [n.node_id for n in cluster.list_all_nodes()]}), flush=True)
    sys.stdin.read()  # until the test closes stdin
finally:
    cluster.shutdown()
"""


@pytest.fixture
def two_node_cluster():
    """A head and a worker node on 127.0.0.1 (ray.cluster_utils) with token authentication; always shut down."""
    env = {
        **os.environ,
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # loopback only
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": TOKEN,
    }  # as docs/cluster.md says
    process = subprocess.Popen(
        [sys.executable, "-c", CLUSTER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
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


def test_search_runs_across_both_nodes_through_address(two_node_cluster, tmp_path):
    address, node_ids, env = two_node_cluster
    assert address.startswith("127.0.0.1:")
    completed = run_cli(
        "search",
        "--space",
        str(TINY),
        "--address",
        address,
        "--storage-path",
        str(tmp_path),
        "--set",
        "trials.num_samples=4",
        "--set",
        "scheduler.max_budget=200",
        "--set",
        "scheduler.grace_period=200",
        "--set",
        "search.model={choice: ['tiny:t5']}",
        env=env,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    results = trial_results(tmp_path / "tiny-demo")
    used_nodes = {rows[0]["node_id"] for rows in results.values() if rows}
    assert len(results) == 4 and len(used_nodes) == 2  # trials ran on both nodes
    assert used_nodes == node_ids
    best = tmp_path / "tiny-demo" / "best_model"
    assert json.loads((best / "tuning.json").read_text())["experiment"] == "tiny-demo"
    assert (best / "model.safetensors").is_file()


def test_a_driver_with_the_wrong_token_is_refused_in_one_line(two_node_cluster, tmp_path):
    address, _, env = two_node_cluster
    completed = run_cli(
        "search",
        "--space",
        str(TINY),
        "--address",
        address,
        "--storage-path",
        str(tmp_path),
        timeout=300,
        env={**env, "RAY_AUTH_TOKEN": "f" * 32},
    )
    assert completed.returncode == 2, completed.stderr[-2000:]
    last = completed.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: --address {address}: cannot connect") and "RAY_AUTH_TOKEN" in last


def test_unreachable_address_is_one_line(tmp_path):
    completed = run_cli(
        "search", "--space", str(TINY), "--address", "127.0.0.1:1", "--storage-path", str(tmp_path), timeout=300
    )
    assert completed.returncode == 2, completed.stderr[-2000:]
    assert completed.stderr.strip().splitlines()[-1].startswith("error: --address 127.0.0.1:1: cannot connect")
