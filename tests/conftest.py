"""Shared fixtures: tiny models built once per session, the real corpora when present."""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BUNDLED_DATA = REPO / "data"
TINY = REPO / "search_spaces" / "tiny.yaml"
SHARED_DATA = Path(os.environ.get("TUNE_DIALSUM_SHARED_DATA", REPO.parent / "shared" / "data"))

# Keep any Ray the tests start on loopback, and the hub out of reach.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Every Ray this test session starts keeps its session files, and its ray_current_cluster, in a
# directory of its own: Ray's ray.init() joins the cluster that file names, so without this a
# test's local Ray could join a ray.cluster_utils cluster of another test run on the same machine.
# (A test module that imports this file as tests.conftest runs this again: it finds the directory made.)
SESSION_RAY_TMPDIR = os.environ.get("TDS_SESSION_RAY_TMPDIR") or tempfile.mkdtemp(prefix="tds-ray-", dir="/tmp")
os.environ["RAY_TMPDIR"] = os.environ["TDS_SESSION_RAY_TMPDIR"] = SESSION_RAY_TMPDIR


def corpus_dir(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"{path} is absent: the {name} corpus is read from ../shared/data, never copied into the repo")
    return path


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """tiny:FAMILY models go to a per-session cache, not the user's home."""
    cache = tmp_path_factory.mktemp("cache")
    previous = os.environ.get("TUNE_DIALSUM_CACHE")
    os.environ["TUNE_DIALSUM_CACHE"] = str(cache)
    yield cache
    if previous is None:
        os.environ.pop("TUNE_DIALSUM_CACHE", None)
    else:
        os.environ["TUNE_DIALSUM_CACHE"] = previous


# Credentials for the mock S3 below; no request may leave loopback, so the SDK's EC2 metadata lookup is off.
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


