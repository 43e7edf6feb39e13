"""Shared fixtures: tiny models built once per session, the real corpora when present."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BUNDLED_DATA = REPO / "data"
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
