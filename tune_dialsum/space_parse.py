"""Validating a raw space mapping into a :class:`SearchSpace`, section by section.

Every error is one line naming the file and key (space_checks.py); every key, with its default,
is a field in space_schema.py.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import fields

from tune_dialsum.adapters import (
    ADAPTERS,
    DEFAULT_TARGET_MODULES,
    LINEAR_MODULES,
    LORA_SETTINGS,
    unknown_target_modules,
)
from tune_dialsum.contract import BUDGET_UNITS, OBJECTIVES, RUNG_METRICS, default_mode
from tune_dialsum.models import FAMILIES, family_of
from tune_dialsum.space_checks import Checker, refuse_decoding_settings, warn_about_searched
from tune_dialsum.space_model import (
    DECODING_SETTINGS,
    DEFAULT_SETTINGS,
    LENGTH_UNITS,
    SETTINGS,
    TOP_LEVEL_KEYS,
    TRACKING_BACKENDS,
    SearchSpace,
    adapters_of,
    default_startup_trials,
)
from tune_dialsum.space_schema import (
    SECTIONS,
    TOP_LEVEL,
    CheckpointsSection,
    DataSection,
    DecodingSpace,
    ObjectiveSection,
    ResourcesSection,
    SchedulerSection,
    SelectionSection,
    TrackingSection,
    TrialsSection,
    section_keys,
)
from tune_dialsum.uris import credentials_problem

logger = logging.getLogger(__name__)


def _searched(search: dict, *per: dict) -> set[str]:
    return set(search) | {name for blocks in per for block in blocks.values() for name in block}


def parse_space(raw: dict, source: str = "<space>", default_name: str = "search", training: bool = True) -> SearchSpace:
    """Validate a raw space; ``training=False`` (the decoding stage alone) needs nothing searched in training."""
    check = Checker(source)
    for key in raw:
        if key not in TOP_LEVEL_KEYS:
            check.fail(key, f"unknown key; valid keys: {', '.join(TOP_LEVEL_KEYS)}")
    fixed, search, per_family, per_adapter = _parse_settings(check, raw, training)
    _check_lora_settings(check, raw, fixed, search, per_family, per_adapter)
    scheduler = _parse_scheduler(check, raw)
    warn_about_searched(source, scheduler, _searched(search, per_family, per_adapter))
    objective = _parse_objective(check, raw)
    selection = _parse_selection(check, raw)
    if selection.refit and objective.metric == "eval_loss":
        check.fail(
            "selection.refit",
            "a refit is compared with the chosen checkpoint on ROUGE over all of validation; with the objective "
            "eval_loss set it to false, or optimise a ROUGE score",
        )
    resources = _parse_resources(check, _values(check, raw, "resources"), source)
    if selection.refit and resources.data_parallel:
        check.fail(
            "selection.refit",
            "a refit trains in one process, so it cannot repeat a data-parallel trial (workers_per_trial "
            f"{resources.workers_per_trial}); set it to false, or workers_per_trial to 1",
        )
    return SearchSpace(
        name=_parse_name(check, raw, default_name),
        source=source,
        data=_parse_data(check, raw),
        objective=objective,
        fixed=fixed,
        search=search,
        per_family=per_family,
        per_adapter=per_adapter,
        scheduler=scheduler,
        trials=_parse_trials(check, raw),
        resources=resources,
        checkpoints=CheckpointsSection(
            keep=check.number(
                "checkpoints.keep",
                _values(check, raw, "checkpoints").get("keep", CheckpointsSection.keep),
                int,
                minimum=1,
            )
        ),
        selection=selection,
        storage_path=_parse_storage_path(check, raw),
        seed=check.number("seed", raw.get("seed", TOP_LEVEL["seed"][0]), int),
        trust_remote_code=_parse_trust_remote_code(check, raw),
        decoding=_parse_decoding(check, raw, selection.top_k),
        tracking=_parse_tracking(check, raw),
        raw=copy.deepcopy(raw),
    )


def _parse_selection(check: Checker, raw: dict) -> SelectionSection:
    values = _values(check, raw, "selection")
    refit = values.get("refit", SelectionSection.refit)
    if not isinstance(refit, bool):
        check.fail("selection.refit", f"expected true or false but got {refit!r}")
    top_k = check.number("selection.top_k", values.get("top_k", SelectionSection.top_k), int, 1)
    return SelectionSection(top_k=top_k, refit=refit)


def _values(check: Checker, raw: dict, name: str) -> dict:
    """The keys a section sets, every one of them a field of its dataclass (the first part, where nested)."""
    return check.section(raw, name, {spelled.split(".")[0] for spelled in section_keys(SECTIONS[name])})


def _defaults(section: type) -> dict:
    return {f.name: f.default for f in fields(section)}


def _parse_name(check: Checker, raw: dict, default_name: str) -> str:
    name = str(raw.get("name") or default_name)
    if not name.replace("-", "").replace("_", "").replace(".", "").isalnum() or name.startswith("."):
        check.fail("name", f"{name!r} must be letters, digits, '-', '_' or '.' (it names a directory)")
    return name


def _parse_storage_path(check: Checker, raw: dict) -> str:
    storage_path = raw.get("storage_path", TOP_LEVEL["storage_path"][0])
    if not isinstance(storage_path, str) or not storage_path:
        check.fail("storage_path", f"expected a path but got {storage_path!r}")
    if credentials_problem(storage_path):
        check.fail("storage_path", credentials_problem(storage_path))
    return storage_path


def _parse_trust_remote_code(check: Checker, raw: dict) -> bool:
    trust = raw.get("trust_remote_code", TOP_LEVEL["trust_remote_code"][0])
    if not isinstance(trust, bool):
        check.fail("trust_remote_code", f"expected true or false but got {trust!r}")
    return trust


def _parse_data(check: Checker, raw: dict) -> DataSection:
    data = {**_defaults(DataSection), **_values(check, raw, "data")}
    if not isinstance(data["path"], str) or not data["path"]:
        check.fail("data.path", f"expected a directory path but got {data['path']!r}")
    if credentials_problem(data["path"]):
        check.fail("data.path", credentials_problem(data["path"]))
    for key in ("max_train_samples", "max_eval_samples"):
        if data[key] is not None:
            data[key] = check.number(f"data.{key}", data[key], int, minimum=1)
    data["validation_split"] = check.number(
        "data.validation_split", data["validation_split"], float, minimum=0, strict=True
    )
    if data["validation_split"] >= 1:
        check.fail("data.validation_split", f"must be below 1 but got {data['validation_split']!r}")
    return DataSection(**data)


def _parse_objective(check: Checker, raw: dict) -> ObjectiveSection:
    objective = _values(check, raw, "objective")
    metric = objective.get("metric", ObjectiveSection.metric)
    if metric not in OBJECTIVES:
        check.fail("objective.metric", f"unknown metric {metric!r}; use one of {', '.join(OBJECTIVES)}")
    mode = objective.get("mode", default_mode(metric))
    if mode not in ("min", "max"):
        check.fail("objective.mode", f"must be 'min' or 'max' but got {mode!r}")
    if mode != default_mode(metric):
        better = {"min": "lower", "max": "higher"}[default_mode(metric)]
        check.fail("objective.mode", f"{metric} is better {better}: use mode: {default_mode(metric)}")
    return ObjectiveSection(metric=metric, mode=mode)


def _parse_settings(check: Checker, raw: dict, training: bool) -> tuple[dict, dict, dict, dict]:
    """``fixed`` (with the defaults), ``search``, ``per_family`` and ``per_adapter``: what a trial trains with."""
    refuse_decoding_settings(check, raw)
    fixed = {**DEFAULT_SETTINGS}
    for name, value in check.section(raw, "fixed", set(SETTINGS)).items():
        fixed[name] = check.setting(f"fixed.{name}", name, value)
    search_raw = check.section(raw, "search", set(SETTINGS))
    search = {name: check.distribution(f"search.{name}", name, spec) for name, spec in search_raw.items()}
    for name in search:
        fixed.pop(name, None)
    if not search and training:
        check.fail("search", "no setting is searched; add at least one, e.g. learning_rate: {loguniform: [1e-5, 1e-4]}")
    per_family = _parse_ranges(check, raw, "per_family", FAMILIES)
    per_adapter = _parse_ranges(check, raw, "per_adapter", ADAPTERS)
    for name in per_adapter.get("none", {}):
        if name in LORA_SETTINGS:
            check.fail(f"per_adapter.none.{name}", "only LoRA trials use it; move it under per_adapter.lora")
    if "model" not in search and "model" not in fixed:
        check.fail("search", "no model: set fixed.model or search model: {choice: [...]}")
    for where, block in _labelled_ranges(search, per_family, per_adapter):
        if "num_train_epochs" in block:
            check.fail(
                f"{where}.num_train_epochs",
                "has no effect: the scheduler sets every trial's budget (scheduler.max_budget); remove it from the search",
            )
    return fixed, search, per_family, per_adapter


def _parse_ranges(check: Checker, raw: dict, section: str, names) -> dict[str, dict]:
    """``per_family`` or ``per_adapter``: ranges sampled once a trial's model family (its adapter) is known."""
    parsed = {}
    for name, settings in check.section(raw, section, set(names)).items():
        where = f"{section}.{name}"
        block = check.section({where: settings}, where, set(SETTINGS))
        parsed[name] = {n: check.distribution(f"{where}.{n}", n, s) for n, s in block.items()}
        for decided in ("model", "adapter"):  # they decide which ranges apply
            if decided in parsed[name]:
                check.fail(f"{where}.{decided}", "it decides which ranges apply; search it under 'search'")
    return parsed


