"""``tune-decoding``: the decoding stage (decoding.py) on any seq2seq model, outside a search.

The model (a directory, a hub name, ``tiny:FAMILY``) is copied to ``--out``, its study is kept
there, and once a decoding is chosen the copy's ``generation_config.json`` holds it: run again with
the same ``--out``, the study continues.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from tune_dialsum import executor
from tune_dialsum.adapters import is_adapter
from tune_dialsum.atomic import atomic_directory, atomic_write_text
from tune_dialsum.choices import read_decoding
from tune_dialsum.contract import DECODING_DB, DECODING_FILE, DECODING_SOURCE_FILE, RECIPE_FILE, TUNING_FILE
from tune_dialsum.decoding import DecodingResult, DecodingStudy, DecodingTrial, run_decoding_study
from tune_dialsum.errors import UsageError
from tune_dialsum.experiment_context import ExperimentContext
from tune_dialsum.space import DECODING_SETTINGS, SearchSpace

logger = logging.getLogger(__name__)


def tune_model(
    model: str, out: Path, space: SearchSpace, context: ExperimentContext, address: str | None = None
) -> DecodingResult:
    """``tune-decoding``: the decoding study on any seq2seq model (a directory, a hub name, ``tiny:FAMILY``).

    ``out`` gets a copy of the model, the study (``decoding.db``, ``decoding.json``) and, once chosen,
    the tuned ``generation_config.json``; run again with the same ``out``, the study continues.
    """
    from tune_dialsum.cluster import start_ray
    from tune_dialsum.export import record_scores, set_generation_config

    out = Path(out).expanduser().resolve()  # Ray tasks read the model from here
    holds_study = (out / DECODING_FILE).is_file() or (out / DECODING_DB).is_file()  # stopped before its first record
    if out.exists() and not holds_study and any(out.iterdir()):
        raise UsageError(f"--out {out}: exists and holds no decoding study; pass a new directory")
    source = str(Path(model).expanduser().resolve()) if Path(model).expanduser().is_dir() else model
    source_file = out / DECODING_SOURCE_FILE  # (a study begun before it was recorded continues unchecked)
    recorded = json.loads(source_file.read_text())["model"] if source_file.is_file() else None
    if recorded is not None and recorded != source and Path(recorded) != out:
        raise UsageError(
            f"--out {out}: holds the decoding study of {recorded}, not of {model}; pass that model to continue "
            "its study, or a new --out for this one"
        )
    if not (out / "config.json").is_file():
        with atomic_directory(out) as staging:  # an interrupted copy leaves no half model behind
            _copy_model(model, staging, context)
            atomic_write_text(staging / DECODING_SOURCE_FILE, json.dumps({"model": source}))
    context = _on_the_models_rows(context, out)
    earlier = read_decoding(out) or {}
    records = (DecodingTrial.from_json(r) for r in earlier.get("records", []))
    baseline = next((r.generation for r in records if r.baseline), None)
    study = DecodingStudy(
        f"{space.name}-decoding",
        out,
        {"model": (str(out), baseline or _model_decoding(out))},
        space.decoding,
        context,
        space.resources,
        space.seed,
    )
    started_ray = start_ray(address) if executor.on_ray() else False  # tests decode inline
    try:
        result = run_decoding_study(study)
    finally:
        if started_ray:
            import ray

            ray.shutdown()
    set_generation_config(out, result.chosen.generation if result.chosen else study.models["model"][1])
    if (out / TUNING_FILE).is_file():  # an export: its record and card gain the decoding stage
        _set_aside_earlier_scores(out)
        record_scores(out, decoding=result.as_record(None))
    return result


def _on_the_models_rows(context: ExperimentContext, model_dir: Path) -> ExperimentContext:
    """``context`` with the seed the model's held-out rows were drawn with, where it records one.

    Where the data has no validation split, rows are held out of train by a seeded draw: decoding
    chosen with another seed would be chosen on rows the model trained on.
    """
    import dataclasses

    recorded = None
    for name in (TUNING_FILE, RECIPE_FILE):
        if recorded is None and (model_dir / name).is_file():
            document = json.loads((model_dir / name).read_text())
            # an export from before data_seed was recorded: its search's settings hold the seed
            recorded = document.get("data_seed", (document.get("settings") or {}).get("seed"))
    if recorded is None or recorded == context.seed:
        return context
    logger.info("held-out rows drawn with the model's seed %s (the space says %s)", recorded, context.seed)
    return dataclasses.replace(context, seed=int(recorded))


def _set_aside_earlier_scores(model_dir: Path) -> None:
    """An export's validation and test scores were measured with its earlier decoding: keep them, labelled so."""
    tuning = json.loads((model_dir / TUNING_FILE).read_text())
    earlier = {k: tuning.pop(k) for k in ("full_validation", "test", "test_training_decoding") if k in tuning}
    if earlier:
        tuning["scores_before_decoding_tuning"] = earlier
        atomic_write_text(model_dir / TUNING_FILE, json.dumps(tuning, indent=2, default=str))


def _copy_model(model: str, out: Path, context: ExperimentContext) -> None:
    """The model's files in ``out``: copied from a directory, else loaded (hub, tiny) and saved."""
    from tune_dialsum.checkpoints import TRAINING_ONLY
    from tune_dialsum.models import load_model_and_tokenizer

    if Path(model).is_dir():
        if is_adapter(Path(model)):
            raise UsageError(
                f"{model}: a LoRA adapter; tune the decoding of the merged export (export without --adapter-only)"
            )
        if not (Path(model) / "config.json").is_file():
            raise UsageError(f"{model}: not a model directory (no config.json); pass an export or a model name")
        shutil.copytree(model, out, ignore=shutil.ignore_patterns(*TRAINING_ONLY, "rng_state*"), dirs_exist_ok=True)
        return
    loaded, tokenizer = load_model_and_tokenizer(model, context.trust_remote_code, context.data.path)
    loaded.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _model_decoding(model_dir: Path) -> dict:
    """The model's own decoding (what its generation config sets): the baseline tuned decodings are compared with."""
    from transformers import GenerationConfig

    if not (model_dir / "generation_config.json").is_file():
        return {}
    config = GenerationConfig.from_pretrained(model_dir)
    names = ("num_beams", "max_length", "max_new_tokens", *DECODING_SETTINGS)
    return {name: getattr(config, name) for name in dict.fromkeys(names) if getattr(config, name, None) is not None}
