"""Faults with real processes, and what the tool does with them: nothing lost, every error explained."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from tests.conftest import REPO, run_cli, run_process, short_ray_tmpdir, tiny_search_command, trial_results
from tests.helpers.mlflow_runs import assert_tracked

pytestmark = pytest.mark.slow
FAULTS = Path(__file__).resolve().parent / "faults"
# The formats the faults lifecycle's faults hit. Its search samples at random (seed 9: the same four
# every run, turns, turns, standard, compact), so that each fault fires in one trial whatever order the
# trials end in: each failure costs a worker process, and Ray's retry another.
OOM, ONCE = "standard", "compact"


def _search(storage: Path, name: str, *sets: str, env: dict | None = None, timeout: int = 600):
    return run_process(tiny_search_command(storage, name, *sets), timeout=timeout, env={**os.environ, **(env or {})})


def _kill_mid_search(command: list[str], experiment: Path, trials: int, last_step: int, env: dict) -> dict[str, list]:
    """Start a search and SIGKILL it (and its local Ray) once a trial has finished (reported ``last_step``,
    the budget) and another has yet to; returns the finished trials' reports at that moment."""
    driver = subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, env=env
    )
    deadline = time.time() + 300
    try:
        while time.time() < deadline:
            time.sleep(2)
            results = trial_results(experiment) if experiment.exists() else {}
            finished = {k: v for k, v in results.items() if v and v[-1]["step"] == last_step}
            # A trial between its start and its first report has no rows yet, and ASHA may stop one at
            # its first report, so "a trial with rows that is not done" is not always seen between two polls.
            if finished and len(finished) < trials:
                return finished
            assert driver.poll() is None, "the search ended before it could be killed mid-way"
        pytest.fail("the search never had a finished trial while others were still to finish")
    finally:
        try:
            os.killpg(driver.pid, signal.SIGKILL)
        except ProcessLookupError:  # it ended by itself: the assertion above says so
            pass
        driver.wait()
        time.sleep(2)


def _same_reports(one: list[dict], other: list[dict]) -> bool:
    """Equal reports; rows read back from progress.csv (where Ray left result.json short after a retry)
    hold NaN for empty cells, and NaN equals nothing, itself included."""
    return json.dumps(one, sort_keys=True, default=str) == json.dumps(other, sort_keys=True, default=str)


