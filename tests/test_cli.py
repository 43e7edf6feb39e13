"""The command registry behind ``python -m tune_dialsum`` and the lines summarize and evaluate write."""

import json

from tune_dialsum.cli import build_parser
from tune_dialsum.inference import prediction_lines, summary_lines

# the fewest arguments each command parses with
REQUIRED = {
    "tiny-model": ["--family", "t5", "--out", "o"],
    "train": ["--model", "m", "--output-dir", "o"],
    "search": [],
    "export": ["e", "--out", "o"],
    "summarize": ["--model", "m"],
    "tune-decoding": ["m", "--data", "d"],
    "evaluate": ["--model", "m", "--data", "d"],
    "dashboard": ["e"],
    "analyze": ["e"],
    "space-keys": [],
}


def test_every_command_runs_its_own_handler():
    parser = build_parser()
    for name, required in REQUIRED.items():
        args = parser.parse_args([name, *required])
        assert args.command == name
        assert args.run.__name__ == "_cmd_" + name.replace("-", "_")


def test_summary_lines_are_records_for_jsonl_and_one_line_each_for_text():
    records = [{"id": "a", "dialogue": "x"}, {"id": "b", "dialogue": "y"}]
    assert [json.loads(line) for line in summary_lines(records, ["one", "two"], jsonl=True)] == [
        {"id": "a", "summary": "one"},
        {"id": "b", "summary": "two"},
    ]
    assert summary_lines(records, ["one\nmore", "two"], jsonl=False) == ["one more", "two"]


def test_prediction_lines_pair_each_reference_with_its_prediction():
    assert json.loads(prediction_lines(["7"], ["ref"], ["pred"])[0]) == {
        "id": "7",
        "reference": "ref",
        "prediction": "pred",
    }
