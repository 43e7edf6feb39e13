"""The Ray Tune function trainable: one trial = one DialogueSummarizationTrainer run.

The trial only *reports*: after every evaluation it hands Tune the scores and
the checkpoint just saved, and Tune's scheduler decides whether it goes on.
It knows nothing of Optuna or of how the search is set up beyond the
:class:`ExperimentContext` it is given.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import shutil
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from tune_dialsum import locations
from tune_dialsum.adapters import parameter_counts, without_unused
from tune_dialsum.atomic import atomic_write_text
from tune_dialsum.contract import (
    REPORTED_SCORES,
    TRAINER_STATE_FILE,
    TRIAL_CONFIG_FILE,
    VALIDATION_SCORES_FILE,
    budget_trained,
)
from tune_dialsum.errors import one_line
from tune_dialsum.experiment_context import ExperimentContext
from tune_dialsum.generation import trial_decoding
from tune_dialsum.retry import NotRetryable, TrialDiverged, is_retryable, not_retryable_marker, record_not_retryable
from tune_dialsum.rungs import best_score, rung_report
from tune_dialsum.scoring import score_model
from tune_dialsum.space_schema import TrialSettings
from tune_dialsum.train import DialogueSummarizationTrainer
from tune_dialsum.trial_data import prepared_datasets
from tune_dialsum.worker_memory import memory_in_use, release_memory, resident_memory_mb

# The name (and module) that tuner.pkl files of experiments started before the rename hold.
ExperimentSettings = ExperimentContext

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrialRun:
    """Which trial a training process works for, where it resumes from, and how it reports."""

    trial: dict  # trial_id, trial_name, experiment: recorded in every checkpoint
    publish: Callable[[dict, str], None]  # (report, checkpoint directory), after each evaluation
    resume_from: object = None  # the Tune checkpoint a retried or resumed trial continues from
    # score the last checkpoint on all of validation before reporting it (_score_last_checkpoint)
    scores_last_checkpoint: bool = False


def _report_to_tune_callback(
    trial_config: dict,
    context: ExperimentContext,
    recipe: dict,
    samples_per_step: int,
    rss_at_start: float,
    run: TrialRun,
    parameters: dict[str, int],
):
    import ray
    from transformers import TrainerCallback

    class ReportToTune(TrainerCallback):
        """Hands each evaluation and the checkpoint saved right after it to Tune (rank 0's, where data-parallel)."""

        def __init__(self) -> None:
            self.scores: dict | None = None
            self.batches_per_epoch = 0

        def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
            # this process's share of the data: with N workers each sampler yields 1/N of the batches
            self.batches_per_epoch = len(train_dataloader) if train_dataloader is not None else 0

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
            if state.is_world_process_zero:
                snapshot = {
                    **run.trial,
                    "config": trial_config,
                    "settings": asdict(context),
                    "recipe": recipe,
                    "samples_per_step": samples_per_step,
                    "world_size": args.world_size,
                    "per_device_train_batch_size": args.per_device_train_batch_size,
                    "gradient_accumulation_steps": args.gradient_accumulation_steps,
                    **parameters,
                }
                (checkpoint_dir / TRIAL_CONFIG_FILE).write_text(json.dumps(snapshot, indent=2, default=str))
                if run.scores_last_checkpoint and state.global_step >= state.max_steps:
                    _score_last_checkpoint(checkpoint_dir, trial_config, context, kwargs.get("optimizer"))
            train_losses = [entry["loss"] for entry in state.log_history if "loss" in entry]
            report = {
                **self.scores,
                "eval_loss": self.scores.get("loss"),
                context.ranked_by: best_score(state.log_history, context.objective.metric, context.objective.mode),
                "step": state.global_step,
                "epoch": state.epoch,
                "samples": state.global_step * samples_per_step,
                "train_loss": train_losses[-1] if train_losses else float("nan"),
                "world_size": args.world_size,
                "devices": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
                "node_id": ray.get_runtime_context().get_node_id(),
                "rss_at_start_mb": round(rss_at_start, 1),  # what earlier trials on this worker left behind
                **memory_in_use(),
                **parameters,  # how many weights train, of how many (a LoRA trial: a small share)
            }
            if args.world_size > 1:  # what every worker trained with, seen from rank 0
                report["workers"] = _gather_from_workers(
                    {
                        "rank": args.process_index,
                        "node_id": report["node_id"],
                        "learning_rate": args.learning_rate,
                        "batches_per_epoch": self.batches_per_epoch,
                    }
                )
            report |= rung_report(state.log_history, report[context.time_attr], context.scheduler, context.objective)
            report.pop("loss", None)
            self.scores = None
            run.publish(report, str(checkpoint_dir))

    return ReportToTune()


def _score_last_checkpoint(checkpoint_dir: Path, trial_config: dict, context: ExperimentContext, optimizer) -> None:
    """The trial's last checkpoint scored on all of validation, into ``VALIDATION_SCORES_FILE``.

    The search re-scores its best checkpoints there after the trials (selection.py), and under ASHA a
    trial that trained its whole budget is most often among them (10 of 16 in the five bundled searches
    of BENCHMARKS.md, 2026-12-07; each of the other 6 cost a decoding, about 2 s of a slot). Scored here,
    in a process that has torch, the model's code and the data loaded, it costs the decoding alone;
    scored by the search, the last trial's checkpoint waited for a new process (about 5 of the 8 s between
    the last report and the export there). On a GPU the model is loaded a second time for it, beside the
    one training: the optimizer's state, saved in the checkpoint and needed no more, is let go first. A
    failure costs nothing but that: the file says so (no scores), and the search scores the checkpoint
    itself. (The file is written either way: a trial retried after a crash may write its checkpoint where
    an earlier attempt wrote one, and Tune's copy would keep that attempt's file beside the new weights.)
    """
    if optimizer is not None:
        optimizer.state.clear()
        release_memory()
    decoding = trial_decoding(trial_config)
    try:
        scores = score_model(str(checkpoint_dir), context, "validation", decoding, per_example=True)
    except Exception as err:  # noqa: BLE001 (the report must go on; the re-scoring scores it instead)
        logger.warning(
            "scoring %s on all of validation failed (%s); the search will", checkpoint_dir.name, one_line(err)
        )
        scores = None
    atomic_write_text(checkpoint_dir / VALIDATION_SCORES_FILE, json.dumps({"decoding": decoding, "scores": scores}))


def _gather_from_workers(item: dict) -> list[dict]:
    """``item`` from every rank, in rank order (a collective: every rank calls it at the same point)."""
    import torch.distributed as dist

    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, item)
    return gathered


