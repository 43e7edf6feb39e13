"""A chosen checkpoint -> a self-contained model directory, with its record (tuning.json) and card.

Which checkpoint: what the search chose (choices.py), else the best by a metric (checkpoints.py).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from importlib import metadata
from pathlib import Path

from tune_dialsum import adapters
from tune_dialsum.atomic import atomic_directory, atomic_write_text
from tune_dialsum.checkpoints import (
    TRAINING_ONLY,
    CheckpointRecord,
    best_checkpoint,
    find_checkpoints,
    find_record,
)
from tune_dialsum.contract import CHOSEN_WITHIN_NOISE, ROUGE_KEYS, TUNING_FILE
from tune_dialsum.errors import UsageError
from tune_dialsum.generation import apply_to_config, trial_decoding
from tune_dialsum.models import check_model_available

MODEL_CARD = "README.md"


def _library_versions() -> dict[str, str]:
    names = ("tune_dialsum", "transformers", "torch", "ray", "optuna", "datasets", "rouge-score")
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def _interval(scores: dict, key: str) -> str:
    low_high = (scores.get("intervals") or {}).get(key)
    return f"{low_high[0]:.4f} to {low_high[1]:.4f}" if low_high else "not measured"


def _score_table(scores: dict) -> str:
    rows = "\n".join(f"| {k} | {scores[k]:.4f} | {_interval(scores, k)} |" for k in ROUGE_KEYS if k in scores)
    return f"| metric | value | 95% bootstrap interval |\n|---|---|---|\n{rows}"


def _inline(scores: dict) -> str:
    return ", ".join(
        f"{k} {scores[k]:.4f}" + (f" ({_interval(scores, k)})" if scores.get("intervals") else "")
        for k in ROUGE_KEYS
        if k in scores
    )


def format_settings(settings: dict) -> str:
    """``name=value, ...`` in name order, floats to three significant digits."""
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(settings.items()))


def _decoding_label(record: dict, several_checkpoints: bool) -> str:
    label = "training decoding" if record["number"] < 0 else str(record["number"])
    if several_checkpoints:
        label += f" on {record['checkpoint']}"
    return label + (" (**chosen**)" if record.get("chosen") else "")


def _decoding_table(decoding: dict) -> str:
    """The best decoding trials, the chosen one marked, and the training decoding for comparison."""
    objective, unit = decoding["objective"], decoding.get("length_unit", "words")
    several = len({r["checkpoint"] for r in decoding["best"]}) > 1  # then each row names its checkpoint
    rows = [
        f"| {_decoding_label(r, several)} "
        f"| {format_settings(r['settings'])} | {r['scores'][objective]:.4f} "
        f"| {r['scores'][f'mean_{unit}']:.1f} | {r['scores']['seconds_per_summary']:.3f} |"
        for r in decoding["best"]
    ]
    constraints = f"; constraints: {decoding['constraints']}" if decoding.get("constraints") else ""
    return (
        f"## Decoding, tuned on validation without retraining ({decoding['trials']} trials of study "
        f"`{decoding['study']}`, {decoding['examples']} examples{constraints})\n\n"
        f"| trial | settings | {objective} | mean {unit} | s / summary |\n|---|---|---|---|---|\n" + "\n".join(rows)
    )


def _workers(tuning: dict) -> str:
    world = tuning.get("world_size", 1)
    return f" ({world} data-parallel workers, exported from rank 0)" if world > 1 else ""


def _adapter_section(adapter: dict, trainable: int | None) -> str:
    """What a LoRA-trained model is: merged into a plain model, or the adapter alone on its base model."""
    trained = f", {trainable:,} trained weights" if trainable else ""
    how = (
        f"LoRA (rank {adapter['r']}, alpha {adapter['alpha']:g}, on {', '.join(adapter['target_modules'] or [])}"
        f"{trained}) on `{adapter['base_model']}`"
    )
    if adapter["merged"]:
        return f"## Adapter\n\nTrained with {how}, merged into the base model: a plain model, loaded without peft."
    return (
        f"## Adapter\n\nTrained with {how}. This directory holds the adapter alone: "
        "`AutoModelForSeq2SeqLM.from_pretrained(DIR)` loads the base model with it where peft is installed "
        '(`pip install "tune_dialsum[peft]"`).'
    )


def _model_card(tuning: dict) -> str:
    settings = "\n".join(f"| {k} | {v} |" for k, v in sorted(tuning["config"].items()) if v is not None)
    test, full = tuning.get("test"), tuning.get("full_validation")
    sections = []
    if test:
        sections.append(f"## Test scores ({test['examples']} examples, never used to choose)\n\n{_score_table(test)}")
        greedy = tuning.get("test_training_decoding")
        if greedy:
            sections[-1] += f"\n\nWith the decoding the trials were scored with in training: {_inline(greedy)}."
    if tuning.get("decoding"):
        sections.append(_decoding_table(tuning["decoding"]))
    refit = tuning.get("refit")
    if refit:
        verdict = "this model is the refit" if refit["exported"] else "the refit was not exported"
        sections.append(
            f"## Refit\n\nThe chosen settings were trained anew to the full budget: {tuning['metric']} "
            f"{refit['full_validation']:.4f} on all of validation against the chosen checkpoint's "
            f"{refit['chosen_full_validation']:.4f} (paired difference and 95% interval "
            f"{', '.join(f'{x:+.4f}' for x in refit['difference_from_chosen'])}); {verdict}."
        )
    if full:
        sections.append(
            f"## Validation scores, used for selection (all {full['examples']} examples)\n\n{_score_table(full)}"
        )
        if tuning.get("selection_within_noise"):
            sections[-1] += f"\n\n{CHOSEN_WITHIN_NOISE}"
    sections.append(
        f"## Validation scores during the search, used for ranking ({tuning['fidelity']})\n\n"
        + _score_table(tuning["scores"])
    )
    if tuning.get("adapter"):
        sections.insert(0, _adapter_section(tuning["adapter"], tuning.get("trainable_parameters")))
    body = "\n\n".join(sections)
    return f"""# {tuning["experiment"]}: best model

