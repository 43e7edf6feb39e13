"""LoRA as a searched dimension: the space's checks, training through an adapter, the merged export, a real search."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import optuna
import pytest

from tests.conftest import REPO, tiny_search_command, trial_results
from tune_dialsum.errors import SpaceError, UsageError
from tune_dialsum.space import load_space, parse_space

pytest.importorskip("peft", reason="peft is the optional 'peft' extra (pip install 'tune_dialsum[peft]')")

BASE = {
    "fixed": {"model": "tiny:bart"},
    "search": {"learning_rate": {"loguniform": [1e-4, 1e-3]}},
    "scheduler": {"max_budget": 100},
}


def _with(**sections) -> dict:
    return {**BASE, **{name: {**BASE.get(name, {}), **value} for name, value in sections.items()}}


def test_lora_settings_are_sampled_for_lora_trials_only_with_the_adapters_ranges():
    space = load_space(REPO / "search_spaces" / "bart_lora.yaml")
    lora = space.per_adapter["lora"]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0), direction="maximize")
    seen = set()
    for _ in range(12):
        config = space.define_by_run(study.ask())
        seen.add(config["adapter"])
        if config["adapter"] == "lora":
            low, high = lora["learning_rate"].bounds
            assert low <= config["learning_rate"] <= high  # the adapter's range, not the search's
            assert config["lora_r"] in lora["lora_r"].args and config["lora_dropout"] == 0.05
        else:
            low, high = space.search["learning_rate"].bounds
            assert low <= config["learning_rate"] <= high
            assert all(config[name] is None for name in ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules"))
    assert seen == {"none", "lora"}


@pytest.mark.parametrize(
    "raw, key, says",
    [
        (_with(fixed={"adapter": "lora", "lora_r": 0}), "fixed.lora_r", "must be greater than 0"),
        (_with(fixed={"adapter": "qlora"}), "fixed.adapter", "unknown adapter 'qlora'; use one of none, lora"),
        (
            _with(fixed={"adapter": "lora", "lora_target_modules": "q_proj,query"}),
            "fixed.lora_target_modules",
            "query: not a linear layer of bart models",
        ),
        (
            _with(search={"adapter": {"choice": ["lora"]}, "lora_target_modules": {"choice": ["q,v"]}}),
            "search.lora_target_modules",
            "q, v: not a linear layer of bart models",
        ),
        (_with(fixed={"lora_alpha": 32}), "fixed.lora_alpha", "has no effect without adapter: lora"),
        (
            _with(search={"lora_r": {"choice": [4, 8]}}),
            "search.lora_r",
            "has no effect without adapter: lora",
        ),
        (
            {
                **_with(search={"adapter": {"choice": ["none", "lora"]}}),
                "per_adapter": {"none": {"lora_r": {"int": [2, 8]}}},
            },
            "per_adapter.none.lora_r",
            "only LoRA trials use it",
        ),
        (_with(fixed={"adapter": "lora", "lora_dropout": 1.0}), "fixed.lora_dropout", "must be below 1"),
        (
            {**BASE, "per_family": {"bart": {"adapter": {"choice": ["lora"]}}}},
            "per_family.bart.adapter",
            "it decides which ranges apply; search it under 'search'",
        ),
        (
            {
                **_with(search={"adapter": {"choice": ["none", "lora"]}}),
                "per_adapter": {"lora": {"num_beams": {"choice": [4]}}},
            },
            "per_adapter.lora.num_beams",
            "a decoding setting: put it under decoding.search",
        ),
        (
            {**_with(fixed={"adapter": "lora"}), "per_adapter": {"lora": {"num_train_epochs": {"choice": [2.0]}}}},
            "per_adapter.lora.num_train_epochs",
            "has no effect: the scheduler sets every trial's budget",
        ),
        (
            _with(fixed={"adapter": "lora", "model": "acme/dialogue-seq2seq"}),
            "fixed.lora_target_modules",
            "LoRA has no default layers for generic models",
        ),
    ],
)
def test_bad_adapter_settings_are_one_line_naming_the_key(raw, key, says):
    with pytest.raises(SpaceError) as caught:
        parse_space(raw, source="space.yaml")
    message = str(caught.value)
    assert message.startswith(f"space.yaml: {key}: ") and says in message, message
    assert "\n" not in message


def _train(model_dir: Path, out: Path, splits, **settings):
    """A few steps of a trainer with ``settings``, its one checkpoint saved: (trainer, checkpoint)."""
    from tune_dialsum.space_schema import TrialSettings
    from tune_dialsum.train import DialogueSummarizationTrainer

    asked = TrialSettings(
        model=str(model_dir), max_input_length=96, max_target_length=24, batch_size=8, learning_rate=5e-3, **settings
    )
    trainer = DialogueSummarizationTrainer.for_settings(asked, str(out), tensorboard=False)
    data = trainer.load_and_prepare_data(splits["train"].head(48), val_df=splits["validation"].head(8))
    arguments = trainer.training_arguments(asked, max_steps=6, save_steps=6, eval_strategy="no", seed=0)
    trainer.train(data, training_args=arguments, save_final_model=False)
    return trainer, out / "checkpoint-6"


def _record(trainer, checkpoint: Path):
    from tune_dialsum.adapters import is_adapter, parameter_counts
    from tune_dialsum.checkpoints import CheckpointRecord

    config = {"model": trainer.model_name, "adapter": "lora" if is_adapter(checkpoint) else "none"}
    snapshot = {"experiment": "x", "config": config, "recipe": trainer.recipe, **parameter_counts(trainer.model)}
    return CheckpointRecord(checkpoint, "t1", 6, {"rougeL": 0.1}, snapshot)


def _size(directory: Path) -> int:
    return sum(f.stat().st_size for f in directory.iterdir() if f.is_file())


def test_a_lora_checkpoint_holds_the_adapter_and_exports_as_a_plain_model_that_writes_the_same(
    tiny_models, bundled_splits, tmp_path
):
    import torch
    from transformers import AutoModelForSeq2SeqLM

    from tune_dialsum.export import export_checkpoint
    from tune_dialsum.inference import DialogueSummarizer

    lora, lora_checkpoint = _train(tiny_models["bart"], tmp_path / "lora", bundled_splits, adapter="lora", lora_r=4)
    full, full_checkpoint = _train(tiny_models["bart"], tmp_path / "full", bundled_splits)
    files = {f.name for f in lora_checkpoint.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json"} <= files and "model.safetensors" not in files
    assert json.loads((lora_checkpoint / "adapter_config.json").read_text())["base_model_name_or_path"] == str(
        tiny_models["bart"]
    )
    # the adapter and its optimizer state, against every weight and theirs
    assert _size(lora_checkpoint) < _size(full_checkpoint) / 3, (_size(lora_checkpoint), _size(full_checkpoint))
    trained = _record(lora, lora_checkpoint).snapshot
    assert 0 < trained["trainable_parameters"] < trained["total_parameters"] / 10

    merged_dir = export_checkpoint(_record(lora, lora_checkpoint), tmp_path / "merged", "rougeL", "max")
    assert not (merged_dir / "adapter_config.json").exists() and (merged_dir / "model.safetensors").is_file()
    plain = AutoModelForSeq2SeqLM.from_pretrained(merged_dir)  # no adapter config: nothing for peft to do
    assert not [name for name, _ in plain.named_parameters() if "lora" in name]
    tuning = json.loads((merged_dir / "tuning.json").read_text())
    assert tuning["adapter"]["merged"] is True and tuning["adapter"]["r"] == 4
    assert "merged into the base model: a plain model" in (merged_dir / "README.md").read_text()

    adapter_dir = export_checkpoint(
        _record(lora, lora_checkpoint), tmp_path / "adapter", "rougeL", "max", adapter_only=True
    )
    assert (adapter_dir / "adapter_config.json").is_file() and not (adapter_dir / "model.safetensors").exists()
    assert "holds the adapter alone" in (adapter_dir / "README.md").read_text()

    dialogues = list(bundled_splits["test"]["dialogue"].head(8))
    summaries = [DialogueSummarizer(d).summarize(dialogues) for d in (lora_checkpoint, merged_dir, adapter_dir)]
    assert summaries[0] == summaries[1] == summaries[2]
    batch = lora.tokenizer(dialogues[:2], text_target=["a", "b"], return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = [
            AutoModelForSeq2SeqLM.from_pretrained(d).eval()(**batch).logits
            for d in (tiny_models["bart"], lora_checkpoint, merged_dir)
        ]
    assert not torch.allclose(logits[0], logits[1], atol=1e-3)  # the adapter trained: it changes the model
    assert torch.allclose(logits[1], logits[2], atol=1e-4)  # and the merge keeps what it does

    from tune_dialsum.train import DialogueSummarizationTrainer

    with pytest.raises(UsageError, match="is a LoRA adapter, not a model to train from"):
        DialogueSummarizationTrainer(str(lora_checkpoint))
    with pytest.raises(UsageError, match="trained every weight .* export without --adapter-only"):
        export_checkpoint(_record(full, full_checkpoint), tmp_path / "none", "rougeL", "max", adapter_only=True)


def test_a_lora_search_without_peft_is_refused_in_one_line_naming_the_extra(tmp_path, monkeypatch, capsys):
    from tune_dialsum.cli import main

    monkeypatch.setitem(sys.modules, "peft", None)  # as where it is not installed
    argv = tiny_search_command(tmp_path, "nopeft", "search.adapter={choice: [none, lora]}")[3:]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert 'pip install "tune_dialsum[peft]"' in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "nopeft").exists()  # refused before anything is written


@pytest.mark.slow
def test_a_search_over_the_adapter_and_its_rank_exports_plain_models(shared_gpu_search, tmp_path):
    """Full fine-tuning and LoRA trials in one search (conftest.SHARED_GPU_SETS: adapter and lora_r searched)."""
    from tune_dialsum.checkpoints import find_checkpoints
    from tune_dialsum.cli import main

    completed, experiment = shared_gpu_search
    reports = {trial: rows[-1] for trial, rows in trial_results(experiment).items()}
    records = find_checkpoints(experiment)
    adapters = {r.trial_id: r.snapshot["config"]["adapter"] for r in records}
    assert set(adapters.values()) == {"none", "lora"}, adapters
    for record in records:
        report = next(r for t, r in reports.items() if record.trial_id in t)
        assert record.snapshot["trainable_parameters"] == report["trainable_parameters"]
        if adapters[record.trial_id] == "lora":
            assert report["trainable_parameters"] < report["total_parameters"] / 10
            assert (record.path / "adapter_config.json").is_file() and not (record.path / "model.safetensors").exists()
            assert record.snapshot["config"]["lora_r"] in (2, 4)
        else:
            assert report["trainable_parameters"] == report["total_parameters"]
            assert "lora_r" not in record.snapshot["config"]
    best = experiment / "best_model"
    assert (best / "config.json").is_file() and not (best / "adapter_config.json").exists()
    assert "Trained weights: " in completed.stdout

    lora_trial = next(t for t, a in adapters.items() if a == "lora")
    argv = ["export", str(experiment), "--trial", lora_trial]
    assert main([*argv, "--out", str(tmp_path / "merged")]) == 0
    assert main([*argv, "--out", str(tmp_path / "adapter"), "--adapter-only"]) == 0
    assert not (tmp_path / "merged" / "adapter_config.json").exists()
    adapter = json.loads((tmp_path / "adapter" / "tuning.json").read_text())["adapter"]
    assert adapter["merged"] is False and adapter["base_model"]
