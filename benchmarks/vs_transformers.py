"""tune_dialsum search against transformers' own Trainer.hyperparameter_search(backend="ray").

Same data, model, learning-rate / batch-size / warm-up space (no warm-up on ``--bed bundled``; ``--batch-sizes``
with one value fixes the batch size), trial count, budget (in examples on the bundled bed: see ``_trial_budget``),
concurrency and an ASHA scheduler on both sides (transformers' Ray backend samples at random; ours uses TPE). Measured:

- what users get: each side's **time to a usable model** and that model's **test ROUGE-L** on every test
  row, scored by the same code (``scoring.score_model``, greedy as each model's generation config
  says), with its 95% bootstrap interval and the paired difference. Both clocks start before Ray does and
  before each side prepares its data.
  Ours: the search as ``search`` runs it, until its exported model is written (the search then scores it on
  test; that whole wall time is recorded too). The peer's: its search, then the next step transformers' docs
  give its users, a retrain with ``best_run.hyperparameters`` (a Trainer built with them, ``train()``: see ``_retrain``;
  it runs in a Ray worker, and the clock counts its own span there, as a retrain in the user's process would take);
- with ``--refit``, ours with ``selection.refit: true``; the test score of the checkpoint it would have
  exported without the refit is measured too, and its time is the search's minus the refit's;
- as before, the time from each search's start until it first reaches the best subset ROUGE-L both reach.

Both sides search the same space unless ``--search-format``: then ours also searches how a dialogue is
written (``dialogue_format``), which a user of tune_dialsum has and the peer's user does not.

The last line prints, over the seeds, how often our delivered test ROUGE-L is at least the peer's and the
median ratio of our time to a model over theirs (the issue's target: >= the peer's in 4 of 5 seeds at
<= 0.6 of its time).
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402


def best_so_far_timeline(experiment_dir: Path, metric_key: str, start: float) -> list[tuple[float, float]]:
    """(seconds since start, best score so far) at every report of every trial, in time order."""
    events = []
    for result_file in experiment_dir.glob("*/result.json"):
        for line in result_file.read_text().splitlines():
            row = json.loads(line)
            if metric_key in row:
                events.append((row["timestamp"] - start, row[metric_key]))
    timeline, best = [], float("-inf")
    for t, score in sorted(events):
        best = max(best, score)
        timeline.append((t, best))
    return timeline


def last_trial_alone_s(experiment_dir: Path) -> float:
    """Seconds from the end of the second-last trial to the end of the last: the tail in which a slot has no
    trial left to take it (what the re-scoring during the trials can use), from the trials' ``result.json``."""
    ends = sorted(
        json.loads(lines[-1])["timestamp"]
        for lines in (f.read_text().splitlines() for f in experiment_dir.glob("*/result.json"))
        if lines
    )
    return ends[-1] - ends[-2] if len(ends) > 1 else 0.0


def time_to(timeline, target: float) -> float:
    return next(t for t, best in timeline if best >= target - 1e-12)


def _retrain(make_trainer, hyperparameters: dict, model_dir: str) -> tuple[float, float]:
    """``best_run.hyperparameters`` set in the training arguments, a trainer built with them, trained, saved.

    transformers' example sets them on an existing trainer's ``args`` (``setattr(trainer.args, n, v)``),
    while its text says to set them before the Trainer is created; only the latter trains the chosen batch
    size: a Trainer reads ``per_device_train_batch_size`` when it is built (``_train_batch_size``), and
    only a search trial reads it again. The trainer is built here, in the worker: accelerate's state is
    per process, and a trainer unpickled into another process finds none.

    Returns when it began and ended (``time.time()``): a user retrains in the process that searched, with
    torch imported and the data in memory, so the peer's clock counts this span, not the worker's start."""
    began = time.time()
    trainer = make_trainer(hyperparameters)
    trainer.train()
    trainer.save_model(model_dir)
    trainer.processing_class.save_pretrained(model_dir)
    return began, time.time()


def _counts_epochs(scheduler, batch_searched: bool) -> bool:
    """Whether the peer's budget is in epochs (see ``_trial_budget``); exits where it cannot match ours."""
    if scheduler.budget_unit != "samples" or not batch_searched:
        return False
    if scheduler.eval_interval >= scheduler.max_budget:  # transformers reads a ratio of 1 as "every step"
        sys.exit("a trial that evaluates once cannot be compared here: --max-budget above scheduler.eval_interval")
    return True


