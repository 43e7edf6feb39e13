"""Experiments kept at a URI (a mock S3 on loopback) or in a directory: one ExperimentStore for both."""

from __future__ import annotations

import time

import pyarrow.fs as pafs
import pytest
import yaml

from tests.conftest import REPO
from tune_dialsum.checkpoints import CHECKPOINT_METADATA
from tune_dialsum.contract import OPTUNA_DB
from tune_dialsum.errors import UsageError
from tune_dialsum.locations import join, reachable, split
from tune_dialsum.storage import ExperimentStore

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


def test_a_key_that_leaves_the_experiment_is_refused_by_pull(remote_experiment, monkeypatch):
    """Issue 24.10: a bucket key with ``..`` would be joined onto the mirror's path and written outside it.

    moto normalises such keys away, as S3-compatible servers need not: the listing is given one.
    """
    store = remote_experiment
    listing = store._listing()
    evil = pafs.FileInfo(f"{store.path}/trial_a/../../escaped.txt", pafs.FileType.File, size=7)
    monkeypatch.setattr(store, "_listing", lambda: [*listing, evil])
    with pytest.raises(UsageError, match=r"the key 'trial_a/../../escaped.txt' would leave the experiment's"):
        store.pull(CHECKPOINT_METADATA)
    assert not (store.local.parent / "escaped.txt").exists()


def test_replacing_a_directory_in_a_bucket_keeps_a_whole_copy_at_every_moment(s3_storage, tmp_path, monkeypatch):
    """Issue 24.5: the old model is not deleted before the new one is whole beside it."""
    import tune_dialsum.locations as locations

    target = join(s3_storage, "model")
    for version in ("old", "new"):
        (tmp_path / version).mkdir()
        (tmp_path / version / "weights.bin").write_text(version * 100)
    locations.upload(tmp_path / "old", target)
    fs, path = locations.filesystem(target)
    original = pafs.copy_files

    def crash_on_the_last_copy(source, destination, **kwargs):
        if destination == path and ".new-" in source:
            raise OSError("simulated crash")
        return original(source, destination, **kwargs)

    monkeypatch.setattr(pafs, "copy_files", crash_on_the_last_copy)
    with pytest.raises(UsageError, match="simulated crash"):
        locations.upload(tmp_path / "new", target)
    monkeypatch.undo()
    parent = path.rpartition("/")[0]
    copies = {k.split("/")[0]: size for k, size in _files(fs, parent).items() if k.endswith("weights.bin")}
    assert any(name.startswith("model.old-") and size == 300 for name, size in copies.items()), copies
    assert any(name.startswith("model.new-") and size == 300 for name, size in copies.items()), copies
    mirror = ExperimentStore(s3_storage).pull(())  # what a crash left is not mirrored (whole models)
    assert sorted(p.name for p in mirror.iterdir()) == []
    locations.upload(tmp_path / "new", target)
    assert _files(fs, path) == {"weights.bin": 300}
    assert set(_files(fs, parent)) == {"model/weights.bin"}  # the next replace removed them
    with fs.open_input_stream(f"{path}/weights.bin") as stream:
        assert stream.read().startswith(b"new")


def test_credentials_in_a_uri_are_refused_without_being_echoed(tmp_path):
    """Issue 24.8: a secret in a URI would be printed and stored in space.yaml, tuning.json and the model."""
    from tune_dialsum.space import load_space
    from tune_dialsum.tracking import tracking_uri
    from tune_dialsum.uris import redacted

    with pytest.raises(UsageError, match=r"^storage: s3://\*\*\*@bucket/x carries credentials.*AWS_ACCESS_KEY_ID") as e:
        ExperimentStore("s3://AKIAKEY:s3cr3t@bucket/x")
    assert "s3cr3t" not in str(e.value) and "AKIAKEY" not in str(e.value)
    with pytest.raises(UsageError, match=r"s3://\*\*\*@bucket/x carries") as e:  # AWS secrets may hold a '/'
        ExperimentStore("s3://AKIAKEY:ab/cd+ef@bucket/x")
    assert "ab/cd" not in str(e.value)
    with pytest.raises(UsageError, match=r"^tracking.uri: https://\*\*\*@mlflow.example:5000 carries") as e:
        tracking_uri("https://user:pw@mlflow.example:5000", tmp_path, remote=False)
    assert "pw" not in str(e.value).split("carries")[0]
    demo = yaml.safe_load((REPO / "search_spaces" / "tiny.yaml").read_text())
    for key, setting in {
        "storage_path": {"storage_path": "gs://user:pw@bucket/exps"},
        "tracking.uri": {"tracking": {"uri": "http://u:pw@127.0.0.1:5000"}},
        "data.path": {"data": {**demo["data"], "path": "s3://k:pw@bucket/data"}},
    }.items():
        space_file = tmp_path / f"{key}.yaml"
        space_file.write_text(yaml.safe_dump({**demo, **setting}))
        with pytest.raises(Exception, match=rf"{space_file}: {key}: .*carries credentials") as e:
            load_space(space_file)
        assert ":pw@" not in str(e.value)
    assert (
        redacted("s3://bucket/x?endpoint_override=127.0.0.1:9000") == "s3://bucket/x?endpoint_override=127.0.0.1:9000"
    )


def test_a_study_another_machine_wrote_since_is_pulled_and_never_overwritten(remote_experiment, tmp_path, monkeypatch):
    """Issue 24.2: machine B resumed the experiment and pushed its study; A must take it, not push its old one.

    Every version here has the same size, as SQLite studies often do (they grow by pages): only the
    store's modification time tells them apart.
    """
    import tune_dialsum.storage as storage

    on_a = remote_experiment
    on_a.pull(CHECKPOINT_METADATA)
    assert (on_a.local / OPTUNA_DB).read_bytes() == b"remote study"
    monkeypatch.setattr(storage, "mirror_root", lambda: tmp_path / "machine-b")
    on_b = ExperimentStore(on_a.location)
    assert on_b.local != on_a.local
    on_b.pull(CHECKPOINT_METADATA)
    time.sleep(1.1)  # S3 keeps modification times in seconds
    (on_b.local / OPTUNA_DB).write_bytes(b"B's study v2")
    on_b.push_study(on_b.local / OPTUNA_DB)

    on_a.pull(CHECKPOINT_METADATA)  # the store's copy changed since A read it: A takes it
    assert (on_a.local / OPTUNA_DB).read_bytes() == b"B's study v2"
    time.sleep(1.1)
    (on_a.local / OPTUNA_DB).write_bytes(b"A's study v3")
    on_a.push_study(on_a.local / OPTUNA_DB)  # A had the newest: its push goes through
    on_a.push_study(on_a.local / OPTUNA_DB)  # and again (what it remembers is what the store reports)
    (on_b.local / OPTUNA_DB).write_bytes(b"B's stale v4")
    with pytest.raises(UsageError, match=r"optuna.db changed in the store since this machine last read it"):
        on_b.push_study(on_b.local / OPTUNA_DB)  # never over A's newer copy
    with pytest.raises(UsageError, match=r"optuna.db changed both in the store and on this machine"):
        on_b.pull(CHECKPOINT_METADATA)
    with on_a.fs.open_input_stream(f"{on_a.path}/{OPTUNA_DB}") as stream:
        assert stream.read() == b"A's study v3"
