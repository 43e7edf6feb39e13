"""The trainer end to end on the bundled data, resuming, and the training guide's examples."""

import json
import math

import pytest

from tests.conftest import BUNDLED_DATA
from tune_dialsum import DialogueDataLoader, DialogueSummarizationTrainer, train_model_from_dataframes
from tune_dialsum.contract import RECIPE_FILE
from tune_dialsum.errors import UsageError
from tune_dialsum.space_schema import TrialSettings

FAST = dict(learning_rate=2e-3, warmup_steps=10, batch_size=16, logging_steps=10, generation_num_beams=1)


@pytest.fixture(scope="module")
def trained(tiny_models, bundled_splits, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("bart-run")
    trainer = DialogueSummarizationTrainer(
        str(tiny_models["bart"]),
        str(output_dir),
        max_input_length=256,
        max_target_length=64,
        dialogue_format="standard",
    )
    dataset_dict = trainer.load_and_prepare_data(bundled_splits["train"], val_df=bundled_splits["validation"].head(64))
    args = trainer.get_training_arguments(max_steps=240, eval_steps=120, save_steps=120, **FAST)
    hf_trainer = trainer.train(train_dataset=dataset_dict, training_args=args)
    return trainer, hf_trainer, output_dir


def test_training_lowers_the_loss_and_reports_rouge(trained):
    _, hf_trainer, _ = trained
    losses = [entry["loss"] for entry in hf_trainer.state.log_history if "loss" in entry]
    assert losses[-1] < losses[0] / 2
    scores = hf_trainer.evaluate()
    for key in ("eval_rouge1", "eval_rouge2", "eval_rougeL", "eval_rougeLsum", "eval_gen_len"):
        assert key in scores and math.isfinite(scores[key])
    assert 0.15 < scores["eval_rougeL"] <= 1.0  # far above an untrained model's near-zero


def test_final_model_is_saved_with_its_recipe_and_summarises(trained):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    trainer, _, output_dir = trained
    final = output_dir / "final_model"
    assert {"config.json", "tokenizer_config.json", "training_args.json", RECIPE_FILE} <= {
        p.name for p in final.iterdir()
    }
    assert json.loads((final / RECIPE_FILE).read_text())["dialogue_format"] == "standard"
    assert json.loads((final / "training_args.json").read_text())["max_steps"] == 240
    model, tokenizer = AutoModelForSeq2SeqLM.from_pretrained(final), AutoTokenizer.from_pretrained(final)
    ids = model.generate(
        **tokenizer(["Anna: Can I borrow your bike?\nTom: Sure, I will bring it Friday."], return_tensors="pt"),
        max_new_tokens=32,
    )
    assert tokenizer.decode(ids[0], skip_special_tokens=True).strip()


def test_every_checkpoint_carries_the_recipe(trained):
    _, _, output_dir = trained
    checkpoints = sorted(output_dir.glob("checkpoint-*"))
    assert [c.name for c in checkpoints] == ["checkpoint-120", "checkpoint-240"]
    assert all((c / RECIPE_FILE).is_file() for c in checkpoints)


def test_tensorboard_logs_go_to_output_dir_logs(trained):
    pytest.importorskip("tensorboard")
    _, _, output_dir = trained
    assert list((output_dir / "logs").glob("events.out.tfevents.*"))


def test_training_resumes_from_a_checkpoint(trained, tiny_models, bundled_splits, tmp_path):
    _, _, first_dir = trained
    trainer = DialogueSummarizationTrainer(
        str(tiny_models["bart"]), str(tmp_path), max_input_length=256, max_target_length=64
    )
    dataset_dict = trainer.load_and_prepare_data(bundled_splits["train"], val_df=bundled_splits["validation"].head(16))
    args = trainer.get_training_arguments(max_steps=240, eval_steps=120, save_steps=120, **FAST)
    from transformers import TrainerCallback

    class CountSteps(TrainerCallback):
        steps = 0

        def on_step_end(self, args, state, control, **kwargs):
            CountSteps.steps += 1

    hf_trainer = trainer.train(
        dataset_dict,
        training_args=args,
        callbacks=[CountSteps()],
        resume_from_checkpoint=str(first_dir / "checkpoint-120"),
    )
    assert hf_trainer.state.global_step == 240
    assert CountSteps.steps == 120  # only the steps after the checkpoint were trained


def test_training_arguments_map_names_transformers_5_removed(tiny_models, tmp_path):
    trainer = DialogueSummarizationTrainer(str(tiny_models["t5"]), str(tmp_path))
    args = trainer.get_training_arguments(evaluation_strategy="no", no_cuda=True, group_by_length=True)
    assert args.eval_strategy == "no" and args.use_cpu and args.train_sampling_strategy == "group_by_length"
    assert args.learning_rate == 1e-4 and args.per_device_train_batch_size == 4  # T5's defaults
    assert not args.fp16 and not args.bf16  # no CUDA here
    assert trainer.prefix == "summarize: "


@pytest.mark.parametrize(
    ("batch_order", "sampler"), [("random", "RandomSampler"), ("length_grouped", "LengthGroupedSampler")]
)
def test_the_batch_order_setting_reaches_the_trainers_sampler(
    tiny_models, bundled_splits, tmp_path, batch_order, sampler
):
    settings = TrialSettings(model=str(tiny_models["t5"]), batch_size=8, batch_order=batch_order)
    trainer = DialogueSummarizationTrainer.for_settings(settings, str(tmp_path), tensorboard=False)
    train = bundled_splits["train"].head(64)
    hf_trainer = trainer.build_trainer(
        trainer.load_and_prepare_data(train, val_df=train.head(4)), trainer.training_arguments(settings)
    )
    assert type(hf_trainer._get_train_sampler()).__name__ == sampler


def test_the_guides_group_by_length_flag_maps_onto_the_batch_order(tiny_models, tmp_path):
    trainer = DialogueSummarizationTrainer(str(tiny_models["t5"]), str(tmp_path))
    assert trainer.get_training_arguments().train_sampling_strategy == "random"  # the default
    assert trainer.get_training_arguments(group_by_length=False).train_sampling_strategy == "random"
    assert trainer.get_training_arguments(batch_order="length_grouped").train_sampling_strategy == "group_by_length"


@pytest.mark.parametrize(
    ("setting", "value"), [("batch_order", "sorted"), ("mixed_precision", "fp32"), ("mixed_precision", True)]
)
def test_an_unknown_named_setting_is_refused_instead_of_training_with_another(tiny_models, tmp_path, setting, value):
    trainer = DialogueSummarizationTrainer(str(tiny_models["t5"]), str(tmp_path))
    with pytest.raises(UsageError, match=rf"^{setting}={value!r} is not one of .*; pass one of them$"):
        trainer.get_training_arguments(**{setting: value})


def test_memory_levers_reach_the_training_arguments(tiny_models, tmp_path):
    trainer = DialogueSummarizationTrainer(str(tiny_models["t5"]), str(tmp_path))
    args = trainer.get_training_arguments(gradient_checkpointing=True, mixed_precision="bf16")
    assert args.gradient_checkpointing and args.bf16 and not args.fp16
    assert not trainer.get_training_arguments(mixed_precision="no").bf16
    assert not trainer.get_training_arguments(mixed_precision=False).bf16  # as a space file's `no`
    with pytest.raises(UsageError, match="mixed_precision fp16 needs a CUDA GPU.*use auto, bf16 or no"):
        trainer.get_training_arguments(mixed_precision="fp16")  # this machine has no GPU


def test_one_settings_record_maps_onto_the_training_arguments_with_the_familys_defaults(tiny_models, tmp_path):
    trainer = DialogueSummarizationTrainer(str(tiny_models["t5"]), str(tmp_path))
    asked = TrialSettings.from_config({"model": "tiny:t5", "label_smoothing": 0.1, "warmup_ratio": 0.2, "other": 1})
    trained_with = asked.for_family(trainer.family)  # what a trial records
    assert (trained_with.learning_rate, trained_with.batch_size) == (1e-4, 4)  # T5's, where the space gives none
    args = trainer.training_arguments(asked, max_steps=7)
    assert (args.learning_rate, args.per_device_train_batch_size, args.per_device_eval_batch_size) == (1e-4, 4, 8)
    assert (args.label_smoothing_factor, args.warmup_steps, args.max_steps) == (0.1, 0.2, 7)
    assert (args.weight_decay, args.generation_num_beams) == (0.0, 1)  # the search's defaults
    guide = trainer.get_training_arguments()  # the guide's own defaults stay
    assert (guide.weight_decay, guide.warmup_steps, guide.generation_num_beams) == (0.01, 500, 4)
    assert trainer.get_training_arguments(warmup_steps=0.1).warmup_steps == 0.1  # below 1: a ratio


def test_guide_quick_start_runs_as_written(tiny_models, tmp_path):
    # The guide's Quick Start with a tiny local model in place of the hub name and fewer steps.
    loader = DialogueDataLoader(data_dir=str(BUNDLED_DATA))
    train_df, test_df = loader.load_train_test_data()
    trainer = DialogueSummarizationTrainer(model_name=str(tiny_models["bart"]), output_dir=str(tmp_path / "my-model"))
    dataset_dict = trainer.load_and_prepare_data(train_df=train_df.head(200), val_split=0.1)
    assert (len(dataset_dict["train"]), len(dataset_dict["validation"])) == (180, 20)
    trained_trainer = trainer.train(
        dataset_dict,
        training_args=trainer.get_training_arguments(
            num_train_epochs=1, batch_size=16, eval_steps=12, save_steps=12, generation_num_beams=1
        ),
    )
    assert (tmp_path / "my-model" / "final_model" / "config.json").is_file()
    assert "eval_rougeL" in trained_trainer.evaluate()

    one_line = train_model_from_dataframes(
        train_df=train_df.head(64),
        model_name=str(tiny_models["bart"]),
        output_dir=str(tmp_path / "one-line"),
        num_epochs=1,
        batch_size=16,
        generation_num_beams=1,
    )
    assert one_line.state.global_step > 0 and (tmp_path / "one-line" / "final_model").is_dir()


def test_guide_complete_pipeline_example_runs_as_written(tiny_models, tmp_path):
    loader = DialogueDataLoader(data_dir=str(BUNDLED_DATA))
    train_df, test_df = loader.load_train_test_data()
    train_df = train_df.head(160)
    trainer = DialogueSummarizationTrainer(
        model_name=str(tiny_models["bart"]),
        output_dir=str(tmp_path / "dialogue-bart"),
        max_input_length=512,
        max_target_length=128,
        dialogue_format="turns",
    )
    dataset_dict = trainer.load_and_prepare_data(
        train_df=train_df, val_df=None, val_split=0.1, dialogue_col="dialogue", summary_col="summary"
    )
    training_args = trainer.get_training_arguments(
        learning_rate=2e-5,
        num_train_epochs=1,
        batch_size=4,
        gradient_accumulation_steps=2,
        warmup_steps=5,
        eval_steps=9,
        save_steps=9,
        logging_steps=5,
        generation_num_beams=4,
        generation_max_length=16,
    )
    trained_trainer = trainer.train(train_dataset=dataset_dict, training_args=training_args)
    eval_results = trained_trainer.evaluate()
    print(f"ROUGE-1: {eval_results['eval_rouge1']:.4f}")
    print(f"ROUGE-2: {eval_results['eval_rouge2']:.4f}")
    print(f"ROUGE-L: {eval_results['eval_rougeL']:.4f}")
    assert trained_trainer.state.global_step == 18


def test_guide_custom_metrics_recipe_works_with_trainer_metric(tiny_models, tmp_path):
    trainer = DialogueSummarizationTrainer(str(tiny_models["bart"]), str(tmp_path))
    result = trainer.metric.compute(predictions=["Anna meets Tom."], references=["Anna meets Tom."], use_stemmer=True)
    assert result["rougeL"] == 1.0