@pytest.fixture(scope="session")
def s3_endpoint():
    """An S3 server (moto) on 127.0.0.1 for the whole session; its credentials are in os.environ meanwhile."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # not a line per request
    previous = {name: os.environ.get(name) for name in S3_ENV}
    os.environ.update(S3_ENV)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"{host}:{port}"
    finally:
        server.stop()
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture
def s3_storage(s3_endpoint, request) -> str:
    """A fresh bucket; the storage URI of a prefix in it, addressed as pyarrow (and so Ray) understands it."""
    import re

    import pyarrow.fs as pafs

    bucket = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:50].strip("-")
    query = f"endpoint_override={s3_endpoint}&scheme=http&region=us-east-1"
    fs, _ = pafs.FileSystem.from_uri(f"s3://{bucket}?{query}&allow_bucket_creation=true")
    fs.create_dir(bucket)
    return f"s3://{bucket}/experiments?{query}"


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    from tune_dialsum.models import FAMILIES, build_tiny_model

    root = tmp_path_factory.mktemp("tiny_models")
    return {family: build_tiny_model(family, root / family, data_dir=str(BUNDLED_DATA)) for family in FAMILIES}


@pytest.fixture(scope="session")
def bundled_splits():
    from tune_dialsum import DialogueDataLoader

    return DialogueDataLoader(BUNDLED_DATA).load_splits()


def cli_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "tune_dialsum", *args]


_mechanics_data: dict[bool, Path] = {}


def mechanics_data(test_split: bool = True) -> Path:
    """A small dataset of the project's synthetic dialogues, for tests of the search's mechanics.

    Resuming, faults, clusters and memory do not need the demo's 2,400 dialogues; with 24 validation
    and 24 test rows, each search's re-scoring and test scoring take seconds, not a minute. Without
    ``test_split`` there is no test split, so a search scores nothing on it.
    """
    if test_split not in _mechanics_data:
        import atexit

        from tune_dialsum.data.synthetic import write_dataset

        path = Path(tempfile.mkdtemp(prefix="tune_dialsum_mechanics_"))
        sizes = (("train", 320), ("validation", 24), ("test", 24))
        write_dataset(path, sizes=sizes if test_split else sizes[:2])
        atexit.register(shutil.rmtree, path, True)
        _mechanics_data[test_split] = path
    return _mechanics_data[test_split]


def mechanics_sets() -> list[str]:
    """``--set`` items that point the demo space at :func:`mechanics_data`, with a decoding stage of 2 trials,
    and length-grouped batches: these tests look at what a search does, not at how well its model writes,
    and such batches train in 0.79x the time of random ones (BENCHMARKS.md, "Batch order")."""
    return [
        f"data.path={mechanics_data()}",
        "fixed.batch_order=length_grouped",
        "data.max_eval_samples=16",
        "decoding.num_samples=2",
        "decoding.max_eval_samples=16",
    ]


def training_only_sets() -> list[str]:
    """``--set`` items, after :func:`mechanics_sets`, for a test of training alone (scheduling, memory):
    no decoding stage and no test split, so the search ends at re-scoring and export."""
    return [f"data.path={mechanics_data(test_split=False)}", "decoding=null"]


def tiny_search_command(storage: Path, name: str, *sets: str) -> list[str]:
    """The demo search under another name, on the mechanics data, with ``--set`` overrides."""
    command = cli_command("search", "--space", str(TINY), "--storage-path", str(storage), "--name", name)
    for item in (*mechanics_sets(), *sets):
        command += ["--set", item]
    return command


def run_cli(*args: str, timeout: int = 600, **kwargs) -> subprocess.CompletedProcess:
    """``python -m tune_dialsum ARGS`` in a real process, from the repository root."""
    return run_process(cli_command(*args), timeout=timeout, **kwargs)


def run_process(
    command: list[str], timeout: int, env: dict | None = None, input: str | None = None
) -> subprocess.CompletedProcess:
    """Run a Python command from the repository root; one that overruns its timeout fails the test with
    where it was stuck: its threads' stacks (faulthandler, on SIGABRT) and the end of what it printed."""
    env = {**(os.environ if env is None else env), "PYTHONFAULTHANDLER": "1"}
    pipes = {
        "stdin": subprocess.PIPE if input is not None else None,
        "stdout": subprocess.PIPE,
        "stderr": subprocess.PIPE,
    }
    process = subprocess.Popen(command, cwd=REPO, text=True, env=env, **pipes)
    try:
        out, err = process.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGABRT)
        try:
            out, err = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            out, err = process.communicate()
        pytest.fail(f"{shlex.join(command[1:])} ran past {timeout}s; its output ended:\n{out[-2000:]}\n{err[-6000:]}")
    return subprocess.CompletedProcess(command, process.returncode, out, err)


def trial_results(experiment_dir: Path) -> dict[str, list[dict]]:
    """Every trial's reports, read from Ray's result.json files."""
    from tune_dialsum.analysis import read_reports

    return {trial_dir.name: read_reports(trial_dir) for trial_dir in sorted(experiment_dir.glob("trial_*"))}


# A private network namespace (unshare -n) holding loopback and a veth with a TEST-NET address and a
# default route: a program in it sees a machine on a network, and whatever it binds stays inside.
PRIVATE_NETWORK = (
    "ip link set lo up && ip link add v0 type veth peer name v1 && ip addr add 192.0.2.77/24 dev v0 && "
    "ip link set v0 up && ip link set v1 up && ip route add default via 192.0.2.1"
)