def _trial_budget(scheduler, batch: int, batch_searched: bool, train_rows: int) -> dict:
    """The peer's trial budget and evaluation points, as TrainingArguments, equal to ours.

    transformers counts a budget in steps or epochs, never in examples. Where ours counts steps (the
    DialogSum bed) so does the peer. Where ours counts examples (the bundled bed) and the batch size is
    fixed, its steps are our examples / batch. Where the batch size is searched too, a step budget would
    give a batch-8 trial half the examples of a batch-16 one (or the batch-16 trial twice the work): the
    peer's user counts epochs instead and evaluates at fractions of the run (``eval_steps`` below 1 is a
    ratio of the run's steps), so every batch size trains our examples and reports at our rungs.
    """
    if _counts_epochs(scheduler, batch_searched):
        every = scheduler.eval_interval / scheduler.max_budget
        return {
            "max_steps": -1,
            "num_train_epochs": scheduler.max_budget / train_rows,
            "eval_steps": every,
            "save_steps": every,
            "logging_steps": every,
        }
    per_step = batch if scheduler.budget_unit == "samples" else 1
    step = scheduler.eval_interval // per_step
    return {
        "max_steps": scheduler.max_budget // per_step,
        "eval_steps": step,
        "save_steps": step,
        "logging_steps": step,
    }