def test_a_search_with_faults_survives_a_kill_and_its_resumes_recover_and_grow_it(tmp_path):
    """One lifecycle, tracked in MLflow: one format always runs out of memory, one fails once and is
    retried; the driver is killed mid-search; --resume (faults still on) finishes it with the failed
    trials failed; --resume with the cause gone retries them and adds a trial to the same study."""
    markers = tmp_path / "markers"
    markers.mkdir()
    faults = {
        "PYTHONPATH": f"{FAULTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "TUNE_DIALSUM_TEST_FAULTS": f"oom@75:{OOM},once@75:{ONCE}",
        "TUNE_DIALSUM_TEST_FAULT_MARKERS": str(markers),
    }
    sets = ["trials.num_samples=4", "trials.sampler=random", "seed=9"]
    sets += ["scheduler.type=fifo", "scheduler.budget_unit=steps"]
    sets += ["scheduler.max_budget=100", "scheduler.grace_period=50", "scheduler.eval_interval=50"]
    sets += ["search.model={choice: ['tiny:t5']}", "selection.top_k=1"]
    sets += ["decoding.constraints={max_mean_length: 0.01}"]  # no decoding writes that short
    tracked = importlib.util.find_spec("mlflow") is not None  # the test extra has it
    command = tiny_search_command(tmp_path, "faults", *sets) + (["--track", "mlflow"] if tracked else [])
    experiment = tmp_path / "faults"
    killed_in = short_ray_tmpdir()  # the killed session's scratch is nobody's to clean: kept apart
    try:
        finished_before = _kill_mid_search(
            command, experiment, 4, 100, {**os.environ, **faults, "RAY_TMPDIR": str(killed_in)}
        )
    finally:
        shutil.rmtree(killed_in, ignore_errors=True)
    fired_before_resume = {p.name for p in markers.glob("fired-*")}
    # a trial that failed before the kill used Ray's one retry then: resumed, it fails with its own error
    failed_before_resume = {d.name for d in experiment.glob("trial_*") if (d / "error.txt").is_file()}

    # --resume names the experiment, not the space: its own space is what resuming uses
    resume = ["search", "--resume", "--name", "faults", "--storage-path", str(tmp_path)]
    ray_tmp = short_ray_tmpdir()
    completed = run_cli(*resume, env={**os.environ, **faults, "RAY_TMPDIR": str(ray_tmp)})
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    # a constraint no decoding meets: said in the summary, and the model exported as its trial was ranked
    assert "none met the constraints (mean length at most 0.01 words)" in completed.stdout
    tuning = json.loads((experiment / "best_model" / "tuning.json").read_text())
    assert tuning["decoding"]["settings"] is None and tuning["decoding"]["trials"] == 2
    generation = json.loads((experiment / "best_model" / "generation_config.json").read_text())
    assert generation["num_beams"] == 1 and "length_penalty" not in generation
    try:  # the scratch of every trial is gone, the failed ones' included
        assert list(ray_tmp.glob("ray/session_*/artifacts/*/faults/working_dirs/trial_*"))  # where trials ran
        assert not list(ray_tmp.rglob("hf-*"))
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)

    after = trial_results(experiment)
    assert len(after) == 4  # no trial re-run under a second id
    # A trial started just before the kill, of which the saved experiment has no record, is set aside.
    assert all(not (d / "params.json").exists() for d in (experiment / "orphaned").glob("trial_*"))
    for name, rows in finished_before.items():
        assert _same_reports(after[name], rows), name  # finished trials are kept as they were
    configs = {d.name: json.loads((d / "params.json").read_text()) for d in experiment.glob("trial_*")}
    formats = [c["dialogue_format"] for c in configs.values()]
    assert OOM in formats and ONCE in formats, formats
    for name, config in configs.items():
        steps = [row["step"] for row in after[name]]
        if config["dialogue_format"] == OOM:  # out of memory: failed at once, not trained into again
            error = (experiment / name / "error.txt").read_text()
            retried_before = name in failed_before_resume
            assert steps == [50] and ("simulated by the test" if retried_before else "not retried") in error
            assert f"Failed trial {name.removeprefix('trial_')}: " in completed.stdout
            # a failed trial keeps the optimizer state --resume continues it from
            assert list((experiment / name).glob("checkpoint_*/optimizer.pt"))
        else:  # turns trials never fail; compact ones fail once and resume from the step-50 checkpoint
            assert steps == [50, 100], (name, config["dialogue_format"], steps)
            assert not list((experiment / name).glob("checkpoint_*/optimizer.pt"))  # finished: weights only
    # Ray retries every failed trial once; the retry of an out-of-memory trial ends before training, so
    # during the resume the fault fired once per such trial (it fired twice per trial before). The
    # transient one fired once per trial in all, the kill notwithstanding.
    fired = [p.name.split("-")[1:3] for p in markers.glob("fired-*") if p.name not in fired_before_resume]
    assert fired.count(["oom", OOM]) == formats.count(OOM)
    fired = [p.name.split("-")[1:3] for p in markers.glob("fired-*")]
    assert fired.count(["once", ONCE]) == formats.count(ONCE)
    assert "out of memory (simulated by the test)" in completed.stdout
    study = optuna.load_study(study_name="faults", storage=f"sqlite:///{experiment / 'optuna.db'}")
    assert all(t.state.is_finished() for t in study.trials)
    ran = [t for t in study.trials if t.state != optuna.trial.TrialState.FAIL]
    assert len(ran) == 4 - formats.count(OOM)  # the history of every trial that ran is whole
    # A trial Optuna handed out after the last saved state, if any, is closed and labelled, not left RUNNING.
    not_ran = [t for t in study.trials if t not in ran]
    assert all(t.user_attrs.get("abandoned") or t.params["dialogue_format"] == OOM for t in not_ran)
    finished = {name.removeprefix("trial_") for name, c in configs.items() if c["dialogue_format"] != OOM}
    record = assert_tracked(experiment, finished, interval=50, analyze=False) if tracked else None

    # A finished search does not take another budget; with the cause gone (more memory, say), --resume
    # tries the failed trials again, each in the Optuna study with its new outcome beside its FAIL
    # record, and continues with one more trial: the sampler sees every earlier one (one study).
    refused = run_cli(*resume, "--set", "scheduler.max_budget=600")
    assert refused.returncode == 2 and "--set scheduler.max_budget=600 cannot apply" in refused.stderr
    more = run_cli(*resume, "--num-samples", "5")
    assert more.returncode == 0, more.stdout[-3000:] + more.stderr[-3000:]
    assert "Search finished: 5 trials" in more.stdout and "0 failed" in more.stdout
    grown = trial_results(experiment)
    assert len(grown) == 5 and all(rows[-1]["step"] == 100 for rows in grown.values())
    changed = [name for name in finished if not _same_reports(grown[f"trial_{name}"], after[f"trial_{name}"])]
    assert not changed, {name: (after[f"trial_{name}"], grown[f"trial_{name}"]) for name in changed}
    study = optuna.load_study(study_name="faults", storage=f"sqlite:///{experiment / 'optuna.db'}")
    assert len([t for t in study.trials if t.state != optuna.trial.TrialState.FAIL]) == 5
    recovered = [t for t in study.trials if "resumed_after_failure" in t.user_attrs]
    assert len(recovered) == formats.count(OOM)
    for trial in recovered:
        failed = study.trials[trial.user_attrs["resumed_after_failure"]]
        assert failed.state == optuna.trial.TrialState.FAIL and failed.params == trial.params
        assert trial.state == optuna.trial.TrialState.COMPLETE and max(trial.intermediate_values) == 100
    if tracked:  # the same parent run, one more child
        assert assert_tracked(experiment, {name.removeprefix("trial_") for name in grown}, interval=50) == record
    fewer = run_cli(*resume, "--num-samples", "3")
    assert fewer.returncode == 2 and "already has 5 trials" in fewer.stderr
    assert (experiment / "best_model" / "tuning.json").is_file()


def test_no_trial_finishing_is_exit_1_and_nothing_exported(tmp_path):
    """A learning rate that turns the loss NaN: every trial fails, the search says so and exports nothing."""
    completed = _search(
        tmp_path,
        "diverged",
        "trials.num_samples=1",
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
