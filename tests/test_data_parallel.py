"""Data-parallel trials (resources.workers_per_trial > 1): Ray Train workers inside one Tune trial, on CPU (gloo)."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from tests.conftest import trial_results
from tune_dialsum.errors import SpaceError
from tune_dialsum.space import load_space

# Two trials of two workers each, to the full budget (two evaluations), on the mechanics data (320 training dialogues).
DATA_PARALLEL = (
    "trials.num_samples=2",
    "resources.workers_per_trial=2",
    "resources.cpus_per_worker=1",
    "scheduler.max_budget=640",
    "scheduler.eval_interval=320",
    "search.model={choice: ['tiny:t5']}",
    "search.batch_size={choice: [8]}",
    "selection.top_k=1",
)
TRAIN_ROWS = 320


def _space(tmp_path, *overrides: str):
    from tests.conftest import TINY

    return load_space(TINY, [f"data.path={tmp_path}", *overrides])


def test_workers_per_trial_gives_each_worker_its_share(tmp_path):
    resources = _space(tmp_path, "resources.workers_per_trial=4", "resources.gpus_per_worker=1").resources
    assert dataclasses.asdict(resources) == {
        "workers_per_trial": 4,
        "cpus_per_worker": 0.25,  # the space's cpus_per_trial: 1, split over the 4 workers
        "gpus_per_worker": 1.0,  # replaces the space's gpus_per_trial: 0
        "cpus_per_trial": 1.0,
        "gpus_per_trial": 4.0,
    }


def test_a_trials_total_is_split_over_its_workers(tmp_path):
    resources = _space(tmp_path, "resources.workers_per_trial=2", "resources.gpus_per_trial=2").resources
    assert resources.gpus_per_worker == 1 and resources.cpus_per_worker == 0.5
    assert resources.gpus_per_trial == 2 and resources.cpus_per_trial == 1


def test_one_worker_is_todays_trial(tmp_path):
    resources = _space(tmp_path).resources
    assert resources.workers_per_trial == 1
    assert resources.cpus_per_worker == resources.cpus_per_trial == 1


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["resources.workers_per_trial=0"], "resources.workers_per_trial: must be at least 1 but got 0"),
        (["resources.workers_per_trial=1.5"], "resources.workers_per_trial: expected an integer"),
        (["resources.workers_per_trial=2", "resources.gpus_per_worker=1.5"], "must be a whole number per worker"),
        (["resources.workers_per_trial=2", "resources.gpus_per_trial=1"], "need a whole GPU each but got 0.5"),
        (["resources.cpus_per_worker=0"], "resources.cpus_per_worker: must be greater than 0"),
        (["resources.workers_per_trial=2", "resources.gpus_per_trial=3"], "must be a whole number per worker but"),
    ],
)
def test_bad_worker_resources_are_one_line(tmp_path, overrides, message):
    with pytest.raises(SpaceError, match=message.replace(".", r"\.").replace("(", r"\(")):
        _space(tmp_path, *overrides)


def test_a_total_and_a_share_of_the_same_resource_are_refused(tmp_path):
    from tune_dialsum.space import parse_space

    raw = {"fixed": {"model": "tiny:t5"}, "search": {"learning_rate": {"loguniform": [1e-4, 1e-3]}}}
    raw["data"], raw["scheduler"] = {"path": str(tmp_path)}, {"max_budget": 100}
    raw["resources"] = {"cpus_per_trial": 2, "cpus_per_worker": 1}
    with pytest.raises(SpaceError, match="resources.cpus_per_trial: give a trial's total or resources.cpus_per_worker"):
        parse_space(raw, source="x.yaml")


def check_data_parallel_trials(experiment_dir, node_ids=None, failing_format=None):
    """Both workers of every trial trained, on half the batches each, with the trial's one learning rate.

    A trial of ``failing_format`` failed before its first evaluation: it has no reports.
    """
    results = trial_results(experiment_dir)
    assert len(results) == 2
    for trial, reports in results.items():
        config = json.loads((experiment_dir / trial / "params.json").read_text())
        if config["dialogue_format"] == failing_format:
            assert not reports and (experiment_dir / trial / "error.txt").is_file(), trial
            continue
        assert reports, trial
        for report in reports:
            assert report["world_size"] == 2
            assert report["samples"] == report["step"] * 8 * 2  # examples over both workers
            workers = report["workers"]
            assert [w["rank"] for w in workers] == [0, 1]
            assert {w["learning_rate"] for w in workers} == {config["learning_rate"]}  # sampled once
            for worker in workers:  # each sampler yields half of one epoch's batches
                assert worker["batches_per_epoch"] == math.ceil(TRAIN_ROWS / 2 / 8), worker
            if node_ids is not None:
                assert {w["node_id"] for w in workers} == node_ids, workers
    # one trial trained to the full budget (ASHA may stop the other at its first rung, as it would any trial)
    assert max(reports[-1]["samples"] for reports in results.values() if reports) >= 640
    best = experiment_dir / "best_model"
    tuning = json.loads((best / "tuning.json").read_text())
    # the exported checkpoint is rank 0's, recorded with the world size it trained at
    checkpoint = experiment_dir / tuning["checkpoint"] if not tuning["checkpoint"].startswith("/") else None
    snapshot = json.loads(((checkpoint or _path(tuning["checkpoint"])) / "trial_config.json").read_text())
    assert snapshot["world_size"] == 2 and snapshot["per_device_train_batch_size"] == 8
    assert tuning["world_size"] == 2
    _same_weights(best, checkpoint or _path(tuning["checkpoint"]))


def _path(location: str):
    from pathlib import Path

    return Path(location)


def _same_weights(exported, checkpoint) -> None:
    from safetensors.torch import load_file

    ours, theirs = load_file(exported / "model.safetensors"), load_file(checkpoint / "model.safetensors")
    assert ours.keys() == theirs.keys()
    assert all((ours[key] == theirs[key]).all() for key in ours)


def test_a_workers_error_is_unwrapped_for_the_retry_decision():
    """Ray Train wraps what a worker raised; the trial's retry decision needs the original."""
    import torch
    from ray.exceptions import RayTaskError
    from ray.train import WorkerGroupError

    from tune_dialsum.data_parallel import worker_error
    from tune_dialsum.retry import TrialDiverged, is_retryable

    diverged = TrialDiverged("training loss became nan at step 5; lower the learning rate")
    wrapped = RayTaskError("train_fn", "traceback", diverged)
    failed = WorkerGroupError("1 worker failed", {1: RuntimeError("lost"), 0: wrapped})
    assert worker_error(failed, is_retryable) is diverged
    # rank 0 failing after rank 1 ran out of memory: the out-of-memory error decides (not retried)
    oom = torch.OutOfMemoryError("CUDA out of memory")
    broken = WorkerGroupError("2 workers failed", {0: RuntimeError("gloo: connection reset"), 1: oom})
    assert worker_error(broken, is_retryable) is oom
    lost = RuntimeError("lost")
    assert worker_error(WorkerGroupError("x", {1: lost}), is_retryable) is lost and is_retryable(lost)


