"""The Ray Tune function trainable: one trial = one DialogueSummarizationTrainer run.

The trial only *reports*: after every evaluation it hands Tune the scores and
the checkpoint just saved, and Tune's scheduler decides whether it goes on.
It knows nothing of Optuna or of how the search is set up beyond the
:class:`ExperimentSettings` it is given.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import shutil
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from tune_dialsum.train import RECIPE_FILE, DialogueSummarizationTrainer

TRIAL_CONFIG_FILE = "trial_config.json"
# ExperimentSettings.cache_dir for experiments kept at a URI: each node caches under its own tune_dialsum cache.
NODE_LOCAL = "node-local"
TOKENIZED_CACHE = "tokenized"  # the cache's directory, in the experiment or in a node's tune_dialsum cache
# Scores copied from the transformers evaluation into every Tune report, minus "eval_".
REPORTED_SCORES = ("rouge1", "rouge2", "rougeL", "rougeLsum", "gen_len", "loss")


class TrialDiverged(RuntimeError):
    """The loss became NaN or infinite: more steps cannot help this trial."""


@dataclass(frozen=True)
class ExperimentSettings:
    """What every trial of one experiment shares (the space minus what is sampled)."""

    data_path: str
    dialogue_column: str
    summary_column: str
    id_column: str
    validation_split: float
    max_train_samples: int | None
    max_eval_samples: int | None
    metric: str
    mode: str
    budget_unit: str  # "steps" or "epochs"
    max_budget: int
    eval_interval: int
    seed: int
    trust_remote_code: bool = False
    # Tokenized datasets are shared here by every trial with the same tokenizer, format and lengths
    # (None: not cached; NODE_LOCAL: in the tune_dialsum cache of the node a trial runs on).
    cache_dir: str | None = None

    @property
    def time_attr(self) -> str:
        """The result key that measures a trial's training budget."""
        return "step" if self.budget_unit == "steps" else "epoch"


@functools.lru_cache(maxsize=4)
def _load_splits(data_path, dialogue_column, summary_column, id_column):
    """Read the data once per worker process, not once per trial."""
    from tune_dialsum.data import DialogueDataLoader

    return DialogueDataLoader(data_path, dialogue_column, summary_column, id_column).load_splits()


def training_frames(settings: ExperimentSettings):
    splits = _load_splits(settings.data_path, settings.dialogue_column, settings.summary_column, settings.id_column)
    train_df, val_df = splits["train"], splits["validation"]
    if settings.max_train_samples:
        train_df = train_df.head(settings.max_train_samples)
    if val_df is None:  # hold out part of train, the same rows for every trial
        val_df = train_df.sample(frac=settings.validation_split, random_state=settings.seed)
        train_df = train_df.drop(val_df.index)
    if settings.max_eval_samples:
        val_df = val_df.head(settings.max_eval_samples)
    # Longest first: generation batches of similar length pad less, and a too-long batch fails at once.
    val_df = val_df.iloc[val_df["dialogue"].str.len().argsort()[::-1]]
    return train_df, val_df


def _prepared_datasets(trainer: DialogueSummarizationTrainer, settings: ExperimentSettings):
    """Tokenized train/validation sets, tokenized once per experiment and shared through ``cache_dir``."""
    from datasets import DatasetDict

    if settings.cache_dir is None:
        train_df, val_df = training_frames(settings)
        return trainer.load_and_prepare_data(train_df, val_df=val_df)
    # What decides the tokenized rows: how inputs are built, and which rows are read.
    identity = {
        **trainer.recipe,
        **{
            field: getattr(settings, field)
            for field in (
                "data_path",
                "dialogue_column",
                "summary_column",
                "id_column",
                "validation_split",
                "max_train_samples",
                "max_eval_samples",
                "seed",
            )
        },
    }
    key = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]
    if settings.cache_dir == NODE_LOCAL:
        from tune_dialsum.models import cache_dir

        path = cache_dir() / TOKENIZED_CACHE / key
    else:
        path = Path(settings.cache_dir) / key
    path.parent.mkdir(parents=True, exist_ok=True)
    if (path / "dataset_dict.json").is_file():
        return DatasetDict.load_from_disk(str(path))
    train_df, val_df = training_frames(settings)
    dataset_dict = trainer.load_and_prepare_data(train_df, val_df=val_df)
    staging = path.with_name(f".{key}-{uuid.uuid4().hex}")
    dataset_dict.save_to_disk(str(staging))
    try:
        staging.rename(path)
    except OSError:  # another trial stored the same datasets first
        shutil.rmtree(staging, ignore_errors=True)
    return dataset_dict


