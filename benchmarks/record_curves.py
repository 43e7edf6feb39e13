"""Record real learning curves once, to replay searches against them (benchmarks/replay.py).

Trains every configuration of a grid (learning rate x dialogue format x batch size) to the full
budget with the project's trainer, and at every ``--interval`` training examples scores the model
on the validation subset a search ranks on (the first ``--subset`` rows, as ``max_eval_samples``
cuts them) and on the rest of the bench's validation split, with the seconds each part took. The
table goes to ``benchmarks/curves/<name>.json`` with the machine, the versions and the command that
re-creates it. Configurations run ``--workers`` at a time, one CPU thread each, as trials do.

The last line prints the Spearman correlation between the first rung's subset score and the final
best full-validation score over the grid (what a rung's ranking is worth).
"""

from __future__ import annotations

import json
import math
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timezone
from itertools import product
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

CURVES_DIR = Path(__file__).resolve().parent / "curves"
# One row per evaluation; the table stores rows as lists under these names to stay small.
COLUMNS = (
    "samples",  # training examples seen
    "train_s",  # seconds of training since the previous row
    "subset_s",  # seconds to score the subset (what a trial pays at each report)
    "rest_s",  # seconds to score the rest of validation (what the recording pays on top)
    "train_loss",
    "subset_rougeL",
    "full_rougeL",
    "full_rouge1",
    "full_rouge2",
    "full_rougeLsum",
    "subset_loss",  # teacher-forced validation loss on the subset (no generation: what rung_metric eval_loss ranks on)
    "full_loss",  # the same on the whole validation split
    "full_distinct",  # distinct greedy summaries over the whole validation split (1: one summary for every input)
)
# Subset sizes other than --subset, scored from the same predictions (the first N validation rows),
# to choose max_eval_samples from: their columns are "first<N>_rougeL".
PREFIXES = (10, 20, 80)


def grid(args) -> list[dict]:
    lo, hi, n = math.log(args.lr_min), math.log(args.lr_max), args.learning_rates
    rates = [float(f"{math.exp(lo + i * (hi - lo) / (n - 1)):.3g}") for i in range(n)]
    return [
        {"learning_rate": lr, "dialogue_format": fmt, "batch_size": bs}
        for lr, fmt, bs in product(rates, args.formats, args.batch_sizes)
    ]


def record_one(config: dict, data_dir: str, model_dir: str, args_dict: dict) -> dict:
    """Train one configuration to the full budget; score it at every interval."""
    import torch

    torch.set_num_threads(1)  # one CPU per trial, as the search gives each
    import datasets
    import transformers
    from transformers import TrainerCallback

    from tune_dialsum import DialogueSummarizationTrainer
    from tune_dialsum.data import DialogueDataLoader, training_splits
    from tune_dialsum.metrics import rouge_per_example
    from tune_dialsum.train import decode_for_rouge

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    args = dict(args_dict)
    started = time.perf_counter()
    scratch = tempfile.mkdtemp(prefix="record-")
    trainer = DialogueSummarizationTrainer(
        model_name=model_dir,
        output_dir=scratch,
        max_input_length=args["max_input_length"],
        max_target_length=args["max_target_length"],
        dialogue_format=config["dialogue_format"],
        tensorboard=False,
    )
    splits = DialogueDataLoader(data_dir).load_splits()
    train_df, val_df = training_splits(splits, 0.1, args["seed"], None, args["validation_size"])
    tokenized = trainer.load_and_prepare_data(train_df, val_df=val_df)
    subset = tokenized["validation"].select(range(args["subset"]))
    rest = tokenized["validation"].select(range(args["subset"], len(val_df)))
    batch = config["batch_size"]
    training_args = trainer.get_training_arguments(
        learning_rate=config["learning_rate"],
        batch_size=batch,
        max_steps=math.ceil(args["budget"] / batch),
        warmup_steps=args["warmup_steps"],
        weight_decay=0.01,
        generation_num_beams=1,
        eval_strategy="no",
        save_strategy="no",
        logging_steps=max(1, args["interval"] // batch // 4),
        seed=args["seed"],
    )
    rows: list[list] = []

    class Score(TrainerCallback):
        """At every ``interval`` examples: stop the clock, score subset and rest, start it again."""

        hf_trainer = None
        mark = time.perf_counter()

        def on_step_end(self, targs, state, control, **kwargs):
            seen, before = state.global_step * batch, (state.global_step - 1) * batch
            if seen // args["interval"] == before // args["interval"] and state.global_step < state.max_steps:
                return
            train_s = time.perf_counter() - self.mark
            scores, seconds, losses, texts = {}, {}, {}, []
            for name, part in (("subset", subset), ("rest", rest)):
                t0 = time.perf_counter()
                output = self.hf_trainer.predict(part)
                predictions, references = decode_for_rouge(trainer.tokenizer, output.predictions, output.label_ids)
                scores[name] = rouge_per_example(predictions, references)
                losses[name] = output.metrics["test_loss"]  # computed in the same pass, before generating
                texts += predictions
                seconds[name] = time.perf_counter() - t0
            full = scores["subset"] + scores["rest"]
            mean = lambda rows, key: sum(r[key] for r in rows) / len(rows)  # noqa: E731
            train_losses = [e["loss"] for e in state.log_history if "loss" in e]
            full_loss = (losses["subset"] * len(subset) + losses["rest"] * len(rest)) / (len(subset) + len(rest))
            rows.append(
                [
                    seen,
                    round(train_s, 2),
                    round(seconds["subset"], 2),
                    round(seconds["rest"], 2),
                    round(train_losses[-1], 4) if train_losses else None,
                    round(mean(scores["subset"], "rougeL"), 5),
                    *(round(mean(full, key), 5) for key in ("rougeL", "rouge1", "rouge2", "rougeLsum")),
                    round(losses["subset"], 5),
                    round(full_loss, 5),
                    len(set(texts)),
                    *(round(mean(full[:n], "rougeL"), 5) for n in PREFIXES),
                ]
            )
            self.mark = time.perf_counter()

    callback = Score()
    hf_trainer = trainer.build_trainer(tokenized, training_args, callbacks=[callback])
    callback.hf_trainer = hf_trainer
    setup_s = time.perf_counter() - started
    callback.mark = time.perf_counter()
    try:
        hf_trainer.train()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)  # the trainer's output directory: nothing in it is kept
    return {"config": config, "setup_s": round(setup_s, 2), "rows": rows}


