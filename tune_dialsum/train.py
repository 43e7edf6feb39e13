"""Fine-tuning seq2seq models on dialogue summarization (the training guide's API).

Nothing here knows about Ray: the search drives this trainer through
transformers callbacks. Preprocessing and metric computation live at module
level so they can be unit-tested and pickled.

Longer than the package's other modules (about 430 lines) because it is the public API that
../shared/spec/TRAINING_GUIDE.md documents: ``DialogueSummarizationTrainer`` with its methods,
``get_training_arguments`` with the guide's argument names (and transformers 5's), and
``train_model_from_dataframes``, kept together where a user of the guide looks for them.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from tune_dialsum.adapters import refuse_training_from
from tune_dialsum.atomic import atomic_write_text
from tune_dialsum.contract import RECIPE_FILE
from tune_dialsum.data.formats import check_dialogue_format, format_dialogue
from tune_dialsum.data.splits import hold_out
from tune_dialsum.errors import UsageError
from tune_dialsum.metrics import RougeMetric, compute_rouge, is_degenerate
from tune_dialsum.models import family_of, load_model_and_tokenizer
from tune_dialsum.space_model import ENUMERATED
from tune_dialsum.space_schema import TrialSettings

logger = logging.getLogger(__name__)

# Argument names that transformers 5 removed or renamed, as the guide still uses them.
RENAMED_TRAINING_ARGUMENTS = {
    "evaluation_strategy": "eval_strategy",
    "no_cuda": "use_cpu",
    "per_device_train_batch_size": "batch_size",
    "warmup_ratio": "warmup_steps",  # transformers 5 reads warmup_steps < 1 as a ratio
}


def preprocess_batch(batch, tokenizer, dialogue_format, prefix, max_input_length, max_target_length):
    """Tokenize a batch of dialogues and summaries; no padding (the collator pads per batch)."""
    inputs = [prefix + format_dialogue(d, dialogue_format) for d in batch["dialogue"]]
    return tokenizer(
        inputs,
        text_target=batch["summary"],
        max_length=max_input_length,
        max_target_length=max_target_length,
        truncation=True,
    )


def decode_for_rouge(tokenizer, predictions, labels):
    """Decode generated ids and label ids into stripped strings.

    ``-100`` marks padding in labels (and in predictions padded across batches);
    it is turned back into the pad id before decoding.
    """
    predictions = np.where(predictions != -100, predictions, tokenizer.pad_token_id)
    labels = np.where(labels != -100, labels, tokenizer.pad_token_id)
    decoded_preds = [p.strip() for p in tokenizer.batch_decode(predictions, skip_special_tokens=True)]
    decoded_labels = [t.strip() for t in tokenizer.batch_decode(labels, skip_special_tokens=True)]
    return decoded_preds, decoded_labels


def rouge_metrics(eval_pred, tokenizer) -> dict[str, float]:
    """``compute_metrics`` for Seq2SeqTrainer: ROUGE-1/2/L/Lsum, mean generated length, and ``degenerate``
    (1.0 where every summary is empty or the same: metrics.is_degenerate)."""
    predictions, labels = eval_pred.predictions, eval_pred.label_ids
    if isinstance(predictions, tuple):
        predictions = predictions[0]
    decoded_preds, decoded_labels = decode_for_rouge(tokenizer, predictions, labels)
    result = compute_rouge(decoded_preds, decoded_labels)
    pad = tokenizer.pad_token_id
    result["degenerate"] = float(is_degenerate(decoded_preds))
    result["gen_len"] = float(np.mean([np.count_nonzero((row != pad) & (row != -100)) for row in predictions]))
    return result


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _check_named_choices(settings: TrialSettings) -> None:
    """A setting that takes one of a few names, checked where the API meets the caller: an unknown name
    would otherwise train quietly with another (``batch_order`` random, ``mixed_precision`` bf16).
    Space files are checked earlier, with the file and key in the message (space_checks.py)."""
    for name in ("batch_order", "mixed_precision"):  # dialogue_format: checked as the data is formatted
        value, allowed = getattr(settings, name), ENUMERATED[name][1]
        if value not in allowed:
            raise UsageError(f"{name}={value!r} is not one of {', '.join(allowed)}; pass one of them")


def precision_flags(choice: str = "auto") -> dict[str, bool]:
    """TrainingArguments' precision flags for ``choice`` (space.MIXED_PRECISION).

    ``auto``: bf16 where the GPU has it, else fp16 on CUDA; full precision on CPU. ``fp16`` needs CUDA;
    ``bf16`` also runs on CPUs (slower than full precision on most).
    """
    if choice == "no" or (choice == "auto" and not _cuda_available()):
        return {"fp16": False, "bf16": False}
    if choice == "fp16" and not _cuda_available():
        raise UsageError("mixed_precision fp16 needs a CUDA GPU and this process has none; use auto, bf16 or no")
    if not _cuda_available():  # bf16 asked for on CPU: transformers wants that said outright
        return {"fp16": False, "bf16": True, "use_cpu": True}
    import torch

    bf16 = choice == "bf16" or torch.cuda.is_bf16_supported()
    return {"fp16": not bf16, "bf16": bf16}


def _save_recipe_callback(recipe: dict):
    """A transformers callback that writes the input recipe into every checkpoint the trainer saves.

    Built in a function, like every subclass of a library class here: importing transformers waits
    until one is needed.
    """
    from transformers import TrainerCallback

    class SaveRecipe(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if checkpoint.is_dir():
                (checkpoint / RECIPE_FILE).write_text(json.dumps(recipe, indent=2))

    return SaveRecipe()


class DialogueSummarizationTrainer:
    """Fine-tune a BART, T5, PEGASUS (or other seq2seq) model on dialogues.

    ``model_name`` is a hub name, a local directory, or ``tiny:FAMILY``; for the latter,
    ``data_dir`` names the data whose train split its tokenizer learns (the project's synthetic
    dialogues when None). ``prefix`` defaults to the family's (``summarize: `` for T5).
    """

    def __init__(
        self,
        model_name: str = "facebook/bart-base",
        output_dir: str = "models/dialogue-summarizer",
        max_input_length: int = 512,
        max_target_length: int = 128,
        dialogue_format: str = "standard",
        prefix: str | None = None,
        trust_remote_code: bool = False,
        tensorboard: bool = True,
        data_dir: str | None = None,
    ) -> None:
        refuse_training_from(model_name)
        self.model_name = model_name
        self.tensorboard = tensorboard
        self.output_dir = str(output_dir)
        self.max_input_length = int(max_input_length)
        self.max_target_length = int(max_target_length)
        self.dialogue_format = check_dialogue_format(dialogue_format)
        self.family = family_of(model_name)
        self.prefix = self.family.prefix if prefix is None else prefix
        self.model, self.tokenizer = load_model_and_tokenizer(
            model_name, trust_remote_code=trust_remote_code, data_dir=data_dir
        )
        self.metric = RougeMetric()

    @property
    def recipe(self) -> dict:
        """How inputs are built for this model: saved with every checkpoint and export."""
        return {
            "model_name": self.model_name,
            "family": self.family.name,
            "dialogue_format": self.dialogue_format,
            "prefix": self.prefix,
            "max_input_length": self.max_input_length,
            "max_target_length": self.max_target_length,
        }

    @classmethod
    def for_settings(cls, settings: TrialSettings, output_dir: str, **options) -> DialogueSummarizationTrainer:
        """The trainer of a settings record: its model, dialogue format and lengths."""
        inputs = {key: getattr(settings, key) for key in ("max_input_length", "max_target_length", "dialogue_format")}
        trainer = cls(model_name=settings.model, output_dir=output_dir, **inputs, **options)
        if settings.adapter == "lora":
            trainer.add_lora(settings)
        return trainer

    def add_lora(self, settings: TrialSettings) -> None:
        """Train LoRA adapters (``settings``' lora_* values) instead of every weight: checkpoints then hold the
        adapter alone, and name the base model it attaches to."""
        from tune_dialsum.adapters import with_lora

        self.model = with_lora(self.model, settings, self.family.name)

    # -- data -----------------------------------------------------------------------
    def tokenize(self, frame: pd.DataFrame, dialogue_col: str = "dialogue", summary_col: str = "summary"):
        """A tokenized ``datasets.Dataset`` from a frame of dialogues and summaries."""
        from datasets import Dataset

        frame = frame[[dialogue_col, summary_col]].rename(columns={dialogue_col: "dialogue", summary_col: "summary"})
        dataset = Dataset.from_pandas(frame.reset_index(drop=True), preserve_index=False)
        preprocess = functools.partial(
            preprocess_batch,
            tokenizer=self.tokenizer,
            dialogue_format=self.dialogue_format,
            prefix=self.prefix,
            max_input_length=self.max_input_length,
            max_target_length=self.max_target_length,
        )
        return dataset.map(preprocess, batched=True, remove_columns=dataset.column_names)

    def load_and_prepare_data(
        self,
        train_df: pd.DataFrame,
        val_df: pd.DataFrame | None = None,
        test_df: pd.DataFrame | None = None,
        val_split: float = 0.1,
        dialogue_col: str = "dialogue",
        summary_col: str = "summary",
        seed: int = 42,
    ):
        """Tokenize the splits into a DatasetDict (``train``, ``validation``, and ``test`` if given).

        With no ``val_df``, ``val_split`` of ``train_df`` is held out (at least one row), the
        same rows a search or ``train`` with this ``seed`` holds out (:func:`data.hold_out`).
        """
        from datasets import DatasetDict

        if val_df is None:
            train_df, val_df = hold_out(train_df, val_split, seed)
        splits = {"train": train_df, "validation": val_df}
        if test_df is not None:
            splits["test"] = test_df
        return DatasetDict({name: self.tokenize(frame, dialogue_col, summary_col) for name, frame in splits.items()})

    # -- training -------------------------------------------------------------------
    def get_training_arguments(
        self,
        learning_rate: float | None = None,
        num_train_epochs: float = 3,
        warmup_steps: float = 500,
        weight_decay: float = 0.01,
        batch_size: int | None = None,
        gradient_accumulation_steps: int = 1,
        eval_steps: int = 500,
        save_steps: int = 500,
        save_total_limit: int | None = 3,
        logging_steps: int = 100,
        generation_max_length: int | None = None,
        generation_num_beams: int = 4,
        gradient_checkpointing: bool = False,
        label_smoothing_factor: float = 0.0,
        mixed_precision: str = "auto",
        **overrides,
    ):
        """The guide's API: Seq2SeqTrainingArguments with the guide's defaults (see :meth:`training_arguments`).

        Any other Seq2SeqTrainingArguments field may be passed as a keyword; names transformers 5
        removed (``evaluation_strategy``, ``no_cuda``) are mapped to today's. ``warmup_steps`` below
        1 is a ratio of all steps.
        """
        for old, new in RENAMED_TRAINING_ARGUMENTS.items():
            if old in overrides:
                value = overrides.pop(old)
                if new == "batch_size":
                    batch_size = value
                elif new == "warmup_steps":
                    warmup_steps = value
                else:
                    overrides[new] = value
        batch_order = overrides.pop("batch_order", TrialSettings.batch_order)
        if "group_by_length" in overrides:  # transformers 4's flag
            batch_order = "length_grouped" if overrides.pop("group_by_length") else "random"
        overrides.pop("logging_dir", None)  # logs always go to output_dir/logs (see train())
        if mixed_precision is False:  # as in a space file, where YAML reads a bare `no` as false
            mixed_precision = "no"
        ratio = 0 < float(warmup_steps) < 1
        settings = TrialSettings(
            model=self.model_name,
            learning_rate=learning_rate,
            dialogue_format=self.dialogue_format,
            max_input_length=self.max_input_length,
            max_target_length=self.max_target_length,
            batch_size=batch_size,
            gradient_accumulation_steps=int(gradient_accumulation_steps),
            batch_order=batch_order,
            num_train_epochs=float(num_train_epochs),
            warmup_steps=0 if ratio else int(warmup_steps),
            warmup_ratio=float(warmup_steps) if ratio else None,
            weight_decay=float(weight_decay),
            label_smoothing=float(label_smoothing_factor),
            generation_num_beams=int(generation_num_beams),
            generation_max_length=generation_max_length,
            lr_scheduler_type=overrides.pop("lr_scheduler_type", TrialSettings.lr_scheduler_type),
            gradient_checkpointing=bool(gradient_checkpointing),
            mixed_precision=mixed_precision,
        )
        run = dict(eval_steps=int(eval_steps), save_steps=int(save_steps), logging_steps=int(logging_steps))
        return self.training_arguments(settings, save_total_limit=save_total_limit, **run, **overrides)

    def training_arguments(self, settings: TrialSettings, **run):
        """The one mapping of a settings record onto Seq2SeqTrainingArguments.

        ``settings`` is what a trial trains with (the family's learning rate and batch size fill in
        what it leaves out: :meth:`TrialSettings.for_family`); ``run`` is how this run evaluates,
        saves and logs, and any other Seq2SeqTrainingArguments field. Mixed precision is on only
        where CUDA is available.
        """
        from transformers import Seq2SeqTrainingArguments

        _check_named_choices(settings)
        settings = settings.for_family(self.family)
        arguments = dict(
            output_dir=self.output_dir,
            learning_rate=settings.learning_rate,
            num_train_epochs=float(settings.num_train_epochs),
            warmup_steps=settings.warmup_ratio or settings.warmup_steps,  # below 1: a ratio (transformers 5)
            weight_decay=settings.weight_decay,
            per_device_train_batch_size=settings.batch_size,
            per_device_eval_batch_size=settings.batch_size * 2,
            gradient_accumulation_steps=settings.gradient_accumulation_steps,
            lr_scheduler_type=settings.lr_scheduler_type,
            eval_strategy="steps",
            save_strategy="steps",
            predict_with_generate=True,
            generation_max_length=int(settings.generation_max_length or self.max_target_length),
            generation_num_beams=settings.generation_num_beams,
            gradient_checkpointing=settings.gradient_checkpointing,
            label_smoothing_factor=settings.label_smoothing,
            # Batches of similar length pad less (0.79x the training time on the bundled bed) but made worse
            # summaries there: -0.011 test ROUGE-L against random batches (worse in 13 of 16 runs), and -0.008
            # visited in random order (12 of 16; BENCHMARKS.md, "Batch order").
            train_sampling_strategy="group_by_length" if settings.batch_order == "length_grouped" else "random",
            report_to="none",  # TensorBoard is attached in train() with our own log directory
            disable_tqdm=True,
            dataloader_pin_memory=_cuda_available(),
            **precision_flags(settings.mixed_precision),
        )
        arguments.update(run)
        return Seq2SeqTrainingArguments(**arguments)

    def compute_metrics(self, eval_pred) -> dict[str, float]:
        return rouge_metrics(eval_pred, self.tokenizer)

    def build_trainer(self, dataset_dict, training_args=None, callbacks=None):
        """The transformers Seq2SeqTrainer that ``train`` runs, for callers that drive it themselves."""
        from transformers import DataCollatorForSeq2Seq, Seq2SeqTrainer

        training_args = training_args or self.get_training_arguments()
        collator = DataCollatorForSeq2Seq(
            self.tokenizer,
            model=self.model,
            padding=True,
            pad_to_multiple_of=8 if training_args.fp16 or training_args.bf16 else None,
        )
        callbacks = [_save_recipe_callback(self.recipe), *(callbacks or []), *self._tensorboard()]
        return Seq2SeqTrainer(
            model=self.model,
            args=training_args,
            train_dataset=dataset_dict["train"],
            eval_dataset=dataset_dict.get("validation"),
            processing_class=self.tokenizer,
            data_collator=collator,
            compute_metrics=self.compute_metrics,
            callbacks=callbacks,
        )

    def _tensorboard(self) -> list:
        if not self.tensorboard or importlib.util.find_spec("tensorboard") is None:
            return []
        from torch.utils.tensorboard import SummaryWriter
        from transformers.integrations import TensorBoardCallback

        return [TensorBoardCallback(tb_writer=SummaryWriter(log_dir=str(Path(self.output_dir) / "logs")))]

    def train(
        self,
        train_dataset=None,
        training_args=None,
        resume_from_checkpoint=None,
        callbacks=None,
        save_final_model: bool = True,
        **legacy,
    ):
        """Train on ``train_dataset`` (the DatasetDict of ``load_and_prepare_data``).

        Saves the final model with its tokenizer, ``training_args.json`` and the
        input recipe to ``output_dir/final_model`` and returns the transformers
        Seq2SeqTrainer, whose ``evaluate()`` reports ``eval_rouge1`` ... ``eval_gen_len``.
        """
        dataset_dict = train_dataset if train_dataset is not None else legacy.pop("dataset_dict", None)
        if dataset_dict is None:
            raise ValueError("train() needs train_dataset: the DatasetDict from load_and_prepare_data()")
        trainer = self.build_trainer(dataset_dict, training_args, callbacks)
        trainer.train(resume_from_checkpoint=resume_from_checkpoint)
        if save_final_model:
            self.save_final_model(trainer)
        return trainer

    def save_final_model(self, trainer) -> Path:
        final_dir = Path(self.output_dir) / "final_model"
        trainer.save_model(str(final_dir))
        self.tokenizer.save_pretrained(str(final_dir))
        (final_dir / "training_args.json").write_text(trainer.args.to_json_string())
        (final_dir / RECIPE_FILE).write_text(json.dumps(self.recipe, indent=2))
        logger.info("final model saved to %s", final_dir)
        return final_dir


def train_model_from_dataframes(
    train_df: pd.DataFrame,
    model_name: str = "facebook/bart-base",
    output_dir: str = "models/dialogue-summarizer",
    val_df: pd.DataFrame | None = None,
    test_df: pd.DataFrame | None = None,
    num_epochs: float = 3,
    batch_size: int | None = None,
    learning_rate: float | None = None,
    max_input_length: int = 512,
    max_target_length: int = 128,
    dialogue_format: str = "standard",
    val_split: float = 0.1,
    **training_kwargs,
):
    """Train in one call: load the model, tokenize the frames, train, save; returns the trainer."""
    trainer = DialogueSummarizationTrainer(
        model_name=model_name,
        output_dir=output_dir,
        max_input_length=max_input_length,
        max_target_length=max_target_length,
        dialogue_format=dialogue_format,
    )
    dataset_dict = trainer.load_and_prepare_data(train_df, val_df=val_df, test_df=test_df, val_split=val_split)
    training_args = trainer.get_training_arguments(
        learning_rate=learning_rate, num_train_epochs=num_epochs, batch_size=batch_size, **training_kwargs
    )
    return trainer.train(train_dataset=dataset_dict, training_args=training_args)


def train_on_directory(
    data_dir: str,
    output_dir: str,
    settings: TrialSettings,
    validation_split: float = 0.1,
    seed: int = 42,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    **run,
) -> dict[str, float]:
    """The ``train`` command: one model trained on a data directory's splits; returns its validation scores.

    The rows are those a search's trials see with the same split, seed and sample counts
    (``training_splits``); ``run`` is how the run evaluates, saves and logs (:meth:`training_arguments`).
    """
    from tune_dialsum.data import DialogueDataLoader, training_splits

    splits = DialogueDataLoader(data_dir).load_splits()
    train_df, val_df = training_splits(splits, validation_split, seed, max_train_samples, max_eval_samples)
    trainer = DialogueSummarizationTrainer.for_settings(settings, output_dir, data_dir=data_dir)
    dataset_dict = trainer.load_and_prepare_data(train_df, val_df=val_df)
    run = {"save_total_limit": 3, **run}  # the guide's: a run of its own keeps its last checkpoints
    trained = trainer.train(dataset_dict, training_args=trainer.training_arguments(settings, seed=seed, **run))
    recipe_file = Path(output_dir) / "final_model" / RECIPE_FILE  # which rows were held out: tune-decoding reads it
    atomic_write_text(recipe_file, json.dumps({**json.loads(recipe_file.read_text()), "data_seed": seed}, indent=2))
    return trained.evaluate()
