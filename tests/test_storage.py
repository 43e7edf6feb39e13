"""Experiments kept at a URI (a mock S3 on loopback) or in a directory: one ExperimentStore for both."""

from __future__ import annotations

import time

import pyarrow.fs as pafs
import pytest

from tune_dialsum.contract import OPTUNA_DB
from tune_dialsum.errors import UsageError
from tune_dialsum.export import CHECKPOINT_METADATA
from tune_dialsum.storage import ExperimentStore, join, reachable, split

QUERY = "endpoint_override=127.0.0.1:9000&scheme=http"


def test_join_and_split_keep_a_uris_query_at_the_end():
    assert join(f"s3://bucket/exps?{QUERY}", "demo", "best_model") == f"s3://bucket/exps/demo/best_model?{QUERY}"
    assert split(f"s3://bucket/exps/demo?{QUERY}") == (f"s3://bucket/exps?{QUERY}", "demo")
    assert join("gs://bucket/", "demo") == "gs://bucket/demo"


def test_split_makes_a_directory_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert split("ray_results/demo") == (str(tmp_path / "ray_results"), "demo")


def test_a_scheme_pyarrow_does_not_know_is_one_line():
    with pytest.raises(UsageError, match=r"^storage nosuch://bucket/x: .*s3://") as caught:
        ExperimentStore("nosuch://bucket/x")
    assert "\n" not in str(caught.value)


def _write(fs, path: str, data: bytes) -> None:
    fs.create_dir(path.rpartition("/")[0], recursive=True)
    with fs.open_output_stream(path) as out:
        out.write(data)


def _files(fs, path: str) -> dict[str, int]:
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True, recursive=True))
    return {i.path[len(path) + 1 :]: i.size for i in infos if i.type == pafs.FileType.File}


@pytest.fixture
def remote_experiment(s3_storage):
    """An experiment as Ray leaves it in a bucket: reports, a checkpoint with weights, the driver's files."""
    store = ExperimentStore(join(s3_storage, "demo"))
    for name, data in {
        "space.yaml": b"name: demo\n",
        "optuna.db": b"remote study",
        "trial_a/result.json": b'{"step": 100}\n',
        "trial_a/checkpoint_000000/trial_config.json": b"{}",
        "trial_a/checkpoint_000000/trainer_state.json": b"{}",
        "trial_a/checkpoint_000000/model.safetensors": b"w" * 5000,
        "trial_a/checkpoint_000000/optimizer.pt": b"o" * 3000,
    }.items():
        _write(store.fs, f"{store.path}/{name}", data)
    return store


def test_pull_mirrors_everything_but_checkpoint_weights(remote_experiment):
    store = remote_experiment
    local = store.pull(CHECKPOINT_METADATA)  # optuna.db: fetched where the mirror has none
    mirrored = sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file())
    assert mirrored == [
        "optuna.db",
        "space.yaml",
        "trial_a/checkpoint_000000/trainer_state.json",
        "trial_a/checkpoint_000000/trial_config.json",
        "trial_a/result.json",
    ]
    assert store.exists() and store.disk_bytes() == sum(_files(store.fs, store.path).values())
    assert store.where(local / "trial_a") == join(store.location, "trial_a")


def test_pull_refreshes_reports_drops_what_the_store_lost_and_keeps_what_was_written_here(remote_experiment):
    store = remote_experiment
    local = store.pull(CHECKPOINT_METADATA)
    (local / OPTUNA_DB).write_bytes(b"newer study, written on this machine")
    (local / f"{OPTUNA_DB}-journal").write_bytes(b"a transaction in progress")
    (local / ".best_model.partial-1").mkdir()  # an export under way on this machine
    (local / "report").mkdir()
    (local / "report" / "index.html").write_text("written here, not pushed yet")
    _write(store.fs, f"{store.path}/trial_a/result.json", b'{"step": 100}\n{"step": 200}\n')
    time.sleep(1.1)  # S3 keeps modification times in seconds
    _write(store.fs, f"{store.path}/space.yaml", b"name: omed\n")  # rewritten, same size
    store.fs.delete_dir(f"{store.path}/trial_a/checkpoint_000000")
    store.pull(CHECKPOINT_METADATA)
    assert (local / "trial_a/result.json").read_text().count("step") == 2
    assert (local / "space.yaml").read_text() == "name: omed\n"
    assert (local / OPTUNA_DB).read_bytes() == b"newer study, written on this machine"
    assert (local / f"{OPTUNA_DB}-journal").is_file()
    assert (local / ".best_model.partial-1").is_dir() and (local / "report" / "index.html").is_file()
    assert not (local / "trial_a/checkpoint_000000").exists()