def _labelled_ranges(search: dict, per_family: dict, per_adapter: dict) -> list[tuple[str, dict]]:
    """Every block of ranges with the key an error names it by: search, per_family.FAMILY, per_adapter.ADAPTER."""
    ranges = [("search", search)]
    for section, per in (("per_family", per_family), ("per_adapter", per_adapter)):
        ranges += [(f"{section}.{name}", block) for name, block in per.items()]
    return ranges


def _check_lora_settings(check: Checker, raw: dict, fixed: dict, search: dict, per_family: dict, per_adapter: dict):
    """LoRA's settings only where a trial can be LoRA, and target modules that the models have."""
    adapters = adapters_of(search, fixed)
    user_fixed = raw.get("fixed") or {}
    blocks = [("fixed", user_fixed), *_labelled_ranges(search, per_family, per_adapter)]
    for where, block in blocks:
        for name in LORA_SETTINGS:
            if name in block and "lora" not in adapters:
                check.fail(
                    f"{where}.{name}",
                    "has no effect without adapter: lora; set fixed.adapter: lora (or search adapter: "
                    "{choice: [none, lora]}), or remove it",
                )
    models = search["model"].args if "model" in search else (fixed["model"],)
    families = {family_of(str(model)).name for model in models}
    targets_given = any("lora_target_modules" in block for _, block in blocks)
    unknown = sorted(f for f in families if f not in DEFAULT_TARGET_MODULES)
    if "lora" in adapters and unknown and not targets_given:
        check.fail(
            "fixed.lora_target_modules",
            f"missing: LoRA has no default layers for {', '.join(unknown)} models; name them (e.g. q_proj,v_proj) "
            "or use all-linear",
        )
    for where, block in blocks:
        value = block.get("lora_target_modules")
        if value is None:
            continue
        values = value.args if hasattr(value, "args") else (value,)
        for_families = [where.split(".")[1]] if where.startswith("per_family.") else sorted(families)
        for family in for_families:
            for one in values:
                unknown = unknown_target_modules(one, family)
                if unknown:
                    check.fail(
                        f"{where}.lora_target_modules",
                        f"{', '.join(unknown)}: not a linear layer of {family} models; use names among "
                        f"{', '.join(LINEAR_MODULES[family])}, or all-linear",
                    )


