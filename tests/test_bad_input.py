"""The bad-input catalogue: each case exits non-zero with one line naming the file, key or value and the fix."""

from __future__ import annotations

import json
import shutil
import socket

import pytest

from tests.conftest import BUNDLED_DATA, REPO
from tune_dialsum.cli import main

SPACE = """name: bad
data: {{path: {data}}}
fixed: {{model: "tiny:t5"}}
search:
  learning_rate: {{loguniform: [1.0e-4, 1.0e-2]}}
scheduler: {{max_budget: 100}}
"""


def _run(capsys, *argv) -> tuple[int, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.err


def _space(tmp_path, text=None, **replace) -> str:
    text = text if text is not None else SPACE.format(data=BUNDLED_DATA)
    for old, new in replace.items():
        text = text.replace(old, new)
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return str(path)


def _data(tmp_path, lines=None, name="train.jsonl", raw: bytes | None = None) -> str:
    directory = tmp_path / "data"
    directory.mkdir(exist_ok=True)
    if raw is not None:
        (directory / name).write_bytes(raw)
    else:
        (directory / name).write_text("".join(json.dumps(line) + "\n" for line in lines or []))
    return str(directory)


ROW = {"id": "1", "dialogue": "Anna: hi\nTom: hello", "summary": "Anna greets Tom."}

SPACE_CASES = {
    "space syntax error": (dict(text="search: {learning_rate: [1, 2\n"), "YAML syntax error at line"),
    "space unknown key": (dict(**{"scheduler:": "colour: red\nscheduler:"}), "colour: unknown key; valid keys:"),
    "space wrong type": (
        dict(**{"max_budget: 100": "max_budget: many"}),
        "max_budget: expected an integer but got 'many'",
    ),
    "space reversed range": (dict(**{"[1.0e-4, 1.0e-2]": "[1.0e-2, 1.0e-4]"}), "low must be below high"),
    "space empty range": (dict(**{"[1.0e-4, 1.0e-2]": "[1.0e-2, 1.0e-2]"}), "low must be below high"),
    "space log range at zero": (dict(**{"[1.0e-4, 1.0e-2]": "[0, 1.0e-2]"}), "a log range must be above 0"),
    "space unknown model family": (dict(**{"tiny:t5": "tiny:gpt"}), "unknown model family 'gpt'"),
    "space unknown dialogue format": (
        dict(**{"fixed: {": "fixed: {dialogue_format: chat, "}),
        "unknown dialogue format 'chat'",
    ),
    "space num_samples of 0": (
        dict(**{"scheduler:": "trials: {num_samples: 0}\nscheduler:"}),
        "trials.num_samples: must be at least 1 but got 0",
    ),
    "space empty choice": (
        dict(**{"learning_rate: {loguniform: [1.0e-4, 1.0e-2]}": "dialogue_format: {choice: []}"}),
        "list of choices is empty",
    ),
    "space missing data directory": (dict(**{str(BUNDLED_DATA): "/no/such/dir"}), "/no/such/dir: no such directory"),
    "space decoding setting searched in training": (
        dict(**{"search:\n": "search:\n  num_beams: {choice: [1, 4]}\n"}),
        "search.num_beams: a decoding setting: put it under decoding.search",
    ),
    "space decoding num_beams of 0": (
        dict(**{"scheduler:": "decoding: {search: {num_beams: {choice: [0, 4]}}}\nscheduler:"}),
        "decoding.search.num_beams.choice[0]: must be greater than 0 but got 0",
    ),
    "space unknown generation setting": (
        dict(**{"scheduler:": "decoding: {search: {beam_width: {choice: [2, 4]}}}\nscheduler:"}),
        "decoding.search.beam_width: unknown key; valid keys: length_penalty",
    ),
    "space decoding more checkpoints than re-scored": (
        dict(**{"scheduler:": "decoding: {search: {num_beams: {int: [1, 4]}}, top_k_checkpoints: 5}\nscheduler:"}),
        "decoding.top_k_checkpoints: 5 exceeds selection.top_k 3",
    ),
}


@pytest.mark.parametrize("case", sorted(SPACE_CASES))
def test_bad_space(case, tmp_path, capsys):
    replace, expected = SPACE_CASES[case]
    text = replace.pop("text", None)
    space = _space(tmp_path, text, **replace)
    code, err = _run(capsys, "search", "--space", space, "--storage-path", str(tmp_path / "results"))
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: ") and expected in err and "Traceback" not in err
    assert not (tmp_path / "results").exists()  # nothing started


DATA_CASES = {
    "data missing directory": (lambda p: str(p / "nowhere"), "no such directory"),
    "data no train split": (lambda p: _data(p, [ROW], name="test.jsonl"), "no train split"),
    "data missing column": (
        lambda p: _data(p, [{"id": "1", "text": "x", "summary": "y"}]),
        "no column 'dialogue' (found: id, text, summary); set dialogue_col",
    ),
    "data empty split": (lambda p: _data(p, []), "the train split is empty"),
    "data every row empty": (
        lambda p: _data(p, [{**ROW, "dialogue": "  "}]),
        "every row of the train split has an empty",
    ),
    "data not utf-8": (
        lambda p: _data(p, raw=b'{"id": "1", "dialogue": "caf\xe9", "summary": "x"}\n'),
        "not UTF-8 (bad byte at offset",
    ),
    "data broken csv quote": (
        lambda p: _data(p, name="train.csv", raw=b'id,dialogue,summary\n1,"A: hi,ok\n'),
        "cannot parse CSV",
    ),
    "data invalid json line": (lambda p: _data(p, raw=b'{"id": "1"\n'), "line 1 is not valid JSON"),
}


@pytest.mark.parametrize("case", sorted(DATA_CASES))
def test_bad_data(case, tmp_path, capsys):
    make, expected = DATA_CASES[case]
    data = make(tmp_path)
    code, err = _run(capsys, "train", "--model", "tiny:t5", "--data", data, "--output-dir", str(tmp_path / "out"))
    assert code == 2
    assert err.count("\n") == 1 and expected in err and "Traceback" not in err


def test_a_one_megabyte_dialogue_is_truncated_not_fatal(tmp_path, capsys, tiny_models):
    huge = "\n".join(f"Anna: message number {i} about the cafe" for i in range(30000))
    assert len(huge) > 1_000_000
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps({"id": "big", "dialogue": huge}) + "\n")
    code, err = _run(
        capsys,
        "summarize",
        "--model",
        str(tiny_models["t5"]),
        "--input",
        str(source),
        "--output",
        str(tmp_path / "out.jsonl"),
    )
    assert code == 0, err
    assert json.loads((tmp_path / "out.jsonl").read_text())["id"] == "big"


