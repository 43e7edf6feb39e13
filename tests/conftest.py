"""Shared fixtures: tiny models built once per session, the real corpora when present."""

from __future__ import annotations

import os
import subprocess
import sys
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


def tiny_search_command(storage: Path, name: str, *sets: str) -> list[str]:
    """The demo search under another name, with ``--set`` overrides."""
    command = cli_command("search", "--space", str(TINY), "--storage-path", str(storage), "--name", name)
    for item in sets:
        command += ["--set", item]
    return command


def run_cli(*args: str, timeout: int = 600, **kwargs) -> subprocess.CompletedProcess:
    """``python -m tune_dialsum ARGS`` in a real process, from the repository root."""
    return subprocess.run(cli_command(*args), cwd=REPO, capture_output=True, text=True, timeout=timeout, **kwargs)


def trial_results(experiment_dir: Path) -> dict[str, list[dict]]:
    """Every trial's reports, read from Ray's result.json files."""
    from tune_dialsum.analysis import read_reports

    return {trial_dir.name: read_reports(trial_dir) for trial_dir in sorted(experiment_dir.glob("trial_*"))}


@pytest.fixture(scope="session")
def tiny_search(tmp_path_factory):
    """The offline demo search, run once for every test that needs a finished experiment."""
    storage = tmp_path_factory.mktemp("ray_results")
    completed = run_cli("search", "--space", str(TINY), "--storage-path", str(storage))
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return completed, storage / "tiny-demo"
