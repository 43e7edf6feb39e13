"""Faults with real processes, and what the tool does with them: nothing lost, every error explained."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pyarrow.fs as pafs
import pytest

from tests.conftest import REPO, run_cli, run_process, short_ray_tmpdir, tiny_search_command, trial_results
from tune_dialsum.locations import download, filesystem, join
from tune_dialsum.storage import ExperimentStore

pytestmark = pytest.mark.slow
FAULTS = Path(__file__).resolve().parent / "faults"


def _search(storage: Path, name: str, *sets: str, env: dict | None = None, timeout: int = 600):
    return run_process(tiny_search_command(storage, name, *sets), timeout=timeout, env={**os.environ, **(env or {})})


def test_failing_trials_end_as_failed_while_the_others_go_on(tmp_path):
    """One format always runs out of memory, one fails once and is retried; resuming retries the failed ones."""
    markers = tmp_path / "markers"
    markers.mkdir()
    ray_tmp = short_ray_tmpdir()
    env = {
        "PYTHONPATH": f"{FAULTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "TUNE_DIALSUM_TEST_FAULTS": "oom@150:turns,once@150:compact",
        "TUNE_DIALSUM_TEST_FAULT_MARKERS": str(markers),
        "RAY_TMPDIR": str(ray_tmp),
    }
    completed = _search(
        tmp_path,
        "faults",
        "trials.num_samples=6",
        "scheduler.type=fifo",
        "scheduler.budget_unit=steps",
        "scheduler.max_budget=200",
        "scheduler.grace_period=100",
        "scheduler.eval_interval=100",
        "search.model={choice: ['tiny:t5']}",
        "selection.top_k=1",
        "decoding.constraints={max_mean_length: 0.01}",  # no decoding writes that short
        env=env,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    # a constraint no decoding meets: said in the summary, and the model exported as its trial was ranked
    assert "none met the constraints (mean length at most 0.01 words)" in completed.stdout
    tuning = json.loads((tmp_path / "faults" / "best_model" / "tuning.json").read_text())
    assert tuning["decoding"]["settings"] is None and tuning["decoding"]["trials"] == 2
    generation = json.loads((tmp_path / "faults" / "best_model" / "generation_config.json").read_text())
    assert generation["num_beams"] == 1 and "length_penalty" not in generation
    try:  # the scratch of every trial is gone, the failed ones' included
        assert list(ray_tmp.glob("ray/session_*/artifacts/*/faults/working_dirs/trial_*"))  # where trials ran
        assert not list(ray_tmp.rglob("hf-*"))
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    experiment = tmp_path / "faults"
    configs = {d.name: json.loads((d / "params.json").read_text()) for d in experiment.glob("trial_*")}
    results = trial_results(experiment)
    formats = [c["dialogue_format"] for c in configs.values()]
    assert "turns" in formats and "compact" in formats, formats
    for name, config in configs.items():
        steps = [row["step"] for row in results[name]]
        if config["dialogue_format"] == "turns":  # out of memory: failed at once, not trained into again
            error = (experiment / name / "error.txt").read_text()
            assert steps == [100] and "not retried" in error
            assert f"Failed trial {name.removeprefix('trial_')}: " in completed.stdout
            # a failed trial keeps the optimizer state --resume continues it from
            assert list((experiment / name).glob("checkpoint_*/optimizer.pt"))
        else:  # standard trials never fail; compact ones fail once and resume from the step-100 checkpoint
            assert steps == [100, 200], (name, config["dialogue_format"], steps)
            assert not list((experiment / name).glob("checkpoint_*/optimizer.pt"))  # finished: weights only
    # Ray retries every failed trial once; the retry of an out-of-memory trial ends before training,
    # so the fault fired once per such trial (it fired twice per trial before), the transient one once too.
    fired = [p.name.split("-")[1:3] for p in markers.glob("fired-*")]
    assert fired.count(["oom", "turns"]) == formats.count("turns")
    assert fired.count(["once", "compact"]) == formats.count("compact")
    assert "out of memory (simulated by the test)" in completed.stdout
    assert (experiment / "best_model" / "tuning.json").is_file()

    # With the cause gone (more memory, say), --resume tries the failed trials again; each ends up in
    # the Optuna study with its new outcome beside its FAIL record.
    resumed = run_cli("search", "--resume", "--name", "faults", "--storage-path", str(tmp_path))
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "0 failed" in resumed.stdout
    after = trial_results(experiment)
    assert all(rows[-1]["step"] == 200 for rows in after.values())
    study = optuna.load_study(study_name="faults", storage=f"sqlite:///{experiment / 'optuna.db'}")
    recovered = [t for t in study.trials if "resumed_after_failure" in t.user_attrs]
    assert len(recovered) == formats.count("turns")
    for trial in recovered:
        failed = study.trials[trial.user_attrs["resumed_after_failure"]]
        assert failed.state == optuna.trial.TrialState.FAIL and failed.params == trial.params
        assert trial.state == optuna.trial.TrialState.COMPLETE and max(trial.intermediate_values) == 200


def test_no_trial_finishing_is_exit_1_and_nothing_exported(tmp_path):
    """A learning rate that turns the loss NaN: every trial fails, the search says so and exports nothing."""
    completed = _search(
        tmp_path,
        "diverged",
        "trials.num_samples=2",
        "scheduler.budget_unit=steps",
        "scheduler.max_budget=200",
        "scheduler.grace_period=100",
        "scheduler.eval_interval=100",
        "search.learning_rate={choice: [1.0e+6]}",
        "per_family={}",
        "search.model={choice: ['tiny:t5']}",
    )
    assert completed.returncode == 1, completed.stdout[-2000:] + completed.stderr[-2000:]
    last = completed.stderr.strip().splitlines()[-1]
    assert last.startswith("error: no trial of 'diverged' finished an evaluation, so nothing was exported")
    assert "became nan" in last.lower() or "is nan" in last.lower()
    assert not (tmp_path / "diverged" / "best_model").exists()
    assert "Traceback" not in completed.stderr.splitlines()[-1]


def _reports_written(experiment: str) -> bool:
    """Whether any trial of the experiment (a directory or a URI) has reported yet."""
    fs, path = filesystem(experiment)
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True, recursive=True))
    return any(info.base_name == "result.json" and info.size for info in infos)


def test_ctrl_c_stops_within_seconds_and_resume_finishes(tmp_path, s3_storage):
    """In a bucket, the harder case: the study and the trials' files must reach the store before exit 130.

    (Ctrl-C with a directory as storage runs the same handler with nothing to upload; it is not run
    separately, to keep the suite's time: a directory's resume is covered by the kill -9 test in test_search.py.)
    """
    command = tiny_search_command(
        s3_storage,
        "interrupted",
        "trials.num_samples=4",
        "scheduler.budget_unit=steps",
        "scheduler.max_budget=200",
        "scheduler.eval_interval=100",
        "selection.top_k=1",
    )
    driver = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    store = ExperimentStore(join(s3_storage, "interrupted"))
    deadline = time.time() + 300
    while time.time() < deadline and not _reports_written(store.location):
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
    resumed = subprocess.run([sys.executable, *resume[1:]], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    results = trial_results(download(store.location, tmp_path / "copy"))
    assert len(results) == 4 and all(rows and rows[-1].get("done") for rows in results.values())
    study_file = tmp_path / "copy" / "optuna.db"  # uploaded to the bucket when the trials ended
    study = optuna.load_study(study_name="interrupted", storage=f"sqlite:///{study_file}")
    assert len([t for t in study.trials if t.state != optuna.trial.TrialState.FAIL]) == 4


def test_stopped_trials_keep_one_checkpoint_without_optimizer_state(tiny_search):
    """A stopped trial keeps its best checkpoint, and any the selection re-scored; no optimizer state."""
    _, experiment = tiny_search
    candidates = json.loads((experiment / "selection.json").read_text())["candidates"]
    for name, rows in trial_results(experiment).items():
        checkpoints = list((experiment / name).glob("checkpoint_*"))
        if rows[-1]["samples"] < 6400:
            rescored = sum(c["trial_id"] == name.removeprefix("trial_") for c in candidates)
            assert 1 <= len(checkpoints) <= 1 + rescored, (name, len(checkpoints), rescored)
            assert not any((c / "optimizer.pt").exists() for c in checkpoints)
    assert "MiB stored" in tiny_search[0].stdout


LISTENERS = """
import json, os, psutil
os.environ.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)  # what a user's shell has: nothing set
from tune_dialsum.cluster import start_ray
start_ray(None)
import ray
me = psutil.Process()
ours = {p.pid for p in me.children(recursive=True)} | {me.pid}
listening = {c.laddr.ip for c in psutil.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN and c.pid in ours}
print(json.dumps({"nodes": [n["NodeManagerAddress"] for n in ray.nodes()], "listening": sorted(listening)}))
ray.shutdown()
"""


def test_local_ray_listens_on_loopback_only():
    env = {k: v for k, v in os.environ.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    completed = subprocess.run(
        [sys.executable, "-c", LISTENERS], cwd=REPO, capture_output=True, text=True, timeout=300, env=env
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    found = json.loads(completed.stdout.strip().splitlines()[-1])
    assert found["nodes"] == ["127.0.0.1"]
    assert found["listening"] and set(found["listening"]) <= {"127.0.0.1", "::ffff:127.0.0.1", "::1"}
