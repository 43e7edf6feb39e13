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
