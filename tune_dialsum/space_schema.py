"""What a space file may hold: each section a frozen dataclass, each key a field with its default and help.

The fields are the one list of allowed keys (space.py refuses any other), the defaults a search
runs with, and the reference ``python -m tune_dialsum space-keys`` prints (the README's table is
checked against it). Imports nothing heavy: the trainer, the search and the CLI all read it.

:class:`TrialSettings` is the record one trial trains with: its field names are the names a
space uses under ``fixed``, ``search``, ``per_family`` and ``per_adapter``, and train.py maps it once onto
transformers' ``Seq2SeqTrainingArguments``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

REQUIRED = "(required)"


def key(default: Any, help: str, kind: type | None = None, name: str | None = None, positive: bool = False):
    """A field of a section: its default, a one-line help, its value type, its YAML key where nested, and
    whether a value must be above 0 (else at least 0)."""
    return field(default=default, metadata={"help": help, "kind": kind, "key": name, "positive": positive})


@dataclass(frozen=True)
class TrialSettings:
    """What one trial trains with: the settings ``fixed`` holds and ``search``/``per_family`` sample.

    The search's defaults are these fields'; the guide's ``get_training_arguments`` keeps its own
    documented ones (``warmup_steps`` 500, ``weight_decay`` 0.01, 4 beams), the command ``train`` too.
    """

    model: str | None = key(None, "hub name, local directory or tiny:FAMILY (bart, t5, pegasus) " + REQUIRED, str)
    learning_rate: float | None = key(None, "peak learning rate; none: the model family's", float, positive=True)
    dialogue_format: str = key("standard", "how turns are written: standard, turns or compact", str)
    max_input_length: int = key(512, "dialogue tokens kept (the rest is truncated)", int, positive=True)
    max_target_length: int = key(128, "summary tokens kept in training", int, positive=True)
    batch_size: int | None = key(None, "examples per device per step; none: the model family's", int, positive=True)
    gradient_accumulation_steps: int = key(1, "steps whose gradients add up to one update", int, positive=True)
    batch_order: str = key(
        "random",
        "random (batches drawn at random) or length_grouped (batches of similar length: less padding, faster, "
        "and on the bundled bed worse summaries)",
        str,
    )
    num_train_epochs: float = key(
        3.0, "epochs to train (in a search, the scheduler's max_budget stops a trial first)", float, positive=True
    )
    warmup_steps: int = key(0, "linear warm-up steps", int)
    warmup_ratio: float | None = key(None, "warm-up as a fraction of all steps; wins over warmup_steps", float)
    weight_decay: float = key(0.0, "AdamW weight decay", float)
    label_smoothing: float = key(0.0, "label smoothing factor, below 1", float)
    generation_num_beams: int = key(
        1,
        "beams when the model is scored (greedy: cheap); a search's decoding stage tunes it",
        int,
        positive=True,
    )
    generation_max_length: int | None = key(
        None,
        "longest generated summary; none: max_target_length",
        int,
        positive=True,
    )
    lr_scheduler_type: str = key("linear", "transformers' learning-rate schedule", str)
    gradient_checkpointing: bool = key(False, "recompute activations: less memory, more time", bool)
    mixed_precision: str = key("auto", "auto (bf16 or fp16 on CUDA, none on CPU), bf16, fp16 or no", str)
    adapter: str = key("none", "none (every weight trains) or lora (low-rank adapters; needs tune_dialsum[peft])", str)
    lora_r: int = key(8, "LoRA's rank (adapter: lora)", int, positive=True)
    lora_alpha: float = key(
        16.0, "LoRA's scale: updates are multiplied by alpha / r (adapter: lora)", float, positive=True
    )
    lora_dropout: float = key(0.05, "dropout on LoRA's input, below 1 (adapter: lora)", float)
    lora_target_modules: str | None = key(
        None,
        "layers LoRA wraps, comma-separated (q_proj,v_proj), or all-linear; none: the family's query and value "
        "projections (adapter: lora)",
        str,
    )

    @classmethod
    def from_config(cls, config: dict) -> TrialSettings:
        """A trial's config (Tune's, or a recorded one) as a record; keys that are not settings are ignored."""
        return cls(**{f.name: config[f.name] for f in dataclasses.fields(cls) if f.name in config})

    def for_family(self, family) -> TrialSettings:
        """The settings with the family's learning rate and batch size where none was given."""
        return dataclasses.replace(
            self,
            learning_rate=float(self.learning_rate or family.learning_rate),
            batch_size=int(self.batch_size or family.batch_size),
        )


