"""Reading typed values out of a raw space mapping, with one-line errors naming the file and key."""

from __future__ import annotations

import logging
import math

from tune_dialsum.adapters import target_module_names
from tune_dialsum.errors import SpaceError
from tune_dialsum.models import FAMILIES
from tune_dialsum.space_model import (
    DECODING_SETTINGS,
    DISTRIBUTIONS,
    ENUMERATED,
    POSITIVE_SETTINGS,
    SETTINGS,
    Distribution,
)
from tune_dialsum.space_schema import SchedulerSection

logger = logging.getLogger(__name__)

# A trial's total and a worker's share name the same resource: setting one replaces the other.
OTHER_SPELLING = {
    f"{kind}_per_{a}": f"{kind}_per_{b}"
    for kind in ("cpus", "gpus")
    for a, b in (("trial", "worker"), ("worker", "trial"))
}


class Checker:
    """Reads typed values out of the raw mapping, naming the file and key in every error."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, message: str):
        raise SpaceError(f"{self.source}: {key}: {message}")

    def section(self, raw: dict, key: str, allowed: set[str] | None) -> dict:
        value = raw.get(key) or {}
        if not isinstance(value, dict):
            self.fail(key, f"must be a mapping, not {type(value).__name__}")
        if allowed is not None:
            for name in value:
                if name not in allowed:
                    self.fail(f"{key}.{name}", f"unknown key; valid keys: {', '.join(sorted(allowed))}")
        return value

    def number(self, key: str, value, kind: type, minimum=None, strict: bool = False):
        # YAML 1.1 reads 1e-5 (no dot) as a string: coerce explicitly.
        if isinstance(value, bool):
            self.fail(key, f"expected a number but got {value!r}")
        try:
            number = kind(value)
        except (TypeError, ValueError):
            self.fail(key, f"expected {'an integer' if kind is int else 'a number'} but got {value!r}")
        if kind is int and float(value) != number:
            self.fail(key, f"expected an integer but got {value!r}")
        if kind is float and not math.isfinite(number):
            self.fail(key, f"expected a finite number but got {value!r}")
        if minimum is not None and (number <= minimum if strict else number < minimum):
            self.fail(key, f"must be {'greater than' if strict else 'at least'} {minimum} but got {value!r}")
        return number

    def setting(self, key: str, name: str, value):
        kind = SETTINGS.get(name) or DECODING_SETTINGS[name]
        if kind is bool:
            if not isinstance(value, bool):
                self.fail(key, f"expected true or false but got {value!r}")
            return value
        if name == "mixed_precision" and value is False:
            value = "no"  # YAML 1.1 reads a bare `no` as false
        if kind is str:
            if not isinstance(value, str) or not value:
                self.fail(key, f"expected a non-empty string but got {value!r}")
            if name in ENUMERATED and value not in ENUMERATED[name][1]:
                what, names = ENUMERATED[name]
                self.fail(key, f"unknown {what} {value!r}; use one of {', '.join(names)}")
            if name == "lora_target_modules" and not target_module_names(value):
                self.fail(key, f"expected module names such as q_proj,v_proj (or all-linear) but got {value!r}")
            if name == "model" and value.startswith("tiny:") and value[5:] not in FAMILIES:
                self.fail(key, f"unknown model family {value[5:]!r} in {value!r}; use tiny:{'|tiny:'.join(FAMILIES)}")
            return value
        if name == "length_penalty":  # an exponent on the length: negative favours short summaries
            return self.number(key, value, kind)
        number = self.number(key, value, kind, minimum=0, strict=name in POSITIVE_SETTINGS)
        if name in ("warmup_ratio", "label_smoothing", "lora_dropout") and number >= 1:
            self.fail(key, f"{name} is a fraction: it must be below 1 but got {value!r}")
        return number

    def distribution(self, key: str, name: str, spec) -> Distribution:
        if not isinstance(spec, dict) or len(spec) != 1:
            self.fail(
                key, f"expected one distribution such as {{choice: [...]}} or {{loguniform: [low, high]}}, got {spec!r}"
            )
        kind, args = next(iter(spec.items()))
        if kind not in DISTRIBUTIONS:
            self.fail(key, f"unknown distribution {kind!r}; use one of {', '.join(sorted(DISTRIBUTIONS))}")
        if not isinstance(args, list):
            self.fail(f"{key}.{kind}", f"expected a list but got {args!r}")
        if kind == "choice":
            if not args:
                self.fail(f"{key}.choice", "the list of choices is empty; give at least one value")
            return Distribution(kind, tuple(self.setting(f"{key}.choice[{i}]", name, v) for i, v in enumerate(args)))
        setting_kind = SETTINGS.get(name) or DECODING_SETTINGS[name]
        if setting_kind is str:
            self.fail(key, f"{name} takes text values; use {{choice: [...]}}")
        stepped = kind in ("quniform", "qint")
        if len(args) != (3 if stepped else 2):
            self.fail(f"{key}.{kind}", f"expected [low, high{', step' if stepped else ''}] but got {args!r}")
        number_kind = int if kind in ("int", "logint", "qint") else float
        if setting_kind is int and number_kind is float:
            self.fail(key, f"{name} takes whole numbers; use int, logint or qint instead of {kind}")
        values = [self.number(f"{key}.{kind}", v, number_kind) for v in args]
        low, high = values[0], values[1]
        if low >= high:
            self.fail(f"{key}.{kind}", f"low must be below high but got low={args[0]!r}, high={args[1]!r}")
        if kind.startswith("log") and low <= 0:
            self.fail(
                f"{key}.{kind}", f"a log range must be above 0 but got low={args[0]!r}; use uniform, or a positive low"
            )
        if stepped and values[2] <= 0:
            self.fail(f"{key}.{kind}", f"step must be positive but got {args[2]!r}")
        self.setting(f"{key}.{kind}", name, low)
        self.setting(f"{key}.{kind}", name, high)
        return Distribution(kind, tuple(values))


def warn_about_searched(source: str, scheduler: SchedulerSection, searched: set[str]) -> None:
    """Searches that run but compare trials unfairly or waste retrainings: warned about, not refused."""
    batch_searched = [n for n in ("batch_size", "gradient_accumulation_steps") if n in searched]
    if scheduler.budget_unit == "steps" and batch_searched and scheduler.type == "asha":
        # A user may mean it. But a step of batch 16 is twice the work of a step of batch 8.
        logger.warning(
            "%s: %s searched with budget_unit: steps, so ASHA compares trials after unequal work; "
            "budget_unit: samples compares them after the same number of training examples",
            source,
            " and ".join(batch_searched) + (" are" if len(batch_searched) > 1 else " is"),
        )
    loss_scale = [n for n in ("model", "max_target_length", "label_smoothing") if n in searched]
    if scheduler.rung_metric != "objective" and loss_scale:
        logger.warning(
            "%s: scheduler.rung_metric %s compares validation losses, but %s %s searched and changes the "
            "loss's scale (vocabulary, tokens scored, smoothing); rung_metric: objective compares them fairly",
            source,
            scheduler.rung_metric,
            " and ".join(loss_scale),
            "are" if len(loss_scale) > 1 else "is",
        )
    if "generation_num_beams" in searched:
        logger.warning(
            "%s: generation_num_beams searched in training: each value costs a retraining; the decoding section "
            "(decoding.search.num_beams) tries beam widths on the trained checkpoints instead",
            source,
        )


def refuse_decoding_settings(check: Checker, raw: dict) -> None:
    """generate() settings belong to the decoding stage: searched in training, each value costs a retraining."""
    blocks = [("fixed", raw.get("fixed")), ("search", raw.get("search"))]
    for section in ("per_family", "per_adapter"):
        per = raw.get(section) if isinstance(raw.get(section), dict) else {}
        blocks += [(f"{section}.{name}", block) for name, block in per.items()]
    for where, block in blocks:
        for name in block if isinstance(block, dict) else ():
            if name in DECODING_SETTINGS:
                check.fail(
                    f"{where}.{name}",
                    f"a decoding setting: put it under decoding.search ({name}: {{choice: [...]}}), where it is "
                    "tried on the trained checkpoints without retraining",
                )