def test_fetch_push_delete_and_move_act_on_the_store(remote_experiment):
    store = remote_experiment
    local = store.pull(CHECKPOINT_METADATA)
    checkpoint = local / "trial_a/checkpoint_000000"
    store.fetch(checkpoint)
    assert (checkpoint / "model.safetensors").stat().st_size == 5000
    store.pull(CHECKPOINT_METADATA)  # a fetched checkpoint stays whole
    assert (checkpoint / "model.safetensors").is_file()

    store.delete(checkpoint / "optimizer.pt")  # not in the mirror, still deleted in the store
    assert "trial_a/checkpoint_000000/optimizer.pt" not in _files(store.fs, store.path)

    model = local / "best_model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    store.push(model)
    (model / "config.json").unlink()
    (model / "weights.bin").write_bytes(b"x")
    store.push(model)  # replaces, leaving nothing of the old one
    assert {k for k in _files(store.fs, store.path) if k.startswith("best_model/")} == {"best_model/weights.bin"}

    store.move(local / "trial_a", local / "orphaned" / "trial_a")
    remote = _files(store.fs, store.path)
    assert "orphaned/trial_a/result.json" in remote and not any(k.startswith("trial_a/") for k in remote)
    assert (local / "orphaned/trial_a/result.json").is_file()

    store.delete(local / "orphaned")
    assert not any(k.startswith("orphaned/") for k in _files(store.fs, store.path))


def test_a_directory_store_is_its_own_mirror(tmp_path):
    store = ExperimentStore(str(tmp_path / "demo"))
    assert not store.remote and store.local == tmp_path / "demo" and not store.exists()
    store.check_writable()
    assert not store.local.exists()  # a check creates nothing
    store.local.mkdir()
    (store.local / "trial_a").mkdir()
    (store.local / "trial_a/result.json").write_text("{}")
    assert store.pull(CHECKPOINT_METADATA) == store.local and store.exists()
    assert store.where(store.local / "trial_a") == str(store.local / "trial_a")
    store.move(store.local / "trial_a", store.local / "orphaned/trial_a")
    store.delete(store.local / "orphaned/trial_a/result.json")
    assert store.disk_bytes() == 0


def test_reachable_names_what_is_wrong(remote_experiment):
    store = remote_experiment
    assert reachable(join(store.location, "space.yaml")) is None
    assert reachable(join(store.location, "nothing-here")) == "not found"
    dead = f"s3://{store.path}/space.yaml?endpoint_override=127.0.0.1:1&scheme=http&region=us-east-1"
    problem = reachable(dead)  # the S3 client's words: "127.0.0.1:1", or curl's "127.0.0.1 port 1"
    assert "127.0.0.1:1" in problem or "127.0.0.1 port 1" in problem


def test_an_unwritable_store_fails_in_one_line(s3_endpoint):
    store = ExperimentStore(f"s3://no-such-bucket/exps/demo?endpoint_override={s3_endpoint}&scheme=http")
    with pytest.raises(UsageError, match=r"^storage s3://no-such-bucket/exps/demo.*: cannot write") as caught:
        store.check_writable()
    assert "\n" not in str(caught.value)


def test_a_storage_path_under_a_file_fails_in_one_line_creating_nothing(tmp_path):
    (tmp_path / "results").write_text("not a directory")
    with pytest.raises(UsageError, match=r"results is not a writable directory\); pass another --storage-path"):
        ExperimentStore(str(tmp_path / "results" / "demo")).check_writable()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results"]
