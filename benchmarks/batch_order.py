"""How training batches are drawn, measured on what users get: test ROUGE-L and training time of one model.

Each run trains the bench model (``--family``, ``--d-model``, ``--layers``; the bed's data) through the
trainer a trial uses (``DialogueSummarizationTrainer.for_settings``) for ``--steps`` steps, then scores it
greedy on every test row (``metrics.rouge_per_example``). Runs go 2 at a time, one CPU thread each, as
a search's trials do. The orders are the values of the ``batch_order`` setting:

- ``random``: transformers' random sampler (the default, and what the peer of ``vs_transformers.py`` does);
- ``length_grouped``: transformers' ``group_by_length`` (``LengthGroupedSampler``): batches of similar
  length, from mega-batches that each run longest first; what the trainer always did until 2026-12-06.

Every (learning rate, seed) runs every order, so the orders are compared in pairs: the last lines give,
for each order against ``random``, the mean paired difference with a 95% bootstrap interval over the
pairs, how many pairs it wins, and the ratio of training seconds (medians).
"""

from __future__ import annotations

import json
import multiprocessing
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

ORDERS = ("random", "length_grouped")


def one_run(job: dict) -> dict:
    """One model (in a worker process): its training seconds and its mean test ROUGE-L."""
    import torch

    torch.set_num_threads(1)
    from tune_dialsum import DialogueDataLoader
    from tune_dialsum.inference import DialogueSummarizer
    from tune_dialsum.metrics import rouge_per_example
    from tune_dialsum.space_schema import TrialSettings
    from tune_dialsum.train import DialogueSummarizationTrainer

    settings = TrialSettings(**job["settings"], batch_order=job["order"])
    splits = DialogueDataLoader(job["data"]).load_splits()
    trainer = DialogueSummarizationTrainer.for_settings(settings, job["out"], tensorboard=False, data_dir=job["data"])
    datasets = trainer.load_and_prepare_data(splits["train"], val_df=splits["validation"].head(8))
    arguments = trainer.training_arguments(
        settings, max_steps=job["steps"], eval_strategy="no", save_strategy="no", logging_steps=50, seed=job["seed"]
    )
    started = time.perf_counter()
    trainer.train(datasets, training_args=arguments)
    seconds = time.perf_counter() - started
    summarizer = DialogueSummarizer(str(Path(job["out"]) / "final_model"))
    test = splits["test"]
    predictions = summarizer.summarize(list(test["dialogue"]), num_beams=1, max_length=settings.max_target_length)
    each = rouge_per_example(predictions, list(test["summary"]))
    return {"train_seconds": seconds, "test_rougeL": sum(e["rougeL"] for e in each) / len(each), "rows": len(each)}


def paired(runs: list[dict], order: str, against: str = "random") -> dict:
    """``order`` against ``against`` over the (learning rate, seed) pairs both ran: the paired bootstrap
    the search reports differences with (``metrics.paired_difference``), over pairs instead of examples."""
    from tune_dialsum.metrics import paired_difference

    by_key = {(r["order"], r["learning_rate"], r["seed"]): r for r in runs}
    keys = sorted({(lr, s) for o, lr, s in by_key if o == order and (against, lr, s) in by_key})
    ours = [by_key[(order, *k)]["test_rougeL"] for k in keys]
    theirs = [by_key[(against, *k)]["test_rougeL"] for k in keys]
    ratios = [by_key[(order, *k)]["train_seconds"] / by_key[(against, *k)]["train_seconds"] for k in keys]
    difference = paired_difference(ours, theirs)
    diffs = [a - b for a, b in zip(ours, theirs, strict=True)]
    return {
        "pairs": len(diffs),
        "mean_difference": difference.mean,
        "interval": [difference.low, difference.high],
        "range": [min(diffs), max(diffs)],
        "wins": sum(d > 0 for d in diffs),
        "time_ratio": statistics.median(ratios),
    }


def main() -> None:
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=400, help="training steps per run")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--learning-rates", type=float, nargs="+", default=[2.5e-3, 3.54e-3, 5.2e-3, 8e-3])
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--orders", nargs="+", default=list(ORDERS), choices=ORDERS)
    p.add_argument("--dialogue-format", default="standard", choices=["standard", "turns", "compact"])
    p.add_argument("--json", type=Path, default=None, help="write every run here")
    args = p.parse_args()
    args.max_budget = 0  # the bed's own defaults for the rest
    data_dir, model_dir = _common.bed(args)
    base = _common.one_model_settings(args, model_dir)
    scratch = Path(tempfile.mkdtemp(prefix="tune_dialsum_batch_order_"))
    jobs = [
        {
            "order": order,
            "learning_rate": lr,
            "seed": seed,
            "settings": {**base, "learning_rate": lr},
            "out": str(scratch / f"{order}-{lr}-{seed}"),
            "data": str(data_dir),
            "steps": args.steps,
        }
        for seed in range(args.seeds)
        for lr in args.learning_rates
        for order in args.orders
    ]
    runs, meta = [], _common.recorded_with(args, steps=args.steps)
    # maxtasksperchild=1: each run in a fresh process, whatever ran before it
    with multiprocessing.get_context("spawn").Pool(2, maxtasksperchild=1) as pool:
        for job, result in zip(jobs, pool.imap(one_run, jobs), strict=True):
            run = {key: job[key] for key in ("order", "learning_rate", "seed")} | result
            runs.append(run)
            print(json.dumps(run), flush=True)
            if args.json:
                args.json.write_text(json.dumps({"meta": meta, "runs": runs}, indent=1))
    for order in [o for o in args.orders if o != "random" and "random" in args.orders]:
        c = paired(runs, order)
        print(
            f"{order} - random: test ROUGE-L {c['mean_difference']:+.4f} (95% over pairs {c['interval'][0]:+.4f}.."
            f"{c['interval'][1]:+.4f}; range {c['range'][0]:+.4f}..{c['range'][1]:+.4f}), better in {c['wins']} of "
            f"{c['pairs']}; training time {c['time_ratio']:.2f}x random's (median)"
        )
    print(f"machine: {_common.machine()}")


if __name__ == "__main__":
    main()