def run_transformers(data_dir: Path, model_dir: Path, storage: Path, args, space) -> tuple[Path, float, Path, dict]:
    """transformers' own search over what ``space`` (ours, parsed) searches, as alike as it allows:
    the same learning-rate range, lengths, budget, evaluations and ASHA rungs."""
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from transformers import AutoModelForSeq2SeqLM, DataCollatorForSeq2Seq, Seq2SeqTrainer, Seq2SeqTrainingArguments

    from tune_dialsum import DialogueDataLoader, DialogueSummarizationTrainer

    fixed, scheduler = space.fixed, space.scheduler
    # the clock starts before the peer's user loads the tokenizer and tokenizes the data, as ours includes
    # our search's own preparation; and before Ray starts: hyperparameter_search starts Ray (through
    # tune.run) when a user has not, so its user waits for that too
    start = time.time()
    ours = DialogueSummarizationTrainer(
        str(model_dir),
        str(storage / "hf-scratch"),
        max_input_length=fixed["max_input_length"],
        max_target_length=fixed["max_target_length"],
        dialogue_format="standard",
    )
    splits = DialogueDataLoader(data_dir).load_splits()
    datasets = ours.load_and_prepare_data(splits["train"], val_df=splits["validation"].head(args.eval_size))
    batch = fixed.get("batch_size", 8)
    budget = _trial_budget(scheduler, batch, "batch_size" in space.search, len(datasets["train"]))
    hp_space = {"learning_rate": tune.loguniform(*space.search["learning_rate"].bounds)}
    if "batch_size" in space.search:
        hp_space["per_device_train_batch_size"] = tune.choice(list(space.search["batch_size"].args))
    if "warmup_steps" in space.search:
        low, high = space.search["warmup_steps"].bounds
        hp_space["warmup_steps"] = tune.randint(low, high + 1)
    training_args = Seq2SeqTrainingArguments(
        output_dir=str(storage / "hf-scratch"),
        per_device_train_batch_size=batch,
        warmup_steps=fixed.get("warmup_steps", 0),
        eval_strategy="steps",
        save_strategy="steps",
        **budget,
        predict_with_generate=True,
        generation_num_beams=1,
        generation_max_length=fixed["max_target_length"],
        weight_decay=0.01,
        report_to="none",
        disable_tqdm=True,
        # Trainer seeds numpy with this, and Ray's random sampler draws from numpy: without it every
        # seed of this benchmark replays transformers' same 42-seeded search
        seed=args.seed,
    )

    def make_trainer(hyperparameters: dict | None = None):
        return Seq2SeqTrainer(
            model_init=lambda *_: AutoModelForSeq2SeqLM.from_pretrained(str(model_dir)),
            args=dataclasses.replace(training_args, **(hyperparameters or {})),
            train_dataset=datasets["train"],
            eval_dataset=datasets["validation"],
            processing_class=ours.tokenizer,
            data_collator=DataCollatorForSeq2Seq(ours.tokenizer, padding=True),
            compute_metrics=ours.compute_metrics,
        )

    trainer = make_trainer()
    ray.init(include_dashboard=False, log_to_driver=False)
    rungs = dict(  # in reports (Ray's training_iteration): one per evaluation, as ours
        max_t=scheduler.max_budget // scheduler.eval_interval,
        grace_period=max(1, scheduler.grace_period // scheduler.eval_interval),
        reduction_factor=scheduler.reduction_factor,
    )
    best_run = trainer.hyperparameter_search(
        hp_space=lambda _: hp_space,
        backend="ray",
        n_trials=args.trials,
        direction="maximize",
        compute_objective=lambda m: m["eval_rougeL"],
        scheduler=ASHAScheduler(metric="objective", mode="max", **rungs),
        resources_per_trial={"cpu": 1},
        max_concurrent_trials=args.concurrent,
        storage_path=str(storage),
        name=f"transformers-{args.seed}-{int(start)}",
        verbose=0,
    )
    searched = time.time()
    # what transformers' docs tell its users to do next: train the best hyperparameters again. In a
    # worker process with the whole machine (as in the driver): a retrain in the driver leaves state behind
    # that the next seed's search cannot pickle
    # (model_init reads model_dir when the retrain calls it: the retrained model gets a name of its own)
    retrained_dir = storage / f"transformers-{args.seed}-{int(start)}-model"
    retrain = ray.remote(_retrain).options(num_cpus=args.concurrent)
    began, ended = ray.get(retrain.remote(make_trainer, best_run.hyperparameters, str(retrained_dir)))
    ray.shutdown()
    (retrained_dir / "tune_dialsum.json").write_text(json.dumps(ours.recipe))  # the same input format, for scoring
    timing = {
        "search_s": searched - start,
        # the search, then the retrain as it runs in the user's process: not the worker's start, its imports
        # and the data's trip there (``worker_start_s``), nor Ray's shutdown, which a user need not wait for
        "model_s": searched - start + ended - began,
        "retrain_s": ended - began,
        "worker_start_s": began - searched,
        "hyperparameters": best_run.hyperparameters,
    }
    return storage / f"transformers-{args.seed}-{int(start)}", start, retrained_dir, timing


def test_scores(models: list[tuple[Path | str, dict | None]], space) -> list[dict]:
    """Each (model, decoding or None for its generation config)'s scores on every test row, by the one
    scoring function, with per-example ROUGE."""
    from tune_dialsum.experiment_context import experiment_context
    from tune_dialsum.scoring import score_model

    context = experiment_context(space)
    return [score_model(str(m), context, "test", generation, per_example=True) for m, generation in models]


def one_seed(args, data_dir: Path, model_dir: Path, storage: Path) -> dict:
    """Both searches with ``args.seed``: each side's delivered model, its time and test score; the time to
    the common best subset score."""
    space = _common.search_space(data_dir, model_dir, storage, f"vs-transformers-{args.seed}-{int(time.time())}", args)
    if not args.search_format:  # the same space on both sides: transformers' search cannot change the data format
        space["fixed"]["dialogue_format"] = "standard"
        del space["search"]["dialogue_format"]
    if len(args.batch_sizes) == 1:  # on both sides
        space["fixed"]["batch_size"] = args.batch_sizes[0]
        del space["search"]["batch_size"]
    else:
        space["search"]["batch_size"] = {"choice": args.batch_sizes}
    if args.refit:
        space["selection"] = {"refit": True}
    if args.rung_metric:
        space["scheduler"]["rung_metric"] = args.rung_metric
    from tune_dialsum.space import parse_space

    parsed = parse_space(space, source="<vs_transformers>")
    _counts_epochs(parsed.scheduler, "batch_size" in parsed.search)  # before our search, not after it
    start = time.time()
    outcome, ours_wall = _common.run(space)
    ours = best_so_far_timeline(outcome.experiment_dir, "rougeL", start)
    # a model is there to use once the export is written (its generation config is written last, and only
    # then); the search goes on to score it on test, which the peer's clock does not include
    ours_model_s = (outcome.best_model_dir / "generation_config.json").stat().st_mtime - start

    hf_dir, hf_start, hf_model, hf_timing = run_transformers(data_dir, model_dir, storage, args, parsed)
    theirs = best_so_far_timeline(hf_dir, "eval_rougeL", hf_start)

    from tune_dialsum.generation import trial_decoding
    from tune_dialsum.metrics import paired_difference

    # greedy up to the target length on both sides: the peer's saved generation config knows nothing of it
    greedy = {"num_beams": 1, "max_length": parsed.fixed["max_target_length"]}
    delivered = [(outcome.best_model_dir, None), (hf_model, greedy)]
    chosen_dir = None
    if outcome.refit is not None:  # the checkpoint it would have exported without the refit, decoded as ranked
        chosen_dir = outcome.refit_of
        config = next(c for c in outcome.candidates if c.record.path == chosen_dir).record.snapshot["config"]
        delivered.append((chosen_dir, trial_decoding(config)))
    scored = test_scores(delivered, parsed)
    ours_test, theirs_test = scored[0], scored[1]
    versus = paired_difference(ours_test["per_example"]["rougeL"], theirs_test["per_example"]["rougeL"])
    refit_s = outcome.refit.seconds if outcome.refit is not None else 0.0
    row = {
        "seed": args.seed,
        "ours_model_s": ours_model_s,
        "ours_search_s": ours_wall,  # to the end of the search: the export scored on test, the summary written
        "ours_test": ours_test["rougeL"],
        "ours_interval": ours_test["intervals"]["rougeL"],
        "theirs_model_s": hf_timing["model_s"],
        "theirs_search_s": hf_timing["search_s"],
        "theirs_retrain_s": hf_timing["retrain_s"],
        "theirs_retrain_worker_start_s": hf_timing["worker_start_s"],  # not counted in theirs_model_s
        "theirs_test": theirs_test["rougeL"],
        "theirs_interval": theirs_test["intervals"]["rougeL"],
        "difference": versus.as_list(),
        "test_examples": ours_test["examples"],
        "degenerate": {"ours": ours_test["degenerate"], "theirs": theirs_test["degenerate"]},
        # what each side delivered: our chosen checkpoint's settings and step, the peer's best_run
        "ours_chosen": {**_searched(outcome.best.snapshot.get("config", {}), parsed), "step": outcome.best.step},
        "theirs_chosen": hf_timing["hyperparameters"],
        "refit": None,
        # how much of our re-scoring ran beside the last trials (early_rescoring.py), and how long they ran alone
        "scored_during_trials": sum(c.scored_during_trials for c in outcome.candidates),
        "candidates": len(outcome.candidates),
        "last_trial_alone_s": last_trial_alone_s(outcome.experiment_dir),
    }
    if chosen_dir is not None:
        row["refit"] = {
            "exported": outcome.refit.exported,
            "chosen_test": scored[2]["rougeL"],
            "refit_s": refit_s,
            "without_refit_model_s": ours_model_s - refit_s,
        }
    print(
        f"seed {args.seed}: delivered test ROUGE-L ({ours_test['examples']} rows): tune_dialsum {ours_test['rougeL']:.4f} "
        f"{_interval(ours_test)} in {ours_model_s:.0f} s; transformers (search + retrain) {theirs_test['rougeL']:.4f} "
        f"{_interval(theirs_test)} in {hf_timing['model_s']:.0f} s; ours - theirs {versus.mean:+.4f} "
        f"[{versus.low:+.4f}, {versus.high:+.4f}]",
        flush=True,
    )
    print(
        f"seed {args.seed}: {row['scored_during_trials']} of {row['candidates']} candidates scored beside the last "
        f"trials; the last trial trained alone for {row['last_trial_alone_s']:.0f} s",
        flush=True,
    )
    if row["refit"]:
        print(
            f"seed {args.seed}: refit exported {outcome.refit.exported}; without it the chosen checkpoint scores "
            f"{scored[2]['rougeL']:.4f} on test, delivered in {ours_model_s - refit_s:.0f} s (refit {refit_s:.0f} s)",
            flush=True,
        )

    target = min(ours[-1][1], theirs[-1][1])
    ours_t, theirs_t = time_to(ours, target), time_to(theirs, target)
    print(
        f"seed {args.seed}: tune_dialsum best ROUGE-L {ours[-1][1]:.4f}, model exported at {ours_model_s:.1f}s, "
        f"search wall {ours_wall:.1f}s"
    )
    print(f"seed {args.seed}: transformers best ROUGE-L {theirs[-1][1]:.4f}, {theirs[-1][0]:.1f}s to its last report")
    print(
        f"seed {args.seed}: common target ROUGE-L {target:.4f}: tune_dialsum reached it at {ours_t:.1f}s, "
        f"transformers at {theirs_t:.1f}s; {theirs_t / ours_t:.2f}x",
        flush=True,
    )
    return {"ratio": theirs_t / ours_t, "ours_best": ours[-1][1], "theirs_best": theirs[-1][1], **row}


def _searched(config: dict, space) -> dict:
    """The settings of ``config`` that the space searches."""
    return {name: value for name, value in config.items() if name in space.search}


def _interval(scores: dict) -> str:
    low, high = scores["intervals"]["rougeL"]
    return f"[{low:.4f}, {high:.4f}]"


def _spread(values: list[float], digits: int = 4) -> str:
    ordered = sorted(values)
    return f"{statistics.median(ordered):.{digits}f} (range {ordered[0]:.{digits}f}..{ordered[-1]:.{digits}f})"


def main() -> None:
    p = _common.comparison_parser(__doc__.splitlines()[0])
    p.add_argument("--refit", action="store_true", help="ours with selection.refit: true (and without, measured)")
    p.add_argument("--rung-metric", default=None, help="ours with this scheduler.rung_metric (default: the space's)")
    p.add_argument(
        "--search-format",
        action="store_true",
        help="ours searches the dialogue format too (standard, turns, compact), as the bundled spaces do; the peer "
        "keeps standard: its search cannot change how a dialogue is written",
    )
    p.add_argument(
        "--batch-sizes",
        type=int,
        nargs="+",
        default=[8, 16],
        help="the batch sizes both sides search (one: both train it; bundled runs before commit a2ba0f6 fixed 16)",
    )
    p.add_argument("--json", type=Path, default=None, help="write every seed's row here")
    args = p.parse_args()

    def write(runs):
        if args.json:
            args.json.write_text(json.dumps(runs, indent=1, default=str))

    runs = _common.over_seeds(args, one_seed, after_each=write)
    wins = sum(r["ours_test"] >= r["theirs_test"] for r in runs)
    time_ratio = [r["ours_model_s"] / r["theirs_model_s"] for r in runs]
    print(
        f"vs_transformers: delivered test ROUGE-L ours {_spread([r['ours_test'] for r in runs])} vs theirs "
        f"{_spread([r['theirs_test'] for r in runs])}; ours >= theirs in {wins}/{len(runs)} seeds; time to a model "
        f"ours / theirs {_spread(time_ratio, 2)} (target: >= in 4 of 5 at <= 0.6)"
    )
    refitted = [r for r in runs if r.get("refit")]
    if refitted:
        without = [r["refit"]["chosen_test"] for r in refitted]
        print(
            f"vs_transformers: refit exported in {sum(r['refit']['exported'] for r in refitted)}/{len(refitted)}; "
            f"without the refit: test ROUGE-L {_spread(without)}, >= theirs in "
            f"{sum(w >= r['theirs_test'] for w, r in zip(without, refitted, strict=True))}/{len(refitted)}, time to a "
            f"model / theirs {_spread([r['refit']['without_refit_model_s'] / r['theirs_model_s'] for r in refitted], 2)}"
        )
    ratios = sorted(r["ratio"] for r in runs)
    wins = sum(r["ours_best"] >= r["theirs_best"] for r in runs)
    print(
        f"vs_transformers: median {statistics.median(ratios):.2f}x faster to the common best "
        f"(range {ratios[0]:.2f}..{ratios[-1]:.2f}, {len(runs)} seeds; target >= 2); "
        f"our best >= theirs in {wins}/{len(runs)}, median best {statistics.median(r['ours_best'] for r in runs):.4f} "
        f"vs {statistics.median(r['theirs_best'] for r in runs):.4f}"
    )


if __name__ == "__main__":
    main()