def private_network_unavailable() -> str | None:
    """Why commands cannot run in a private network namespace here; None when they can."""
    try:
        probe = subprocess.run(
            ["unshare", "-n", "sh", "-c", PRIVATE_NETWORK], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"unshare is not usable here ({err})"
    return None if probe.returncode == 0 else f"unshare -n with a veth pair failed: {probe.stderr.strip()[-200:]}"


def in_private_network(command: list[str]) -> list[str]:
    return ["unshare", "-n", "sh", "-c", f'{PRIVATE_NETWORK} && exec "$@"', "sh", *command]


@dataclass
class DemoRun:
    """The offline demo search, running in a process of its own (see :func:`start_demo`)."""

    process: subprocess.Popen
    command: list[str]
    root: Path  # the demo's storage, Ray session directory (a link), listening record and output
    ray_tmp: Path
    isolated: bool
    threads_before: int | None = None  # torch's threads in this process while the demo runs beside it
    completed: subprocess.CompletedProcess | None = None

    def finish(self, timeout: int = 900) -> subprocess.CompletedProcess:
        """Wait for it to end (once), and give this process its threads back."""
        if self.completed is None:
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.stop()
            finally:
                self._restore_threads()
            out, err = (self.root / "stdout.txt").read_text(), (self.root / "stderr.txt").read_text()
            self.completed = subprocess.CompletedProcess(self.command, self.process.returncode, out, err)
        return self.completed

    def _restore_threads(self) -> None:
        if self.threads_before:
            import torch

            torch.set_num_threads(self.threads_before)
            self.threads_before = None

    def stop(self) -> None:
        """End it and whatever it started (its process group: it runs in a session of its own)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
        shutil.rmtree(self.ray_tmp, ignore_errors=True)


_demo: list[DemoRun] = []  # the session's demo search, once started


def start_demo() -> DemoRun:
    """Start the offline demo search as a user runs it: ``python -m tune_dialsum search`` with nothing set
    in the environment for Ray (no RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER), under a watcher that records every
    address its process tree listens on, with Ray's session directory moved into the demo's directory
    (RAY_TMPDIR) so that everything the search leaves on disk can be looked at. Where a private network
    namespace can be made, it runs in one (see PRIVATE_NETWORK); LISTENING_FILE then holds what it bound."""
    root = Path(tempfile.mkdtemp(prefix="tds-demo-", dir="/tmp"))
    storage, listening = root / "ray_results", root / LISTENING_FILE
    ray_tmp = short_ray_tmpdir()
    (root / "ray_tmp").symlink_to(ray_tmp)
    command = [sys.executable, str(REPO / "tests" / "helpers" / "watch_listeners.py"), str(listening), "--"]
    command += cli_command("search", "--space", str(TINY), "--storage-path", str(storage))
    isolated = private_network_unavailable() is None
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp), "TUNE_DIALSUM_CACHE": str(root / "cache")}
    if isolated:  # the user's path; outside a private namespace the variable stays, to keep off the network
        env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
    command = in_private_network(command) if isolated else command
    with open(root / "stdout.txt", "w") as out, open(root / "stderr.txt", "w") as err:
        process = subprocess.Popen(
            command, cwd=REPO, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env, start_new_session=True
        )
    return DemoRun(process, command, root, ray_tmp, isolated)


@pytest.fixture(scope="session")
def tiny_search():
    """The offline demo search (:func:`start_demo`), run once for every test that needs a finished experiment.

    It starts as soon as the session knows a test reads it (pytest_collection_finish), and runs while the
    tests that start no search do (they come first: pytest_collection_modifyitems). Returns (completed
    process, experiment directory).
    """
    if not _demo:  # the tests were not known when collection ended (a plugin reordered or added them)
        _demo.append(start_demo())
    demo = _demo[0]
    completed = demo.finish()
    if completed.returncode < 0:  # killed: it ran past the timeout
        pytest.fail(f"the demo search did not end by itself (return code {completed.returncode}): {demo.root}")
    if not demo.isolated:
        (demo.root / LISTENING_FILE).unlink(missing_ok=True)  # bound in this machine's namespace: not a test
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return completed, demo.root / "ray_results" / "tiny-demo"


# Ten short trials, one logical GPU each of two, full fine-tuning and LoRA ones mixed: no decoding stage, no test split.
SHARED_GPU_SETS = [
    "trials.num_samples=10",
    "resources.gpus_per_trial=1",
    "scheduler.type=fifo",
    "scheduler.budget_unit=steps",
    "scheduler.max_budget=60",
    "scheduler.eval_interval=60",
    "scheduler.grace_period=60",
    "search={learning_rate: {loguniform: [1.0e-3, 3.0e-3]}, adapter: {choice: [none, lora]}, lora_r: {choice: [2, 4]}}",
    "per_family={}",
    "fixed.model=tiny:bart",
    "fixed.batch_size=8",
    "fixed.max_target_length=32",
    "selection.top_k=1",
]


@pytest.fixture(scope="session")
def shared_gpu_search(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    """One search on 2 logical GPUs (Ray told it has them; trials train on the CPU), for the tests of GPU
    scheduling, of reused workers' memory and of LoRA trials. Returns (its process, with the summary on
    stdout; the experiment directory)."""
    storage = tmp_path_factory.mktemp("shared_gpu")
    sets = [*mechanics_sets(), *training_only_sets(), *SHARED_GPU_SETS, "name=shared", f"storage_path={storage}"]
    code = f"""