def spearman(xs: list[float], ys: list[float]) -> float:
    """Rank correlation (ties get their mean rank); pandas' own method="spearman" needs scipy."""
    import pandas as pd

    return float(pd.Series(xs).rank().corr(pd.Series(ys).rank()))


def main() -> None:
    p = _common.parser(__doc__.splitlines()[0])
    p.set_defaults(eval_size=40)
    p.add_argument("--validation-size", type=int, default=120, help="the bench's whole validation split")
    p.add_argument("--budget", type=int, default=3200, help="training examples of a full trial")
    p.add_argument("--interval", type=int, default=400, help="training examples between two evaluations")
    p.add_argument("--learning-rates", type=int, default=6)
    p.add_argument("--lr-min", type=float, default=6e-4)
    p.add_argument("--lr-max", type=float, default=1.5e-2)
    p.add_argument("--formats", nargs="+", default=["standard", "turns", "compact"])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 16])
    p.add_argument("--max-input-length", type=int, default=256)
    p.add_argument("--max-target-length", type=int, default=64)
    p.add_argument("--warmup-steps", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--limit", type=int, default=None, help="record only the first N configurations (a smoke run)")
    p.add_argument("--out", type=Path, default=None, help="default: benchmarks/curves/<bed>-<family>.json")
    args = p.parse_args()
    args.subset = args.eval_size
    if args.budget % args.interval:
        p.error(f"--budget {args.budget} must be a multiple of --interval {args.interval}")
    data_dir, model_dir = _common.bed(args)
    if args.bed == "bundled":
        described = (
            f"the repo's synthetic dialogues (data/): all train rows, first {args.validation_size} validation rows"
        )
        args.train_size = None  # the bundled bed trains on every row of data/train.jsonl
    else:
        described = f"DialogSum: first {args.train_size} train rows, first {args.validation_size} validation rows"
    configs = grid(args)[: args.limit]
    settings = {
        key: getattr(args, key)
        for key in (
            "train_size",
            "validation_size",
            "subset",
            "budget",
            "interval",
            "max_input_length",
            "max_target_length",
            "warmup_steps",
            "seed",
            "family",
            "d_model",
            "layers",
            "bed",
        )
    }
    print(f"recording {len(configs)} configurations, {args.workers} at a time, on {_common.machine()}")
    start = time.perf_counter()
    curves = []
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        futures = [pool.submit(record_one, c, str(data_dir), str(model_dir), settings) for c in configs]
        for future in futures:
            curve = future.result()
            curves.append(curve)
            last = curve["rows"][-1]
            print(f"{json.dumps(curve['config'])}: full rougeL {last[COLUMNS.index('full_rougeL')]:.4f}", flush=True)
    wall = time.perf_counter() - start
    table = {
        "meta": {
            "recorded": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": _common.machine(),
            "python": platform.python_version(),
            "versions": _common.versions(),
            "command": "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__), *sys.argv[1:]]),
            "data": described,
            "settings": settings,
            "workers": args.workers,
            "wall_s": round(wall, 1),
        },
        "columns": [*COLUMNS, *(f"first{n}_rougeL" for n in PREFIXES)],
        "curves": curves,
    }
    out = args.out or CURVES_DIR / f"{args.bed}-{args.family}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(table, separators=(",", ":")) + "\n")
    first = [c["rows"][0][COLUMNS.index("subset_rougeL")] for c in curves]
    final = [max(r[COLUMNS.index("full_rougeL")] for r in c["rows"]) for c in curves]
    print(f"wrote {out} ({len(curves)} curves, {wall:.0f} s)")
    print(f"record_curves: Spearman(first evaluation on the subset, best full validation) {spearman(first, final):.2f}")


if __name__ == "__main__":
    main()
