"""Shared set-up for the benchmarks: a DialogSum subset and a tiny model trained on its vocabulary.

DialogSum is read from ../shared/data (or $TUNE_DIALSUM_SHARED_DATA) and never copied into the repo:
the subset is written to a scratch directory. Where it is absent, a benchmark prints why and exits 0.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("TUNE_DIALSUM_SHARED_DATA", REPO.parent / "shared" / "data"))

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--train-size", type=int, default=2000, help="DialogSum train rows to use")
    p.add_argument("--eval-size", type=int, default=64, help="validation rows scored at each evaluation")
    p.add_argument("--validation-size", type=int, default=None, help="DialogSum validation rows to keep (default: all)")
    p.add_argument("--test-size", type=int, default=None, help="DialogSum test rows to keep (default: all)")
    p.add_argument("--family", default="t5", choices=["bart", "t5", "pegasus"])
    p.add_argument(
        "--bed",
        choices=["dialogsum", "bundled"],
        default="dialogsum",
        help="the data: a DialogSum subset, or the repo's synthetic dialogues (data/), where a tiny model learns",
    )
    p.add_argument("--d-model", type=int, default=64, help="the tiny model's width (the project's tiny model: 64)")
    p.add_argument("--layers", type=int, default=2, help="encoder and decoder layers of the tiny model")
    p.add_argument("--workdir", type=Path, default=None, help="scratch directory (default: a new temporary one)")
    return p


def dimensions(args) -> dict:
    """The bench model's shape: the project's tiny model, widened to ``--d-model`` and ``--layers``."""
    from tune_dialsum.models import TINY_DIMENSIONS

    return {**TINY_DIMENSIONS, "d_model": args.d_model, "layers": args.layers, "ffn": 2 * args.d_model}


def bench_model(args, workdir: Path, data_dir: Path, suffix: str = "") -> Path:
    """The bench's tiny model of ``--family`` and ``dimensions(args)`` in ``workdir``, its tokenizer
    trained on ``data_dir``; built on first use."""
    from tune_dialsum.models import ensure_tiny_model

    shape = dimensions(args)
    model_dir = workdir / f"tiny-{args.family}-d{shape['d_model']}-l{shape['layers']}{suffix}"
    return ensure_tiny_model(args.family, model_dir, data_dir=str(data_dir), dimensions=shape)


def dialogsum_subset(args) -> tuple[Path, Path]:
    """(data_dir, model_dir): a DialogSum subset and a tiny model whose tokenizer was trained on it."""
    if args.bed != "dialogsum":
        sys.exit(f"--bed {args.bed}: this benchmark runs on DialogSum only; leave --bed out")
    source = SHARED_DATA / "dialogsum"
    if not (source / "train.jsonl.gz").is_file():
        print(f"skipped: {source} is absent (DialogSum is read from ../shared/data, never copied into the repo)")
        sys.exit(0)
    from tune_dialsum import DialogueDataLoader

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="tune_dialsum_bench_"))
    data_dir = workdir / "data"
    if not (data_dir / "test.jsonl").is_file():
        splits = DialogueDataLoader(source).load_splits()
        data_dir.mkdir(parents=True, exist_ok=True)
        splits["train"].head(args.train_size).to_json(data_dir / "train.jsonl", orient="records", lines=True)
        for split, rows in (("validation", args.validation_size), ("test", args.test_size)):
            splits[split].head(rows).to_json(data_dir / f"{split}.jsonl", orient="records", lines=True)
    return data_dir, bench_model(args, workdir, data_dir)


def bundled_bed(args) -> tuple[Path, Path]:
    """(data_dir, model_dir): the repo's own synthetic dialogues (data/) and a tiny model trained on them.

    The one bed on which a randomly initialised model learns to summarise within a CPU budget (on
    DialogSum it stays input-independent, see BENCHMARKS.md); it needs nothing from ../shared.
    """
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="tune_dialsum_bench_"))
    return REPO / "data", bench_model(args, workdir, REPO / "data", suffix="-bundled")


def bed(args) -> tuple[Path, Path]:
    """(data_dir, model_dir) of the bed ``--bed`` names; settles ``--max-budget``'s default for it."""
    if getattr(args, "max_budget", 0) is None:
        args.max_budget = 6400 if args.bed == "bundled" else 600
    return bundled_bed(args) if args.bed == "bundled" else dialogsum_subset(args)