def test_duplicate_ids_are_warned_about_and_kept(tmp_path, caplog):
    from tune_dialsum import DialogueDataLoader

    data = _data(tmp_path, [ROW, {**ROW, "summary": "Another summary."}])
    train = DialogueDataLoader(data).load_splits()["train"]
    assert len(train) == 2 and "1 duplicate ids" in caplog.text


@pytest.fixture
def experiment_without_checkpoints(tmp_path):
    experiment = tmp_path / "results" / "empty"
    experiment.mkdir(parents=True)
    shutil.copy(REPO / "search_spaces" / "tiny.yaml", experiment / "space.yaml")
    (experiment / "trial_0001").mkdir()
    return experiment


def test_cli_cases(tmp_path, capsys, experiment_without_checkpoints, tiny_models, request):
    existing = tmp_path / "existing"
    existing.mkdir()
    taken = socket.socket()  # a port another program holds
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    request.addfinalizer(taken.close)
    cases = [
        (["frobnicate"], 2, "invalid choice: 'frobnicate'"),
        (["search"], 2, "--space is required"),
        (["search", "--space", str(tmp_path / "none.yaml")], 2, "no such space file"),
        (["search", "--space", str(REPO / "search_spaces" / "tiny.yaml"), "--set", "trials"], 2, "expected KEY=VALUE"),
        (
            [
                "search",
                "--space",
                str(REPO / "search_spaces" / "tiny.yaml"),
                "--resume",
                "--name",
                "never",
                "--storage-path",
                str(tmp_path / "r"),
            ],
            2,
            "nothing to resume",
        ),
        (["export", str(tmp_path / "missing"), "--out", str(tmp_path / "m")], 2, "not an experiment directory"),
        (["analyze", str(tmp_path / "missing")], 2, "not an experiment directory"),
        (["export", str(experiment_without_checkpoints), "--out", str(tmp_path / "m")], 1, "nothing to export"),
        (["summarize", "--model", str(tmp_path), "--input", str(tmp_path / "none.jsonl")], 2, "no such file"),
        (["summarize", "--model", str(existing)], 2, "not a model directory"),
        (
            [
                "train",
                "--model",
                "facebook/bart-base",
                "--data",
                str(BUNDLED_DATA),
                "--output-dir",
                str(tmp_path / "o"),
            ],
            2,
            "'facebook/bart-base' is not a local directory",
        ),
        (
            ["evaluate", "--model", str(tiny_models["t5"]), "--data", _data(tmp_path, [ROW]), "--split", "test"],
            2,
            "no test split",
        ),
        (
            ["train", "--model", "tiny:t5", "--max-input-length", "0", "--output-dir", "x"],
            2,
            "must be greater than 0 but got '0'",
        ),
        (
            ["train", "--model", "tiny:t5", "--max-train-samples", "0", "--output-dir", "x"],
            2,
            "must be at least 1 but got 0",
        ),
        (["dashboard", str(tmp_path / "missing")], 2, "no Optuna study here"),
        (["dashboard", str(tmp_path), "--port", "70000"], 2, "must be 0 (free ports) or 1-65534"),
        (["dashboard", str(experiment_without_checkpoints), "--port", str(taken.getsockname()[1])], 2, "--port N"),
    ]
    for argv, expected_code, expected in cases:
        try:
            code, err = _run(capsys, *argv)
        except SystemExit as exit_:  # argparse exits
            code, err = exit_.code, capsys.readouterr().err
        assert code == expected_code, (argv, err)
        assert err.count("\n") == 1 and expected in err and "Traceback" not in err, (argv, err)


