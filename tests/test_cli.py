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


def test_train_and_resource_flags_are_the_schemas_fields_with_the_guides_defaults():
    from dataclasses import fields

    from tune_dialsum.space_schema import ResourcesSection, TrialSettings

    parser = build_parser()
    train = vars(parser.parse_args(["train", *REQUIRED["train"], "--epochs", "2", "--label-smoothing", "0.1"]))
    assert {f.name for f in fields(TrialSettings)} <= set(train)
    settings = TrialSettings.from_config(train)
    assert (settings.num_train_epochs, settings.label_smoothing) == (2.0, 0.1)
    assert (settings.warmup_steps, settings.weight_decay, settings.generation_num_beams) == (500, 0.01, 4)
    assert settings.gradient_checkpointing is False and settings.mixed_precision == "auto"
    flags = ["--gradient-checkpointing", "--mixed-precision", "no", "--num-beams", "2", "--learning-rate", "3e-4"]
    settings = TrialSettings.from_config(vars(parser.parse_args(["train", *REQUIRED["train"], *flags])))
    assert settings.gradient_checkpointing is True and settings.mixed_precision == "no"
    assert (settings.generation_num_beams, settings.learning_rate) == (2, 3e-4)
    search = vars(parser.parse_args(["search"]))
    assert {f.name for f in fields(ResourcesSection)} <= set(search)
    assert all(search[f.name] is None for f in fields(ResourcesSection))  # unset: the space's value stands