def test_a_worker_no_single_node_holds_is_refused(tmp_path, monkeypatch):
    """Three 4-GPU nodes have 12 GPUs in all; a trial whose workers the nodes cannot hold is refused."""
    import ray

    from tune_dialsum.cluster import check_resources, task_slots

    node = {"Alive": True, "Resources": {"CPU": 16.0, "GPU": 4.0}}
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 48.0, "GPU": 12.0})
    monkeypatch.setattr(ray, "nodes", lambda: [node, node, node])
    space = _space(tmp_path, "resources.workers_per_trial=2", "resources.gpus_per_worker=5")
    with pytest.raises(SpaceError, match="resources.gpus_per_worker: the cluster's nodes hold 0 workers of 5 GPU"):
        check_resources(space)
    # 12 GPUs in all hold 4 x 3 GPU, but each 4-GPU node holds one such worker: 3 in all
    space = _space(tmp_path, "resources.workers_per_trial=4", "resources.gpus_per_worker=3")
    with pytest.raises(SpaceError, match="nodes hold 3 workers of 3 GPU and a trial asks for 4"):
        check_resources(space)
    space = _space(tmp_path, "resources.workers_per_trial=4", "resources.gpus_per_worker=4")
    with pytest.raises(SpaceError, match="a trial asks for 4 workers x 4 GPU but the cluster has 12"):
        check_resources(space)
    space = _space(
        tmp_path, "resources.workers_per_trial=2", "resources.gpus_per_worker=4", "resources.cpus_per_worker=1"
    )
    check_resources(space)
    assert task_slots(space.resources, wanted=10) == 1  # 12 GPUs hold one trial of 2 x 4 at a time
    assert task_slots(space.resources, wanted=10, per="worker") == 3  # and three one-process scoring tasks