import os, ray
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
ray.init(address="local", num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False)
from tune_dialsum.space import load_space
from tune_dialsum.outcome import format_summary
from tune_dialsum.search import run_search
print(format_summary(run_search(load_space({str(TINY)!r}, {sets!r}))))
"""
    completed = run_process([sys.executable, "-c", code], timeout=600)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return completed, storage / "shared"


def short_ray_tmpdir() -> Path:
    """A new directory for RAY_TMPDIR with a short path: Ray's socket paths under it must fit in
    the 107 bytes of a Unix socket address, which a pytest temporary directory can overrun."""
    return Path(tempfile.mkdtemp(prefix="tds-ray-", dir="/tmp"))


LISTENING_FILE = "listening.json"  # beside the demo's ray_results: what its processes listened on


def demo_root(experiment_dir: Path) -> Path:
    """The directory holding the demo's storage, Ray session directory and listening record."""
    return experiment_dir.parent.parent


def _reads_demo(item) -> bool:
    return "tiny_search" in getattr(item, "fixturenames", ())


def pytest_collection_modifyitems(config, items):
    """A test that reads the shared demo search runs a real search: it is ``slow`` (not in ``make check``).

    The tests that start no search run first, while the demo search runs beside them; then those that
    read it; then the other searches, alone on the machine (some of them time what they wait for).
    """
    for item in items:
        if _reads_demo(item):
            item.add_marker(pytest.mark.slow)
    items.sort(key=lambda item: 1 if _reads_demo(item) else 2 if item.get_closest_marker("slow") else 0)


def pytest_collection_finish(session):
    """Start the demo search once the tests are known, if one of them reads it."""
    config = session.config
    if config.option.collectonly or (session.testsfailed and not config.option.continue_on_collection_errors):
        return  # nothing will run
    if any(_reads_demo(item) for item in session.items) and not _demo:
        _demo.append(start_demo())
        # Its two trials take both cores: the tests beside it train on one thread, not two that would
        # spin-wait for a core (torch's default here; given back once the demo has ended)
        import torch

        _demo[0].threads_before = torch.get_num_threads()
        torch.set_num_threads(1)


def pytest_runtest_setup(item):
    """The other searches run alone: a demo still running (its readers skipped, or reordered) ends first."""
    if _demo and item.get_closest_marker("slow") and not _reads_demo(item):
        _demo[0].finish()


def pytest_sessionfinish(session, exitstatus):
    """The demo's files go with a passing session; after a failure they stay, for a look (the path is said)."""
    for demo in _demo:
        if exitstatus == 0:
            demo.remove()
        else:
            demo.stop()
            print(f"\nthe demo search's files are kept in {demo.root} (Ray's session directory: {demo.ray_tmp})")


def pytest_unconfigure(config):
    """The session's Ray directory goes with the session (Ray has shut down by now)."""
    shutil.rmtree(SESSION_RAY_TMPDIR, ignore_errors=True)
