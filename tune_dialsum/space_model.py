"""The search space as the search sees it: a validated :class:`SearchSpace` and its Optuna distributions.

space.py reads a file into one (space_parse.py validates it); this module imports neither Ray
nor torch, nor anything that reads a file.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, fields
from typing import Any

from tune_dialsum.adapters import ADAPTERS, LORA_SETTINGS
from tune_dialsum.data.formats import DIALOGUE_FORMATS
from tune_dialsum.models import family_of
from tune_dialsum.space_schema import (
    SECTIONS,
    SETTINGS_SECTIONS,
    TOP_LEVEL,
    CheckpointsSection,
    DataSection,
    DecodingSpace,
    ObjectiveSection,
    ResourcesSection,
    SchedulerSection,
    SelectionSection,
    TrackingSection,
    TrialSettings,
    TrialsSection,
)

logger = logging.getLogger(__name__)

# Every setting a trial takes, with its type: the fields of the one record a trial trains with.
SETTINGS: dict[str, type] = {f.name: f.metadata["kind"] for f in fields(TrialSettings)}
DEFAULT_SETTINGS = {f.name: f.default for f in fields(TrialSettings) if f.default is not None}
MIXED_PRECISION = ("auto", "bf16", "fp16", "no")  # auto: bf16 where the GPU has it, else fp16; none on CPU
BATCH_ORDERS = ("random", "length_grouped")  # how training batches are drawn (train.py says why random)
# Settings that take one of a few names: what an error calls the value, and the names.
ENUMERATED = {
    "mixed_precision": ("precision", MIXED_PRECISION),
    "dialogue_format": ("dialogue format", DIALOGUE_FORMATS),
    "batch_order": ("batch order", BATCH_ORDERS),
    "adapter": ("adapter", ADAPTERS),
}
# ``generate()`` settings the decoding stage searches, with their types.
DECODING_SETTINGS: dict[str, type] = {
    "num_beams": int,
    "length_penalty": float,
    "no_repeat_ngram_size": int,
    "min_new_tokens": int,
    "max_new_tokens": int,
    "repetition_penalty": float,
}
# Settings whose value must be above 0 (the others: at least 0, length_penalty: any).
POSITIVE_SETTINGS = {f.name for f in fields(TrialSettings) if f.metadata["positive"]} | {
    "num_beams",
    "max_new_tokens",
    "repetition_penalty",
}
LENGTH_UNITS = ("words", "tokens")
TRACKING_BACKENDS = ("mlflow",)
DISTRIBUTIONS = {"choice", "uniform", "loguniform", "quniform", "int", "logint", "qint"}
TOP_LEVEL_KEYS = [*TOP_LEVEL, *SECTIONS, *SETTINGS_SECTIONS]


@dataclass(frozen=True)
class Distribution:
    kind: str
    args: tuple

    def suggest(self, trial, name: str):
        """Ask an Optuna trial (or Ray's captor of one) for a value."""
        low, high, *rest = self.args if self.kind != "choice" else (None, None)
        if self.kind == "choice":
            return trial.suggest_categorical(name, list(self.args))
        if self.kind in ("uniform", "loguniform", "quniform"):
            return trial.suggest_float(name, low, high, log=self.kind == "loguniform", step=rest[0] if rest else None)
        return trial.suggest_int(name, low, high, log=self.kind == "logint", step=rest[0] if rest else 1)

    @property
    def bounds(self) -> tuple | None:
        return None if self.kind == "choice" else self.args[:2]


@dataclass(frozen=True)
class SearchSpace:
    """A validated search space; see the module docstring for the file format, space_schema.py for every key."""

    name: str
    source: str
    data: DataSection
    objective: ObjectiveSection  # its mode filled in from the metric
    fixed: dict[str, Any]
    search: dict[str, Distribution]
    per_family: dict[str, dict[str, Distribution]]
    per_adapter: dict[str, dict[str, Distribution]]
    scheduler: SchedulerSection  # grace_period and eval_interval filled in
    trials: TrialsSection  # startup_trials filled in
    resources: ResourcesSection  # both the trial's totals and one worker's share filled in
    checkpoints: CheckpointsSection
    selection: SelectionSection
    storage_path: str
    seed: int
    trust_remote_code: bool = False
    decoding: DecodingSpace | None = None  # None: exported with the decoding trials were scored with
    tracking: TrackingSection | None = None  # None: no experiment tracker
    raw: dict = field(default_factory=dict, repr=False)

    def __setstate__(self, state: dict) -> None:
        # the space an experiment started before per_adapter was pickled with (its searcher's state)
        self.__dict__.update({"per_adapter": {}, **state})

    @property
    def metric(self) -> str:
        return self.objective.metric

    @property
    def mode(self) -> str:
        return self.objective.mode

    # -- sampling -------------------------------------------------------------------
    def define_by_run(self, trial) -> dict[str, Any]:
        """Optuna define-by-run: sample one trial's settings, family- and adapter-specific ranges included.

        A family's (an adapter's) ranges are sampled under their own names (``learning_rate@t5``,
        ``lora_r@lora``) because their bounds differ; the returned dict maps them back to the setting.
        The LoRA settings are sampled only where the adapter is LoRA (None elsewhere).
        """
        config = dict(self.fixed)
        for name in ("model", "adapter"):  # they decide which ranges apply
            if name in self.search:
                config[name] = self.search[name].suggest(trial, name)
        family = family_of(config["model"]).name
        adapter = config.get("adapter", "none")
        family_ranges = self.per_family.get(family, {})
        adapter_ranges = self.per_adapter.get(adapter, {})
        ranges = [
            *(
                (n, d, n)
                for n, d in self.search.items()
                if n not in ("model", "adapter", *family_ranges, *adapter_ranges)
            ),
            *((n, d, f"{n}@{family}") for n, d in family_ranges.items() if n not in adapter_ranges),
            *((n, d, f"{n}@{adapter}") for n, d in adapter_ranges.items()),
        ]
        for name, distribution, label in ranges:
            if name in LORA_SETTINGS and adapter != "lora":
                continue
            config[name] = distribution.suggest(trial, label)
        if adapter != "lora":  # present but empty: Ray's reporters expect every trial to have every column
            config |= dict.fromkeys(LORA_SETTINGS)
        return config

    @property
    def searched_settings(self) -> list[str]:
        blocks = [*self.per_family.values(), *self.per_adapter.values()]
        names = [*self.search, *(n for block in blocks for n in block)]
        return list(dict.fromkeys(names))

    @property
    def adapters(self) -> list[str]:
        """The adapters a trial may train with (``none``: every weight)."""
        return adapters_of(self.search, self.fixed)

    @property
    def models(self) -> list[str]:
        if "model" in self.search:
            return list(self.search["model"].args)
        return [self.fixed["model"]]


def adapters_of(search: dict[str, Distribution], fixed: dict[str, Any]) -> list[str]:
    """The adapters a space's trials may train with: the searched choices, else the fixed one."""
    if "adapter" in search:
        return list(search["adapter"].args)
    return [fixed.get("adapter", "none")]


def default_startup_trials(num_samples: int) -> int:
    """Random trials before TPE models the results: 3 below 64 trials, one in 16 above, at most 10.

    Chosen by replaying recorded curves (BENCHMARKS.md, "Defaults chosen from the replay"): 3 start-up
    trials reached the best configuration sooner than 5, 8 or 10 at 64 trials per search, and than the
    earlier rule's 4 at 16.
    Optuna's default of 10 would leave a search of 8 trials entirely random; fewer than 3 gives TPE
    nothing to split into good and bad.
    """
    return min(10, max(3, num_samples // 16))