def test_security_yaml_is_only_safe_loaded_and_nothing_is_evaluated():
    sources = "\n".join(p.read_text() for p in (REPO / "tune_dialsum").rglob("*.py"))
    assert "yaml.load(" not in sources and "yaml.unsafe_load" not in sources and "yaml.full_load" not in sources
    assert "eval(" not in sources.replace(".eval()", "").replace("_eval(", "") and "exec(" not in sources


def test_security_yaml_tags_that_would_run_code_are_refused(tmp_path, capsys):
    space = _space(tmp_path, "search: !!python/object/apply:os.system ['echo pwned']\n")
    code, err = _run(capsys, "search", "--space", space)
    assert code == 2 and "YAML syntax error" in err


def test_security_remote_code_is_off_unless_the_space_turns_it_on(tmp_path):
    import yaml

    from tune_dialsum.experiment_context import experiment_context
    from tune_dialsum.space import parse_space

    raw = yaml.safe_load(SPACE.format(data=BUNDLED_DATA))
    assert experiment_context(parse_space(raw)).trust_remote_code is False
    assert experiment_context(parse_space({**raw, "trust_remote_code": True})).trust_remote_code is True


def test_security_names_cannot_steer_paths_outside_the_storage(tmp_path, capsys):
    for name in ("../escape", "/abs", ".hidden", "a/b"):
        code, err = _run(
            capsys, "search", "--space", _space(tmp_path), "--name", name, "--storage-path", str(tmp_path / "r")
        )
        assert code == 2 and "must be letters" in err, name


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--gpus-per-trial", "4"], "resources.gpus_per_trial: a trial asks for 4 GPU but the cluster has 0"),
        (
            ["--workers-per-trial", "64", "--cpus-per-worker", "1"],
            "resources.cpus_per_worker: a trial asks for 64 workers x 1 CPU but the cluster has",
        ),
    ],
)
def test_impossible_resources_are_refused_before_any_trial(tmp_path, capsys, monkeypatch, flags, message):
    """Against the resources Ray reports (this machine's two CPUs, no GPU), in one line, with nothing written."""
    import ray

    import tune_dialsum.search

    node = {"Alive": True, "Resources": {"CPU": 2.0}}
    monkeypatch.setattr(tune_dialsum.search, "start_ray", lambda address: False)  # as if Ray were up already
    monkeypatch.setattr(ray, "cluster_resources", lambda: dict(node["Resources"]))
    monkeypatch.setattr(ray, "nodes", lambda: [node])
    code, err = _run(capsys, "search", "--space", _space(tmp_path), *flags, "--storage-path", str(tmp_path / "results"))
    assert code == 2, err
    last = err.strip().splitlines()[-1]
    assert message in last
    assert not (tmp_path / "results" / "bad").exists()