def _report_callback(trial_config: dict, settings: ExperimentSettings, recipe: dict):
    import ray
    from ray import tune
    from transformers import TrainerCallback

    class ReportToTune(TrainerCallback):
        """Hands each evaluation and the checkpoint saved right after it to Tune."""

        def __init__(self) -> None:
            self.scores: dict | None = None

        def on_log(self, args, state, control, logs=None, **kwargs):
            loss = (logs or {}).get("loss")
            if loss is not None and not math.isfinite(loss):
                raise TrialDiverged(f"training loss became {loss} at step {state.global_step}; lower the learning rate")

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            self.scores = {key: metrics[f"eval_{key}"] for key in REPORTED_SCORES if f"eval_{key}" in (metrics or {})}
            if not math.isfinite(self.scores.get("loss", 0.0)):
                raise TrialDiverged(f"evaluation loss is {self.scores['loss']} at step {state.global_step}")

        def on_save(self, args, state, control, **kwargs):
            if self.scores is None:
                return
            checkpoint_dir = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            context = tune.get_context()
            snapshot = {
                "trial_id": context.get_trial_id(),
                "trial_name": context.get_trial_name(),
                "experiment": context.get_experiment_name(),
                "config": trial_config,
                "settings": asdict(settings),
                "recipe": recipe,
            }
            (checkpoint_dir / TRIAL_CONFIG_FILE).write_text(json.dumps(snapshot, indent=2, default=str))
            train_losses = [entry["loss"] for entry in state.log_history if "loss" in entry]
            report = {
                **self.scores,
                "eval_loss": self.scores.get("loss"),
                "step": state.global_step,
                "epoch": state.epoch,
                "train_loss": train_losses[-1] if train_losses else float("nan"),
                "devices": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
                "node_id": ray.get_runtime_context().get_node_id(),
            }
            report.pop("loss", None)
            self.scores = None
            tune.report(report, checkpoint=tune.Checkpoint.from_directory(str(checkpoint_dir)))

    return ReportToTune()


def _restore_checkpoint(output_dir: Path) -> str | None:
    """Copy the checkpoint Tune resumes this trial from next to the trainer; None on a fresh start."""
    from ray import tune

    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as source:
        step = json.loads((Path(source) / "trainer_state.json").read_text())["global_step"]
        target = output_dir / f"checkpoint-{step}"
        shutil.copytree(source, target, dirs_exist_ok=True)
    return str(target)


def train_dialsum(config: dict, settings: ExperimentSettings) -> None:
    """Ray Tune function trainable; ``config`` holds one trial's settings (see space.SETTINGS)."""
    import datasets
    import transformers
    from ray import tune

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    # The trainer's own checkpoints are scratch: Tune copies what it keeps into the experiment. Ray
    # starts each trial in a working directory of its session, which it cleans up, so the
    # experiment directory holds only what Tune persisted.
    output_dir = Path.cwd() / f"hf-{tune.get_context().get_trial_id()}"  # a reused worker runs several trials
    trainer = DialogueSummarizationTrainer(
        model_name=config["model"],
        output_dir=str(output_dir),
        max_input_length=config["max_input_length"],
        max_target_length=config["max_target_length"],
        dialogue_format=config["dialogue_format"],
        trust_remote_code=settings.trust_remote_code,
        tensorboard=False,  # Tune logs every report to TensorBoard in the trial directory already
    )
    dataset_dict = _prepared_datasets(trainer, settings)
    by_steps = settings.budget_unit == "steps"
    training_args = trainer.get_training_arguments(
        learning_rate=config.get("learning_rate"),
        batch_size=config.get("batch_size"),
        gradient_accumulation_steps=config["gradient_accumulation_steps"],
        num_train_epochs=config["num_train_epochs"] if by_steps else settings.max_budget,
        max_steps=settings.max_budget if by_steps else -1,
        warmup_steps=config.get("warmup_ratio") or config["warmup_steps"],
        weight_decay=config["weight_decay"],
        label_smoothing_factor=config["label_smoothing"],
        lr_scheduler_type=config["lr_scheduler_type"],
        generation_num_beams=config["generation_num_beams"],
        generation_max_length=config.get("generation_max_length"),
        eval_steps=settings.eval_interval,
        save_steps=settings.eval_interval,
        eval_strategy="steps" if by_steps else "epoch",
        save_strategy="steps" if by_steps else "epoch",
        logging_steps=max(1, settings.eval_interval // 4) if by_steps else 50,
        save_total_limit=1,  # Tune keeps the checkpoints that matter; the trainer's copy is scratch
        seed=settings.seed,
    )
    trainer.train(
        train_dataset=dataset_dict,
        training_args=training_args,
        resume_from_checkpoint=_restore_checkpoint(output_dir),
        callbacks=[_report_callback(config, settings, trainer.recipe)],
        save_final_model=False,  # the checkpoints Tune persisted are the results; nothing else is read
    )


__all__ = ["ExperimentSettings", "NODE_LOCAL", "RECIPE_FILE", "TRIAL_CONFIG_FILE", "TrialDiverged", "train_dialsum"]
