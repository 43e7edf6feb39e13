"""What a search leaves behind and holds on to: the network, the disk, the memory of reused workers (slow)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import LISTENING_FILE, demo_root, private_network_unavailable, run_cli, trial_results

pytestmark = pytest.mark.slow
LOOPBACK = ("127.0.0.1", "::ffff:127.0.0.1", "::1")


def test_the_demo_run_as_a_user_runs_it_listens_on_loopback_only(tiny_search):
    """No RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER in the environment, in a namespace that has a network address."""
    reason = private_network_unavailable()
    if reason:
        pytest.skip(f"cannot give the demo a network address to bind without touching this machine's: {reason}")
    _, experiment_dir = tiny_search
    listening = json.loads((demo_root(experiment_dir) / LISTENING_FILE).read_text())["listening"]
    processes = {entry.split(" ", 1)[1] for entry in listening}
    assert {"(gcs_server)", "(raylet)"} <= processes  # the watcher saw Ray's own services, and trial workers
    assert any("ImplicitFunc" in p for p in processes)
    beyond = [entry for entry in listening if entry.split(" ", 1)[0].rsplit(":", 1)[0] not in LOOPBACK]
    assert not beyond, beyond


def test_no_trial_scratch_or_optimizer_state_outlives_the_search(tiny_search):
    completed, experiment_dir = tiny_search
    session = demo_root(experiment_dir) / "ray_tmp"
    assert list(session.glob("ray/session_*/artifacts/*/tiny-demo/working_dirs/trial_*"))  # where trials ran
    assert not list(session.rglob("hf-*")), "a trial's transformers scratch directory was left behind"
    assert not list(session.rglob("optimizer.pt"))
    # every trial of the demo finished or was stopped: none will train again, none keeps optimizer state
    assert not list(experiment_dir.rglob("optimizer.pt"))
    assert len(trial_results(experiment_dir)) == 8
    assert "MiB left in Ray's session directory)" in completed.stdout


MEMORY_SETS = (
    "trials.num_samples=7",
    "trials.max_concurrent=1",
    "scheduler.type=fifo",
    "scheduler.budget_unit=steps",
    "scheduler.max_budget=40",
    "scheduler.eval_interval=40",
    "scheduler.grace_period=40",
    "search={learning_rate: {loguniform: [1.0e-3, 3.0e-3]}}",
    "per_family={}",
    "fixed.model=tiny:bart",
    "fixed.batch_size=8",
    "fixed.max_target_length=32",
    "data.max_eval_samples=16",
)
# Measured on 2 CPU cores (RELIABILITY.md): without releasing a trial's model, optimizer and trainer,
# a reused worker grew by tens of MiB per trial of this size; with it, it stays within this bound.
RSS_BOUND_MB = 40


def test_a_reused_worker_gives_back_each_trials_memory(tmp_path):
    """Seven identical trials in one worker: the memory each starts with stays flat after the second."""
    from tests.conftest import tiny_search_command, training_only_sets

    command = tiny_search_command(tmp_path, "memory", *training_only_sets(), *MEMORY_SETS)
    completed = run_cli(*command[3:], timeout=900)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    results = trial_results(tmp_path / "memory")
    runs = sorted((rows[0]["timestamp"], rows[0]["pid"], rows[0]["rss_at_start_mb"]) for rows in results.values())
    assert len({pid for _, pid, _ in runs}) == 1, "the trials did not share one worker"
    at_start = [rss for _, _, rss in runs]
    print("RSS at the start of each trial (MiB):", at_start)
    assert max(at_start[2:]) - at_start[1] <= RSS_BOUND_MB, at_start