@dataclass(frozen=True)
class DataSection:
    """data: the dialogues, and how much of them a trial sees."""

    path: str = key("data", "directory of train/validation(/test) JSON Lines or CSV files", str)
    dialogue_column: str = key("dialogue", "column holding the dialogue", str)
    summary_column: str = key("summary", "column holding the reference summary", str)
    id_column: str = key("id", "column holding the example's id", str)
    validation_split: float = key(0.1, "share of train held out where the data has no validation split", float)
    max_train_samples: int | None = key(None, "train on the first N examples; none: all", int)
    max_eval_samples: int | None = key(
        None, "score (and rank trials) on the first N validation examples; none: all", int
    )


@dataclass(frozen=True)
class ObjectiveSection:
    """objective: the score trials are ranked on."""

    metric: str = key("rougeL", "rouge1, rouge2, rougeL, rougeLsum or eval_loss", str)
    mode: str | None = key(None, "max or min; none: the metric's direction", str)


@dataclass(frozen=True)
class SchedulerSection:
    """scheduler: how long trials train and when ASHA stops them."""

    type: str = key("asha", "asha (stop weak trials early) or fifo (every trial to max_budget)", str)
    budget_unit: str = key("steps", "samples (examples seen), steps or epochs", str)
    max_budget: int | None = key(None, "the most budget_units a trial trains " + REQUIRED, int)
    grace_period: int | None = key(None, "budget before ASHA may stop a trial; none: eval_interval", int)
    reduction_factor: float = key(3.0, "ASHA keeps 1 in reduction_factor trials at each rung", float)
    eval_interval: int | None = key(None, "budget between evaluations; none: max_budget // 4", int)
    rung_metric: str = key(
        "objective", "what ASHA's rungs compare: objective, eval_loss, or auto (loss, the objective at the last)", str
    )

    @property
    def rungs(self) -> list[float]:
        """ASHA's milestones below max_budget, lowest first (Ray's formula: grace_period x factor^k)."""
        import math

        if self.type != "asha" or self.grace_period is None or self.max_budget is None:
            return []
        count = int(math.log(self.max_budget / self.grace_period) / math.log(self.reduction_factor) + 1)
        milestones = (self.grace_period * self.reduction_factor**k for k in range(count))
        return [m for m in milestones if m < self.max_budget]


@dataclass(frozen=True)
class TrialsSection:
    """trials: how many, how many at once, and how they are sampled."""

    num_samples: int = key(8, "trials in the search", int)
    max_concurrent: int | None = key(None, "trials at once; none: as many as the cluster fits", int)
    time_budget_s: float | None = key(
        None,
        "after this many seconds of trials, stop them (and start none) and choose, test and export from what they "
        "reached; none: no limit",
        float,
    )
    sampler: str = key("tpe", "tpe or random", str)
    startup_trials: int | None = key(None, "random trials before TPE; none: min(10, max(3, num_samples // 16))", int)


@dataclass(frozen=True)
class ResourcesSection:
    """resources: one process per trial (``*_per_trial``) or ``workers_per_trial`` data-parallel workers.

    Parsed, it holds both views: a trial's totals (what the cluster must have room for) and one
    worker's share (a scoring task's too). ``*_per_trial`` beside ``workers_per_trial`` is the total,
    split evenly.
    """

    cpus_per_trial: float = key(1.0, "CPUs for one trial (all its workers)", float)
    gpus_per_trial: float = key(0.0, "GPUs for one trial; a fraction shares a GPU between trials", float)
    workers_per_trial: int = key(1, "data-parallel workers per trial (Ray Train); 1: one process", int)
    cpus_per_worker: float | None = key(None, "CPUs per worker; none: cpus_per_trial / workers_per_trial", float)
    gpus_per_worker: float | None = key(None, "GPUs per worker, whole above 1; none: the trial's share", float)

    @property
    def data_parallel(self) -> bool:
        """Each trial trains over several workers (Ray Train) rather than in one process."""
        return self.workers_per_trial > 1


@dataclass(frozen=True)
class CheckpointsSection:
    """checkpoints: what each trial keeps."""

    keep: int = key(2, "best checkpoints kept per trial", int)


@dataclass(frozen=True)
class SelectionSection:
    """selection: how the exported model is chosen."""

    top_k: int = key(3, "checkpoints best on the subset, re-scored on all of validation", int)
    refit: bool = key(
        False, "train the chosen settings anew to max_budget; export that model where it scores at least as well", bool
    )


