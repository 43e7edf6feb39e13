"""What a search leaves behind and holds on to: the network, the disk, the memory of reused workers (slow)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import LISTENING_FILE, demo_root, private_network_unavailable, trial_results

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


# Measured on 2 CPU cores (RELIABILITY.md): without releasing a trial's model, optimizer and trainer,
# a reused worker grew by tens of MiB per trial of this size; with it, it stays within this bound.
RSS_BOUND_MB = 40


def test_trials_get_one_logical_gpu_each_and_a_reused_worker_gives_back_each_trials_memory(shared_gpu_search):
    """With 2 logical GPUs and 1 GPU per trial, 2 trials run at once, each on its own device; each GPU's
    worker runs trial after trial (full fine-tuning and LoRA ones mixed), and the memory each trial starts
    with stays flat after the second."""
    _, experiment = shared_gpu_search
    results = trial_results(experiment)
    assert len(results) == 10
    devices = [rows[0]["devices"] for rows in results.values()]
    assert sorted(set(devices)) == ["0", "1"]  # each trial saw exactly one of the two GPUs
    # Ray's timestamps are whole seconds: shrink each span by a second at both ends before counting.
    spans = [
        (rows[0]["timestamp"] - rows[0]["time_this_iter_s"] + 1, rows[-1]["timestamp"] - 1) for rows in results.values()
    ]
    overlap = max(sum(start <= t < end for start, end in spans) for t, _ in spans)
    assert overlap == 2
    workers: dict[int, list] = {}
    for rows in results.values():
        workers.setdefault(rows[0]["pid"], []).append((rows[0]["timestamp"], rows[0]["rss_at_start_mb"]))
    assert len(workers) == 2, "the trials of each GPU did not share one worker"
    for runs in workers.values():
        at_start = [rss for _, rss in sorted(runs)]
        print("RSS at the start of each trial of one worker (MiB):", at_start)
        assert len(at_start) >= 3 and max(at_start[2:]) - at_start[1] <= RSS_BOUND_MB, at_start