def search_space(data_dir: Path, model_dir: Path, storage: Path, name: str, args, **overrides) -> dict:
    """The space both sides of a comparison search: learning rate, format, batch size, warm-up.

    On the DialogSum bed a trial's budget is ``--max-budget`` steps with the scheduler settings of the
    first benchmarks; on the bundled bed it is ``--max-budget`` training examples with the space-file
    defaults that the replay chose (BENCHMARKS.md), the lengths and warm-up of the recorded table.
    """
    bundled = args.bed == "bundled"
    scheduler = (
        {"type": "asha", "budget_unit": "samples", "max_budget": args.max_budget}
        if bundled
        else {
            "type": "asha",
            "budget_unit": "steps",
            "max_budget": args.max_budget,
            "grace_period": args.max_budget // 6,
            "reduction_factor": 3,
            "eval_interval": args.max_budget // 6,
        }
    )
    space = {
        "name": name,
        "data": {"path": str(data_dir), "max_eval_samples": args.eval_size},
        "fixed": {
            "model": str(model_dir),
            "max_input_length": 192 if bundled else 256,
            "max_target_length": 48 if bundled else 64,
            "generation_num_beams": 1,
            "weight_decay": 0.01,
            **({"warmup_steps": 20} if bundled else {}),
        },
        "search": {
            "learning_rate": {"loguniform": [1.0e-3, 1.0e-2] if bundled else [3.0e-4, 1.0e-2]},
            "dialogue_format": {"choice": ["standard", "turns", "compact"]},
            "batch_size": {"choice": [8, 16]},
            **({} if bundled else {"warmup_steps": {"int": [0, 60]}}),
        },
        "scheduler": scheduler,
        "trials": {"num_samples": args.trials, "max_concurrent": args.concurrent, "sampler": "tpe"},
        "resources": {"cpus_per_trial": 1},
        "storage_path": str(storage),
        "seed": args.seed,
    }
    for key, value in overrides.items():
        section, _, field = key.partition(".")
        space[section][field] = value
    return space


def one_model_settings(args, model_dir: Path) -> dict:
    """The settings of one model trained on the bed outside a search (lora.py, batch_order.py): the
    lengths, warm-up and weight decay of the search space's fixed part, and ``--batch-size``, ``--dialogue-format``."""
    bundled = args.bed == "bundled"
    return {
        "model": str(model_dir),
        "max_input_length": 192 if bundled else 256,
        "max_target_length": 48 if bundled else 64,
        "batch_size": args.batch_size,
        "dialogue_format": args.dialogue_format,
        "warmup_steps": 20,
        "weight_decay": 0.01,
    }


def run(space_dict: dict):
    """Run one search in this process; returns (outcome, wall seconds)."""
    import logging

    from tune_dialsum.search import run_search
    from tune_dialsum.space import parse_space

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("tune_dialsum.search").setLevel(logging.INFO)  # where the wall time goes
    space = parse_space(space_dict, source=f"<benchmark {space_dict['name']}>")
    start = time.perf_counter()
    outcome = run_search(space)
    return outcome, time.perf_counter() - start


def machine() -> str:
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    return f"{platform.node()} ({os.cpu_count()} cores, {device}), torch {torch.__version__}"


def versions() -> dict[str, str]:
    """The versions a recorded figure depends on."""
    from importlib.metadata import version

    return {name: version(name) for name in ("torch", "transformers", "ray", "optuna", "tune_dialsum")}


def recorded_with(args, **details) -> dict:
    """What a results file records of its run: the command, machine, versions and bed, and ``details``."""
    return {
        "command": " ".join(sys.argv),
        "machine": machine(),
        "versions": versions(),
        "bed": args.bed,
        **details,
    }


def comparison_parser(description: str) -> argparse.ArgumentParser:
    """The flags of a real side-by-side comparison repeated over seeds."""
    p = parser(description)
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--concurrent", type=int, default=2)
    p.add_argument(
        "--max-budget",
        type=int,
        default=None,
        help="a full trial: training steps on DialogSum (default 600), training examples on the bundled bed (6400)",
    )
    p.add_argument("--seed", type=int, default=0, help="the first seed")
    p.add_argument("--seeds", type=int, default=1, help="how many seeds (--seed, --seed + 1, ...)")
    return p


def over_seeds(args, one_seed, after_each=None) -> list:
    """``one_seed(args, data_dir, model_dir, storage)`` for each seed in turn, on one data subset and model;
    ``after_each(runs)`` after every seed (to write what is measured so far: a long run may be cut off)."""
    data_dir, model_dir = bed(args)
    storage = model_dir.parent / "ray_results"
    first, runs = args.seed, []
    for seed in range(first, first + args.seeds):
        args.seed = seed
        runs.append(one_seed(args, data_dir, model_dir, storage))
        if after_each is not None:
            after_each(runs)
    print(f"machine: {machine()}")
    return runs