def _distributed_arguments() -> dict:
    """TrainingArguments for a process of a data-parallel trial (none outside one).

    Without CUDA, accelerate sees no distributed setup unless told ``use_cpu``: every worker would
    then train alone on all the data, with only a warning.
    """
    import torch

    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return {}
    return {} if torch.cuda.is_available() else {"use_cpu": True, "ddp_backend": "gloo"}


def _evaluate_every_samples(interval: int, samples_per_step: int):
    """Evaluate (and save) each time the examples seen cross a multiple of ``interval``, and at the end."""
    from transformers import TrainerCallback

    class EvaluateEverySamples(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            seen, before = state.global_step * samples_per_step, (state.global_step - 1) * samples_per_step
            if seen // interval > before // interval or state.global_step >= state.max_steps:
                control.should_evaluate = control.should_save = True
            return control

    return EvaluateEverySamples()


def _trained(checkpoint_dir: str, unit: str, samples_per_step: int) -> float:
    """How far a checkpoint had trained, in the scheduler's budget unit."""
    state = json.loads((Path(checkpoint_dir) / TRAINER_STATE_FILE).read_text())
    return budget_trained(unit, state["global_step"], state["epoch"], samples_per_step)


def _restore_checkpoint(checkpoint, output_dir: Path) -> str | None:
    """Copy the Tune checkpoint a trial resumes from next to the trainer; None on a fresh start."""
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as source:
        step = json.loads((Path(source) / TRAINER_STATE_FILE).read_text())["global_step"]
        target = output_dir / f"checkpoint-{step}"
        shutil.copytree(source, target, dirs_exist_ok=True)
    return str(target)


def train_dialsum(config: dict, context: ExperimentContext) -> None:
    """Ray Tune function trainable; ``config`` holds one trial's settings (see space.SETTINGS).

    Whatever way the trial ends (finished, stopped by the scheduler, failed), its scratch directory is
    removed and its memory released; an error another attempt cannot fix is recorded so that Ray's
    retry of the trial ends at once with it.
    """
    from ray import tune

    tune_context = tune.get_context()
    trial_id = tune_context.get_trial_id()
    marker = not_retryable_marker(context, trial_id)
    earlier = locations.read_text(marker) if marker else None
    if earlier:
        raise NotRetryable(f"{json.loads(earlier)['error']} (not retried: another attempt would fail the same way)")
    trial = {
        "trial_id": trial_id,
        "trial_name": tune_context.get_trial_name(),
        "experiment": tune_context.get_experiment_name(),
    }
    # The trainer's own checkpoints are scratch: Tune copies what it keeps into the experiment. A
    # reused worker runs several trials, each in its own working directory of Ray's session.
    output_dir = Path.cwd() / f"hf-{trial_id}"
    try:
        if context.resources.data_parallel:
            _train_data_parallel(config, context, trial, output_dir)
        else:
            run = TrialRun(
                trial,
                publish=_report_to_tune,
                resume_from=tune.get_checkpoint(),
                scores_last_checkpoint=context.trials_score_last_checkpoint,
            )
            train_one(config, context, output_dir, run)
    except BaseException as err:  # SystemExit too: that is how Tune ends a trial its scheduler stopped
        if marker and isinstance(err, Exception) and not is_retryable(err):
            record_not_retryable(marker, err)
        # The traceback holds the trainer's frames, and through them the model and optimizer: let go
        # of them, or nothing below can free that memory while the exception propagates.
        traceback.clear_frames(err.__traceback__)
        raise
    finally:
        shutil.rmtree(output_dir, ignore_errors=True)
        release_memory()


def _report_to_tune(report: dict, checkpoint_dir: str) -> None:
    from ray import tune

    tune.report(report, checkpoint=tune.Checkpoint.from_directory(checkpoint_dir))


def _train_data_parallel(config: dict, context: ExperimentContext, trial: dict, output_dir: Path) -> None:
    """This trial's training on ``settings.resources.workers_per_trial`` Ray Train workers, reported by rank 0.

    Every worker trains with this trial's ``config`` (sampled once, by this driver's searcher) and
    keeps its scratch in ``output_dir/rank-N`` (on its own node where the workers are spread).
    """
    from ray import tune

    from tune_dialsum.contract import TRAIN_RUNS_DIR
    from tune_dialsum.data_parallel import Workers, new_run_name, run_data_parallel

    process = functools.partial(_train_worker, config, context, trial, output_dir, tune.get_checkpoint())
    workers = Workers(
        context.resources.workers_per_trial, context.resources.cpus_per_worker, context.resources.gpus_per_worker
    )
    staging = locations.join(context.experiment_location or str(output_dir), TRAIN_RUNS_DIR)
    run_name = new_run_name(trial["trial_id"])
    try:
        run_data_parallel(process, workers, run_name, staging, is_retryable)
    finally:
        locations.delete_tree(locations.join(staging, run_name))


def _train_worker(config, settings, trial, output_dir: Path, resume_from, rank: int, publish) -> None:
    """One worker of a data-parallel trial (see :func:`_train_data_parallel`)."""
    rank_dir = output_dir / f"rank-{rank}"
    try:
        train_one(config, settings, rank_dir, TrialRun(trial, publish=publish, resume_from=resume_from))
    finally:
        shutil.rmtree(rank_dir, ignore_errors=True)
        release_memory()


def train_one(config: dict, context: ExperimentContext, output_dir: Path, run: TrialRun) -> None:
    """One training run of ``config`` to the scheduler's budget, reporting through ``run`` (a trial, or a refit)."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    rss_at_start = resident_memory_mb()
    # before the model is built: a LoRA adapter's initial weights are drawn then, before the Trainer seeds
    transformers.set_seed(context.seed)
    asked = TrialSettings.from_config(config)
    trainer = DialogueSummarizationTrainer.for_settings(
        asked,
        str(output_dir),
        trust_remote_code=context.trust_remote_code,
        tensorboard=False,  # Tune logs every report to TensorBoard in the trial directory already
        data_dir=context.data.path,
    )
    dataset_dict = prepared_datasets(trainer, context)
    unit = context.scheduler.budget_unit
    interval = context.scheduler.eval_interval
    strategy = {"steps": "steps", "epochs": "epoch", "samples": "no"}[unit]  # samples: EvaluateEverySamples
    trained_with = asked.for_family(trainer.family)
    if unit == "epochs":  # the scheduler's budget bounds the run, not the setting
        trained_with = dataclasses.replace(trained_with, num_train_epochs=float(context.scheduler.max_budget))
    training_args = trainer.training_arguments(
        trained_with,
        max_steps=context.scheduler.max_budget if unit == "steps" else -1,
        eval_steps=interval,  # read in steps mode only
        save_steps=interval,
        eval_strategy=strategy,
        save_strategy=strategy,
        logging_steps=max(1, interval // 4) if unit == "steps" else 50,
        save_total_limit=1,  # Tune keeps the checkpoints that matter; the trainer's copy is scratch
        seed=context.seed,
        **_distributed_arguments(),
    )
    # train_batch_size: per device x the GPUs one process drives (torch's DataParallel); world_size: processes
    samples_per_step = (
        training_args.train_batch_size * training_args.gradient_accumulation_steps * training_args.world_size
    )
    # recorded: every value the trial trained with, the family's defaults included (LoRA's only in a LoRA trial)
    recorded = without_unused({**config, **asdict(trained_with)})
    parameters = parameter_counts(trainer.model)
    callbacks = [
        _report_to_tune_callback(recorded, context, trainer.recipe, samples_per_step, rss_at_start, run, parameters)
    ]
    if unit == "samples":
        training_args.max_steps = math.ceil(context.scheduler.max_budget / samples_per_step)
        training_args.logging_steps = max(1, interval // samples_per_step // 4)
        callbacks.append(_evaluate_every_samples(interval, samples_per_step))
    resume_from = _restore_checkpoint(run.resume_from, output_dir)
    if resume_from and _trained(resume_from, unit, samples_per_step) >= context.scheduler.max_budget:
        # It reported its last evaluation, then the driver died before Tune saved that: resumed, it has
        # nothing left to train (transformers would train one more step and report it again)
        logger.info("trial %s had trained its whole budget before the search stopped", run.trial["trial_id"])
        return
    trainer.train(
        train_dataset=dataset_dict,
        training_args=training_args,
        resume_from_checkpoint=resume_from,
        callbacks=callbacks,
        save_final_model=False,  # the checkpoints Tune persisted are the results; nothing else is read
    )