def _parse_scheduler(check: Checker, raw: dict) -> SchedulerSection:
    scheduler = {**_defaults(SchedulerSection), **_values(check, raw, "scheduler")}
    if scheduler["type"] not in ("asha", "fifo"):
        check.fail("scheduler.type", f"must be 'asha' or 'fifo' but got {scheduler['type']!r}")
    if scheduler["budget_unit"] not in BUDGET_UNITS:
        check.fail(
            "scheduler.budget_unit", f"must be one of {', '.join(BUDGET_UNITS)} but got {scheduler['budget_unit']!r}"
        )
    if scheduler["max_budget"] is None:
        check.fail("scheduler.max_budget", f"missing: the most {scheduler['budget_unit']} a trial may train")
    scheduler["max_budget"] = check.number("scheduler.max_budget", scheduler["max_budget"], int, minimum=1)
    for key, default in (("eval_interval", max(1, scheduler["max_budget"] // 4)), ("grace_period", None)):
        value = scheduler[key] if scheduler[key] is not None else (default or scheduler["eval_interval"])
        scheduler[key] = check.number(f"scheduler.{key}", value, int, minimum=1)
    scheduler["reduction_factor"] = check.number(
        "scheduler.reduction_factor", scheduler["reduction_factor"], float, minimum=1, strict=True
    )
    if scheduler["rung_metric"] not in RUNG_METRICS:
        check.fail(
            "scheduler.rung_metric",
            f"must be one of {', '.join(RUNG_METRICS)} but got {scheduler['rung_metric']!r}",
        )
    for key in ("eval_interval", "grace_period"):
        if scheduler[key] > scheduler["max_budget"]:
            check.fail(
                f"scheduler.{key}",
                f"{scheduler[key]} exceeds max_budget {scheduler['max_budget']}; lower it or raise max_budget",
            )
    return SchedulerSection(**scheduler)


def _parse_trials(check: Checker, raw: dict) -> TrialsSection:
    trials = {**_defaults(TrialsSection), **_values(check, raw, "trials")}
    if trials["sampler"] not in ("tpe", "random"):
        check.fail("trials.sampler", f"must be 'tpe' or 'random' but got {trials['sampler']!r}")
    trials["num_samples"] = check.number("trials.num_samples", trials["num_samples"], int, minimum=1)
    if trials["max_concurrent"] is not None:  # None: as many as the cluster's resources fit
        trials["max_concurrent"] = check.number("trials.max_concurrent", trials["max_concurrent"], int, minimum=1)
    if trials["startup_trials"] is None:  # TPE's random start-up, sized to the search (benchmarks/replay.py)
        trials["startup_trials"] = default_startup_trials(trials["num_samples"])
    trials["startup_trials"] = check.number("trials.startup_trials", trials["startup_trials"], int, minimum=1)
    if trials["time_budget_s"] is not None:
        trials["time_budget_s"] = check.number(
            "trials.time_budget_s", trials["time_budget_s"], float, minimum=0, strict=True
        )
    return TrialsSection(**trials)


def _parse_resources(check: Checker, section: dict, source: str) -> ResourcesSection:
    """A trial's resources: one process (``*_per_trial``) or ``workers_per_trial`` data-parallel workers.

    The result holds both views: ``cpus_per_trial``/``gpus_per_trial`` are a trial's totals (what the
    cluster must have room for), ``*_per_worker`` what one process gets (a scoring task's share too).
    """
    workers = section.get("workers_per_trial", ResourcesSection.workers_per_trial)
    workers = check.number("resources.workers_per_trial", workers, int, minimum=1)
    per_worker = {}
    for kind in ("cpus", "gpus"):
        trial_key, worker_key = f"{kind}_per_trial", f"{kind}_per_worker"
        if trial_key in section and worker_key in section:
            check.fail(f"resources.{trial_key}", f"give a trial's total or resources.{worker_key}, not both")
        key = f"resources.{worker_key if worker_key in section else trial_key}"
        value = section.get(worker_key, section.get(trial_key, getattr(ResourcesSection, trial_key)))
        value = check.number(key, value, float, minimum=0, strict=kind == "cpus")
        # a trial's total is split evenly over its workers
        per_worker[kind] = value if worker_key in section else value / workers
        if kind == "gpus" and per_worker[kind] > 1 and per_worker[kind] != int(per_worker[kind]):
            check.fail(key, f"above 1 must be a whole number per worker but got {per_worker[kind]:g}")
        if kind == "gpus" and workers > 1 and 0 < per_worker[kind] < 1:  # NCCL: "Duplicate GPU detected"
            check.fail(key, f"data-parallel workers need a whole GPU each but got {per_worker[kind]:g} per worker")
    if per_worker["gpus"] > 1:
        logger.warning(
            "%s: resources: %g GPUs for one process: transformers trains on them with torch's DataParallel, "
            "which is slower than data-parallel workers: workers_per_trial: %g with gpus_per_worker: 1",
            source,
            per_worker["gpus"],
            per_worker["gpus"],
        )
    return ResourcesSection(
        workers_per_trial=workers,
        cpus_per_worker=per_worker["cpus"],
        gpus_per_worker=per_worker["gpus"],
        cpus_per_trial=workers * per_worker["cpus"],
        gpus_per_trial=workers * per_worker["gpus"],
    )


def _parse_tracking(check: Checker, raw: dict) -> TrackingSection | None:
    """``tracking: {backend: mlflow, uri: URI}``; no section, or ``backend: none``, tracks nothing."""
    tracking = _values(check, raw, "tracking")
    backend = tracking.get("backend", "mlflow" if tracking else "none")
    if backend in (None, "none"):
        return None
    if backend not in TRACKING_BACKENDS:
        check.fail("tracking.backend", f"must be one of {', '.join(TRACKING_BACKENDS)} or none but got {backend!r}")
    uri = tracking.get("uri")
    if uri is not None and (not isinstance(uri, str) or not uri):
        check.fail("tracking.uri", f"expected a tracking URI (a server or a local path) but got {uri!r}")
    if credentials_problem(uri):
        check.fail("tracking.uri", credentials_problem(uri))
    return TrackingSection(backend=backend, uri=uri)


def _parse_decoding(check: Checker, raw: dict, top_k: int) -> DecodingSpace | None:
    section = _values(check, raw, "decoding")
    if not section:
        return None
    search_raw = check.section({"decoding.search": section.get("search")}, "decoding.search", set(DECODING_SETTINGS))
    search = {n: check.distribution(f"decoding.search.{n}", n, spec) for n, spec in search_raw.items()}
    if not search:
        check.fail("decoding.search", "nothing to search; add a setting, e.g. num_beams: {choice: [1, 4]}")
    top_k_checkpoints = check.number(
        "decoding.top_k_checkpoints", section.get("top_k_checkpoints", DecodingSpace.top_k_checkpoints), int, 1
    )
    if top_k_checkpoints > top_k:
        check.fail(
            "decoding.top_k_checkpoints",
            f"{top_k_checkpoints} exceeds selection.top_k {top_k} (the checkpoints scored on all of validation); "
            f"lower it or raise selection.top_k",
        )
    max_eval = section.get("max_eval_samples")
    constrained = [spelled.split(".")[1] for spelled in section_keys(DecodingSpace) if "." in spelled]
    constraints = check.section(
        {"decoding.constraints": section.get("constraints")}, "decoding.constraints", set(constrained)
    )
    unit = constraints.get("length_unit", DecodingSpace.length_unit)
    if unit not in LENGTH_UNITS:
        check.fail("decoding.constraints.length_unit", f"must be one of {', '.join(LENGTH_UNITS)} but got {unit!r}")

    def limit(key: str) -> float | None:
        value = constraints.get(key)
        return None if value is None else check.number(f"decoding.constraints.{key}", value, float, 0, strict=True)

    return DecodingSpace(
        search=search,
        num_samples=check.number("decoding.num_samples", section.get("num_samples", DecodingSpace.num_samples), int, 1),
        top_k_checkpoints=top_k_checkpoints,
        max_eval_samples=None if max_eval is None else check.number("decoding.max_eval_samples", max_eval, int, 1),
        max_mean_length=limit("max_mean_length"),
        length_unit=unit,
        max_seconds_per_summary=limit("max_seconds_per_summary"),
    )