@dataclass(frozen=True)
class TrackingSection:
    """tracking: an experiment tracker beside Ray's results (optional)."""

    backend: str | None = key(None, "mlflow or none; a tracking section without it: mlflow", str)
    uri: str | None = key(
        None, "tracking server or local path; none: MLFLOW_TRACKING_URI, else a store in the experiment", str
    )


@dataclass(frozen=True)
class DecodingSpace:
    """decoding: ``generate()`` settings searched on the best trained checkpoints, without retraining."""

    search: dict = key(None, "generate() settings and their distributions (required in a decoding section)")
    num_samples: int = key(12, "decoding trials", int)
    top_k_checkpoints: int = key(1, "checkpoints decoded, best by full-validation score", int)
    max_eval_samples: int | None = key(None, "decode the first N validation examples; none: all", int)
    max_mean_length: float | None = key(
        None, "a decoding writing longer on average is not chosen", float, "constraints.max_mean_length"
    )
    length_unit: str = key("words", "words or tokens", str, "constraints.length_unit")
    max_seconds_per_summary: float | None = key(
        None, "a slower decoding is not chosen", float, "constraints.max_seconds_per_summary"
    )

    @property
    def constraints(self) -> dict:
        return {
            f"mean_{self.length_unit}": self.max_mean_length,
            "seconds_per_summary": self.max_seconds_per_summary,
        }

    def describe_constraints(self) -> str:
        parts = []
        if self.max_mean_length is not None:
            parts.append(f"mean length at most {self.max_mean_length:g} {self.length_unit}")
        if self.max_seconds_per_summary is not None:
            parts.append(f"at most {self.max_seconds_per_summary:g} s per summary")
        return " and ".join(parts)


# The top-level keys that are values, not sections.
TOP_LEVEL = {
    "name": ("the file's stem", "experiment name: a directory under storage_path"),
    "description": (None, "free text, kept with the experiment"),
    "storage_path": ("ray_results", "where experiments are kept: a directory or a URI (s3://, gs://)"),
    "seed": (0, "seeds the sampler, the data split and every trial"),
    "trust_remote_code": (False, "let transformers run a model's own code"),
}
SECTIONS: dict[str, type] = {
    "data": DataSection,
    "objective": ObjectiveSection,
    "scheduler": SchedulerSection,
    "trials": TrialsSection,
    "resources": ResourcesSection,
    "checkpoints": CheckpointsSection,
    "selection": SelectionSection,
    "tracking": TrackingSection,
    "decoding": DecodingSpace,
}
# Sections that hold settings (fields of TrialSettings) rather than keys of their own.
SETTINGS_SECTIONS = {
    "fixed": "SETTING: value, the same for every trial",
    "search": "SETTING: DISTRIBUTION, sampled by Optuna",
    "per_family": "FAMILY (bart, t5, pegasus): {SETTING: DISTRIBUTION}, once the model is sampled",
    "per_adapter": "ADAPTER (none, lora): {SETTING: DISTRIBUTION}, once the adapter is sampled (LoRA wants higher rates)",
}


def spelled(f: dataclasses.Field) -> str:
    """A field's key as a space file spells it (``constraints.length_unit`` where nested)."""
    return f.metadata.get("key") or f.name


def section_keys(section: type) -> list[str]:
    """The keys a section takes."""
    return [spelled(f) for f in dataclasses.fields(section)]


def space_keys() -> list[tuple[str, Any, str]]:
    """Every key a space file takes: ``(dotted key, default, help)``, in the order the file usually has them."""
    rows: list[tuple[str, Any, str]] = [(name, default, help) for name, (default, help) in TOP_LEVEL.items()]
    for name, section in SECTIONS.items():
        for f in dataclasses.fields(section):
            rows.append((f"{name}.{spelled(f)}", f.default, f.metadata["help"]))
    for name, help in SETTINGS_SECTIONS.items():
        rows.append((name, None, help))
    for f in dataclasses.fields(TrialSettings):
        rows.append((f"SETTING {f.name}", f.default, f.metadata["help"]))
    return rows


def format_space_keys() -> str:
    """``space-keys``: every key with its default and help, as a table that reads in a terminal and in Markdown."""
    lines = ["| key | default | what it is |", "|---|---|---|"]
    for name, default, help in space_keys():
        shown = "" if default is None else str(default).lower() if isinstance(default, bool) else str(default)
        lines.append(f"| `{name}` | {shown} | {help} |")
    return "\n".join(lines)
