"""Data hygiene: one function decides which rows train and which score, and caches follow the data."""

from __future__ import annotations

import json
import os
from dataclasses import replace

import pandas as pd

from tests.conftest import BUNDLED_DATA
from tune_dialsum import DialogueDataLoader, DialogueSummarizationTrainer
from tune_dialsum.data import hold_out, training_splits
from tune_dialsum.experiment_context import ExperimentContext
from tune_dialsum.space_schema import DataSection, ObjectiveSection, ResourcesSection, SchedulerSection
from tune_dialsum.trial_data import prepared_datasets, training_frames


def _no_validation_data(root, rows: int = 40):
    root.mkdir(parents=True, exist_ok=True)
    records = [
        {"id": str(i), "dialogue": f"Anna: line {i}\nTom: ok {i}", "summary": f"Anna said {i}."} for i in range(rows)
    ]
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return root


def _settings(data, **changes) -> ExperimentContext:
    base = ExperimentContext(
        data=DataSection(path=str(data), validation_split=0.2),
        objective=ObjectiveSection(metric="rougeL", mode="max"),
        scheduler=SchedulerSection(budget_unit="steps", max_budget=10, eval_interval=5),
        resources=ResourcesSection(),
        seed=7,
    )
    return replace(base, **changes)


def test_search_trainer_api_and_cli_hold_out_the_same_rows(tmp_path, tiny_models):
    data = _no_validation_data(tmp_path / "data")
    splits = DialogueDataLoader(data).load_splits()
    _, held = hold_out(splits["train"], 0.2, seed=7)
    _, search_validation = training_frames(_settings(data))
    assert set(search_validation["id"]) == set(held["id"]) and len(held) == 8
    trainer = DialogueSummarizationTrainer(str(tiny_models["t5"]), output_dir=str(tmp_path / "out"))
    api = trainer.load_and_prepare_data(splits["train"], val_split=0.2, seed=7)
    assert api["validation"].num_rows == len(held)
    # a different seed holds out different rows; train --seed reaches the split
    assert set(hold_out(splits["train"], 0.2, seed=8)[1]["id"]) != set(held["id"])


def test_cli_train_seed_reaches_the_split(tmp_path, monkeypatch, tiny_models):
    from tune_dialsum.data import splits as splits_module

    data = _no_validation_data(tmp_path / "data")
    seen = []
    original = splits_module.hold_out
    monkeypatch.setattr(splits_module, "hold_out", lambda df, f, seed: seen.append(seed) or original(df, f, seed))
    from tune_dialsum.cli import main

    code = main(
        ["train", "--model", str(tiny_models["t5"]), "--data", str(data), "--output-dir", str(tmp_path / "m"),
         "--max-steps", "1", "--eval-steps", "1", "--num-beams", "1", "--seed", "11", "--warmup-steps", "0"]
    )  # fmt: skip
    assert code == 0 and seen == [11]


def test_training_splits_cut_train_before_holding_out_and_validation_after():
    frame = pd.DataFrame({"id": [str(i) for i in range(100)], "dialogue": ["d"] * 100, "summary": ["s"] * 100})
    train, validation = training_splits({"train": frame, "validation": None}, 0.1, 0, max_train_samples=50)
    assert len(train) + len(validation) == 50 and len(validation) == 5
    train, validation = training_splits({"train": frame, "validation": frame.head(30)}, 0.1, 0, max_eval_samples=10)
    assert len(train) == 100 and list(validation["id"]) == [str(i) for i in range(10)]


def test_data_fingerprint_follows_the_files(tmp_path):
    data = _no_validation_data(tmp_path / "data")
    loader = DialogueDataLoader(data)
    before = loader.fingerprint()
    assert loader.fingerprint() == before
    os.utime(data / "train.jsonl", ns=(1, 1))
    assert loader.fingerprint() != before


def test_tokenized_cache_is_rebuilt_when_the_data_changes_in_place(tmp_path, tiny_models):
    data = _no_validation_data(tmp_path / "data", rows=20)
    settings = _settings(data, cache_dir=str(tmp_path / "cache"))
    trainer = DialogueSummarizationTrainer(str(tiny_models["t5"]), output_dir=str(tmp_path / "out"))
    first = prepared_datasets(trainer, settings)
    assert len(list((tmp_path / "cache").glob("*/dataset_dict.json"))) == 1
    assert prepared_datasets(trainer, settings)["train"].num_rows == first["train"].num_rows
    _no_validation_data(data, rows=40)  # the same path, other contents
    from tune_dialsum.trial_data import _load_splits

    _load_splits.cache_clear()  # a new process would read the files afresh
    second = prepared_datasets(trainer, settings)
    assert second["train"].num_rows == 32 and len(list((tmp_path / "cache").glob("*/dataset_dict.json"))) == 2


def test_tokenized_cache_key_includes_the_tokenizer_itself(tmp_path):
    from tune_dialsum.models import build_tiny_model

    data = _no_validation_data(tmp_path / "data", rows=20)
    settings = _settings(data, cache_dir=str(tmp_path / "cache"))
    model = tmp_path / "model"
    for tokenizer_data in (data, BUNDLED_DATA):  # the same path and recipe, another tokenizer in place
        build_tiny_model("t5", model, data_dir=str(tokenizer_data))
        prepared_datasets(DialogueSummarizationTrainer(str(model), output_dir=str(tmp_path / "out")), settings)
    assert len(list((tmp_path / "cache").glob("*/dataset_dict.json"))) == 2