Fine-tuned by tune_dialsum: trial `{tuning["trial_id"]}`, step {tuning["step"]}{_workers(tuning)}, chosen by `{tuning["metric"]}` ({tuning["mode"]}){" on the whole validation split among the best checkpoints on the subset" if full else ""}.
Inputs are written in the `{tuning["recipe"]["dialogue_format"]}` dialogue format with the prefix
`{tuning["recipe"]["prefix"]!r}`; `python -m tune_dialsum summarize --model DIR` applies both.

{body}

## Settings

| setting | value |
|---|---|
{settings}
"""


def record_scores(model_dir: Path, **scores: dict | None) -> None:
    """Add what was measured after export (``full_validation=``, ``test=``, ``selection=``, ``decoding=``...) to
    tuning.json and the card."""
    tuning_file = model_dir / TUNING_FILE
    tuning = json.loads(tuning_file.read_text())
    tuning.update({name: value for name, value in scores.items() if value is not None})
    atomic_write_text(tuning_file, json.dumps(tuning, indent=2, default=str))
    atomic_write_text(model_dir / MODEL_CARD, _model_card(tuning))


def refuse_replacing(out: str, force: bool, is_export: bool) -> None:
    """Fail in one line unless ``out`` may be replaced: with ``--force``, and only an earlier export.

    ``--force`` replaces what an export wrote (it has tuning.json), or an empty directory; never an
    experiment, a dataset or a bucket prefix that a mistyped ``--out`` names.
    """
    if not force:
        raise UsageError(f"{out} already exists; pass --force to replace it, or another --out")
    if not is_export:
        raise UsageError(
            f"{out} is not an earlier export (it has no {TUNING_FILE}); --force replaces only a model that "
            "export wrote: pass another --out"
        )


def refuse_replacing_directory(out_dir: Path, force: bool) -> None:
    """:func:`refuse_replacing` for a local ``out_dir``, where it exists."""
    if out_dir.exists():
        is_export = out_dir.is_dir() and ((out_dir / TUNING_FILE).is_file() or not any(out_dir.iterdir()))
        refuse_replacing(str(out_dir), force, is_export)


def export_checkpoint(
    record: CheckpointRecord,
    out_dir: str | Path,
    metric: str,
    mode: str,
    force: bool = False,
    source: str | None = None,
    generation: dict | None = None,
    scores: dict | None = None,
    adapter_only: bool = False,
) -> Path:
    """Write ``record``'s model as a self-contained directory at ``out_dir``, atomically.

    A LoRA checkpoint is merged into its base model (a plain model, loaded without peft), or with
    ``adapter_only`` written as the adapter alone, its base model named in ``adapter_config.json``.

    ``source`` is where the checkpoint is kept, when ``record.path`` is a local copy of it;
    ``generation`` the decoding to write into its generation config (default: the one its trial
    was scored with); ``scores`` what was measured before the export (as :func:`record_scores` takes).
    """
    out_dir = Path(out_dir)
    refuse_replacing_directory(out_dir, force)
    config = record.snapshot.get("config", {})
    tuning = {
        "experiment": record.snapshot.get("experiment"),
        "trial_id": record.trial_id,
        "step": record.step,
        "metric": metric,
        "mode": mode,
        "scores": record.scores,
        "config": config,
        "recipe": record.snapshot.get("recipe", {}),
        "settings": record.snapshot.get("settings", {}),
        # the seed validation rows were held out of train with (where the data has no validation split)
        "data_seed": record.snapshot.get("settings", {}).get("seed"),
        # how a step was made: examples per step = batch x accumulation x world size (older trials: 1 process)
        "world_size": record.snapshot.get("world_size", 1),
        "per_device_train_batch_size": record.snapshot.get("per_device_train_batch_size", config.get("batch_size")),
        "gradient_accumulation_steps": record.snapshot.get(
            "gradient_accumulation_steps", config.get("gradient_accumulation_steps")
        ),
        "fidelity": fidelity(record.snapshot),
        "trainable_parameters": record.snapshot.get("trainable_parameters"),
        "total_parameters": record.snapshot.get("total_parameters"),
        "checkpoint": source or str(record.path),
        "versions": _library_versions(),
    }
    tuning.update({name: value for name, value in (scores or {}).items() if value is not None})
    if adapter_only and not adapters.is_adapter(record.path):
        raise UsageError(
            f"trial {record.trial_id} trained every weight (adapter: {config.get('adapter', 'none')}): it has no "
            "adapter to export alone; export without --adapter-only"
        )
    with atomic_directory(out_dir) as staging:
        for item in record.path.iterdir():
            if item.is_file() and item.name not in TRAINING_ONLY and not item.name.startswith("rng_state"):
                shutil.copy2(item, staging / item.name)
        if adapters.is_adapter(staging):
            trust = bool(record.snapshot.get("settings", {}).get("trust_remote_code"))
            check_model_available(adapters.base_model(staging))  # the merge (and its config) loads the base
            if adapter_only:
                tuning["adapter"] = adapters.read_description(staging)
                adapters.keep_base_generation_config(staging, trust)
            else:
                tuning["adapter"] = adapters.merge_in_place(staging, trust)
        set_generation_config(staging, generation or trial_decoding(config))
        (staging / TUNING_FILE).write_text(json.dumps(tuning, indent=2, default=str))
        (staging / MODEL_CARD).write_text(_model_card(tuning))
    return out_dir


def fidelity(snapshot: dict) -> str:
    """Which validation examples and decoding a checkpoint's scores come from."""
    settings = snapshot.get("settings", {})
    subset = settings.get("data", settings).get("max_eval_samples")  # older experiments recorded it flat
    beams = snapshot.get("config", {}).get("generation_num_beams")
    return f"{'first ' + str(subset) if subset else 'all'} validation examples, {beams} beam(s)"


def set_generation_config(model_dir: Path, settings: dict) -> None:
    """Make ``settings`` the model's default decoding: generate() (and so ``summarize``) reads them."""
    from transformers import GenerationConfig

    generation = (
        GenerationConfig.from_pretrained(model_dir)
        if (model_dir / "generation_config.json").exists()
        else GenerationConfig()
    )
    apply_to_config(generation, settings)
    generation.save_pretrained(model_dir)


def export_experiment(
    experiment_dir: str,
    out: str,
    metric: str | None = None,
    trial: str | None = None,
    force: bool = False,
    adapter_only: bool = False,
) -> tuple[CheckpointRecord, str, str]:
    """Export the checkpoint an experiment chose to ``out`` (a directory or a URI): (record, out, metric).

    With the search's own objective and no ``trial``: what the search chose, with the decoding its
    decoding stage chose. With another ``metric`` (its usual direction) or a ``trial``: the best
    checkpoint by that metric, of that trial.
    """
    from tune_dialsum.analysis import Experiment
    from tune_dialsum.choices import chosen_decoding, read_selection
    from tune_dialsum.contract import default_mode
    from tune_dialsum.locations import is_uri, join, reachable, upload

    # before the experiment is read (a bucket's, perhaps): a refusal costs nothing
    if not is_uri(out):
        refuse_replacing_directory(Path(out), force)
    elif reachable(out) is None:  # written here, then uploaded
        refuse_replacing(out, force, reachable(join(out, TUNING_FILE)) is None)
    experiment = Experiment.load(experiment_dir)
    metric = metric or experiment.metric
    mode = experiment.space.mode if metric == experiment.metric else default_mode(metric)
    records = find_checkpoints(experiment.path)
    as_searched = metric == experiment.metric and not trial  # what the search chose, decoding included
    chosen = read_selection(experiment.path) if as_searched else None
    record = find_record(records, chosen["chosen"]["trial_id"], chosen["chosen"]["step"]) if chosen else None
    decoded = chosen_decoding(experiment.path) if as_searched else None
    generation = None
    if decoded is not None:  # the decoding stage chose a checkpoint (among the re-scored ones) and its decoding
        trial_id, _, step = decoded[0].rpartition("@")
        record, generation = find_record(records, trial_id, int(step)) or record, decoded[1]
    record = record or best_checkpoint(records, metric, mode, trial_id=trial)
    experiment.store.fetch(record.path)  # the mirror of a URI holds no weights until now
    written = dict(
        metric=metric,
        mode=mode,
        source=experiment.store.where(record.path),
        generation=generation,
        adapter_only=adapter_only,
    )
    if not is_uri(out):
        return record, str(export_checkpoint(record, out, force=force, **written)), metric
    with tempfile.TemporaryDirectory() as scratch:
        upload(export_checkpoint(record, Path(scratch) / "model", **written), out)
    return record, out, metric
