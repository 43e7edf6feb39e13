"""Replay searches against recorded learning curves: many seeds in seconds, no training.

The searcher and scheduler are the ones ``search`` builds (``tuner.build_searcher`` /
``tuner.build_scheduler``: Optuna behind the project's OptunaSearch with its PRUNED handling, ASHA
on the best score so far), driven by a simulated clock with ``max_concurrent`` simulated workers.
Instead of training, a trial reads its configuration's curve from a table that
``benchmarks/record_curves.py`` recorded: at each report it hands over the subset score a real
trial would have reported, after the seconds that segment took to train and score. The space's
learning rate stays continuous (as ``search`` samples it) and is read at the nearest recorded rate.

Per policy and seed it measures:

- compute to 1%: training examples spent (over all trials, at the reports so far) until the
  incumbent (the reported checkpoint with the best subset score, what the search believes best)
  scores within 1% of the table's best full-validation score;
- regret: the table's best full-validation score minus that of the checkpoint the search exports
  (the best on full validation among the ``selection.top_k`` best by subset score);
- wall: simulated seconds until the last trial ends.

The last line prints the median compute-to-1% of ours (TPE+ASHA) over random+FIFO and over random+ASHA.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import json
import math
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402,F401  (keeps Ray on loopback should anything start it)

DEFAULT_TABLE = Path(__file__).resolve().parent / "curves" / "bundled-t5.json"  # where the defaults were chosen


class CurveTable:
    """A recorded table: each configuration's rows, looked up by the settings a searcher samples."""

    def __init__(self, path: Path) -> None:
        raw = json.loads(path.read_text())
        self.meta, columns = raw["meta"], raw["columns"]
        self.settings = self.meta["settings"]
        self.curves = {
            self._key(c["config"]): {
                "setup_s": c["setup_s"],
                "rows": [dict(zip(columns, row, strict=True)) for row in c["rows"]],
            }
            for c in raw["curves"]
        }
        configs = [c["config"] for c in raw["curves"]]
        self.learning_rates = sorted({c["learning_rate"] for c in configs})
        self.formats = sorted({c["dialogue_format"] for c in configs})
        self.batch_sizes = sorted({c["batch_size"] for c in configs})
        self.best_full = max(r["full_rougeL"] for c in self.curves.values() for r in c["rows"])
        self.has_loss = "subset_loss" in columns  # tables recorded before issue 23 have ROUGE only
        self.trial_start_s = statistics.median(c["setup_s"] for c in self.curves.values())

    @staticmethod
    def _key(config: dict) -> tuple:
        return (config["learning_rate"], config["dialogue_format"], config["batch_size"])

    def rate_bounds(self) -> tuple[float, float]:
        """The range to sample: half a (log) grid step beyond each end, so each recorded rate is as likely."""
        logs = [math.log(r) for r in self.learning_rates]
        half = (logs[-1] - logs[0]) / (2 * (len(logs) - 1)) if len(logs) > 1 else 0.1
        return math.exp(logs[0] - half), math.exp(logs[-1] + half)

    def nearest_rate(self, rate: float) -> float:
        return min(self.learning_rates, key=lambda r: abs(math.log(r) - math.log(rate)))

    def rows(self, config: dict) -> list[dict]:
        key = (self.nearest_rate(config["learning_rate"]), config["dialogue_format"], config["batch_size"])
        return self.curves[key]["rows"]


def benchmark_space(table: CurveTable, name: str, **overrides) -> object:
    """The space a user would search over this table, parsed by the project's own parser."""
    from tune_dialsum.space import parse_space

    budget = table.settings["budget"]
    raw = {
        "name": name,
        "data": {"path": ".", "max_eval_samples": table.settings["subset"]},
        "fixed": {"model": f"tiny:{table.settings['family']}"},
        "search": {
            "learning_rate": {"loguniform": list(table.rate_bounds())},
            "dialogue_format": {"choice": table.formats},
            "batch_size": {"choice": table.batch_sizes},
        },
        "scheduler": {"type": "asha", "budget_unit": "samples", "max_budget": budget},
        "trials": {"num_samples": 16, "max_concurrent": 2, "sampler": "tpe"},
        "selection": {"top_k": 3},
        "seed": 0,
    }
    for dotted, value in overrides.items():
        section, _, key = dotted.partition(".")
        if key:
            raw[section][key] = value
        else:
            raw[section] = value
    return parse_space(raw, source=f"<replay {name}>")


@dataclass
class _Trial:
    """What Ray's schedulers read of a trial."""

    trial_id: str
    rows: list[dict]
    report_rows: list[int]  # indices into rows at which this trial reports
    reported: int = 0
    best: float = -math.inf
    status: str = "RUNNING"
    config: dict = field(default_factory=dict)


@dataclass
class ReplayResult:
    compute_to_target: float  # training examples; inf where never reached
    time_to_target: float
    regret: float
    wall_s: float
    samples: int
    busy_s: float  # seconds the workers spent in trials (for slot utilization)


def _report_rows(rows: list[dict], eval_interval: int) -> list[int]:
    """Rows at which a trial with this evaluation interval reports: every multiple of it, and the end."""
    before = [0] + [r["samples"] for r in rows[:-1]]
    picked = [i for i, r in enumerate(rows) if r["samples"] // eval_interval > before[i] // eval_interval]
    if picked[-1] != len(rows) - 1:
        picked.append(len(rows) - 1)
    return picked


def replay(table: CurveTable, space, target: float = 0.99) -> ReplayResult:
    """One search over the table; deterministic for a given space (its seed included)."""
    import numpy as np
    from ray.tune.schedulers import TrialScheduler

    from tune_dialsum.experiment_context import experiment_context
    from tune_dialsum.rungs import rung_report
    from tune_dialsum.tuner import build_scheduler, build_searcher

    np.random.seed(space.seed)  # ASHA draws its bracket from numpy's global generator
    context = experiment_context(space)
    if space.scheduler.rung_metric != "objective" and not table.has_loss:
        raise ValueError(f"rung_metric {space.scheduler.rung_metric}: the table has no subset_loss; re-record it")
    searcher, scheduler = build_searcher(space, context), build_scheduler(space, context)
    metric, ranked_by = context.objective.metric, context.ranked_by
    workers = space.trials.max_concurrent or 1
    eval_interval = space.scheduler.eval_interval
    for key in ("eval_interval", "grace_period"):
        if getattr(space.scheduler, key) % table.settings["interval"]:
            raise ValueError(
                f"scheduler.{key} {getattr(space.scheduler, key)} is not a multiple of the table's interval "
                f"{table.settings['interval']}: a trial can only report where the table has a row"
            )
    goal = target * table.best_full

    events: list[tuple[float, int, _Trial]] = []  # (time of the trial's next report, tie-break, trial)
    order = itertools.count()
    started = samples = 0
    busy = 0.0
    reports: list[tuple[float, float]] = []  # (subset score, full score) of every checkpoint reported
    kept: dict[str, list[tuple[float, int, float]]] = {}  # per trial: (subset, samples, full), as Tune keeps them
    incumbent = (-math.inf, -math.inf)
    reached_compute = reached_time = math.inf
    clock = 0.0

    def segment_seconds(trial: _Trial) -> float:
        first = trial.report_rows[trial.reported - 1] + 1 if trial.reported else 0
        last = trial.report_rows[trial.reported]
        return sum(r["train_s"] for r in trial.rows[first : last + 1]) + trial.rows[last]["subset_s"]

    def start(now: float) -> None:
        nonlocal started
        trial_id = f"{started:05d}"
        config = searcher.suggest(trial_id)
        rows = table.rows(config)
        trial = _Trial(trial_id, rows, _report_rows(rows, eval_interval), config=config)
        scheduler.on_trial_add(None, trial)
        started += 1
        heapq.heappush(events, (now + table.trial_start_s + segment_seconds(trial), next(order), trial))

    for _ in range(min(workers, space.trials.num_samples)):
        start(0.0)
    trial_began: dict[str, float] = {}
    while events:
        clock, _, trial = heapq.heappop(events)
        row = trial.rows[trial.report_rows[trial.reported]]
        trial.best = max(trial.best, row["subset_rougeL"])
        result = {metric: row["subset_rougeL"], ranked_by: trial.best, context.time_attr: row["samples"]}
        if table.has_loss:  # what the trainable adds for ASHA, from the same evaluations (rungs.py)
            seen = trial.rows[: trial.report_rows[trial.reported] + 1]
            evaluations = [r for i, r in enumerate(seen) if i in trial.report_rows]
            evaluations = [
                # degenerate: one summary for every validation input (the table counts distinct summaries)
                {
                    "eval_rougeL": r["subset_rougeL"],
                    "eval_loss": r["subset_loss"],
                    "eval_degenerate": r["full_distinct"] <= 1,
                }
                for r in evaluations
            ]
            result |= rung_report(evaluations, row["samples"], space.scheduler, context.objective)
        previous = trial.rows[trial.report_rows[trial.reported - 1]]["samples"] if trial.reported else 0
        samples += row["samples"] - previous
        trial.reported += 1
        reports.append((row["subset_rougeL"], row["full_rougeL"]))
        checkpoints = kept.setdefault(trial.trial_id, [])
        checkpoints.append((row["subset_rougeL"], row["samples"], row["full_rougeL"]))
        checkpoints.sort(key=lambda c: (-c[0], c[1]))
        del checkpoints[space.checkpoints.keep :]
        if row["subset_rougeL"] > incumbent[0]:
            incumbent = (row["subset_rougeL"], row["full_rougeL"])
        if incumbent[1] >= goal and math.isinf(reached_compute):
            reached_compute, reached_time = samples, clock
        # As Tune's controller does: the scheduler decides first; a stopped trial's result reaches
        # the searcher only through on_trial_complete.
        decision = scheduler.on_trial_result(None, trial, result)
        if decision != TrialScheduler.STOP:
            searcher.on_trial_result(trial.trial_id, result)
        finished = trial.reported == len(trial.report_rows)
        if decision == TrialScheduler.STOP or finished:
            trial.status = "TERMINATED"
            scheduler.on_trial_complete(None, trial, result)
            searcher.on_trial_complete(trial.trial_id, result)
            busy += clock - trial_began.pop(trial.trial_id, 0.0)
            if started < space.trials.num_samples:
                trial_began[f"{started:05d}"] = clock
                start(clock)
        else:
            heapq.heappush(events, (clock + segment_seconds(trial), next(order), trial))
    # selection.top_by_subset over the checkpoints Tune kept: best subset score first, ties the earlier step
    top = sorted((c for cs in kept.values() for c in cs), key=lambda c: (-c[0], c[1]))[: space.selection.top_k]
    exported = max(full for _, _, full in top)
    return ReplayResult(reached_compute, reached_time, table.best_full - exported, clock, samples, busy)


# -- the comparison ----------------------------------------------------------------------------

POLICIES = {
    "ours (TPE+ASHA)": {},
    "ours, rungs on objective": {"scheduler.rung_metric": "objective"},
    "ours, rungs on eval_loss": {"scheduler.rung_metric": "eval_loss"},
    "ours, rungs auto (loss, then objective)": {"scheduler.rung_metric": "auto"},
    "random+FIFO": {"trials.sampler": "random", "scheduler.type": "fifo"},
    "random+ASHA": {"trials.sampler": "random"},
    "TPE+FIFO": {"scheduler.type": "fifo"},
}


def variants(budget: int) -> dict[str, dict]:
    """Our policy with one default changed at a time."""
    eighth = budget // 8
    return {
        "ours, TPE start-up 3": {"trials.startup_trials": 3},
        "ours, TPE start-up 5": {"trials.startup_trials": 5},
        "ours, TPE start-up 8": {"trials.startup_trials": 8},
        f"ours, grace {eighth}": {"scheduler.grace_period": eighth, "scheduler.eval_interval": eighth},
        f"ours, grace {2 * eighth}, eval every {eighth}": {
            "scheduler.grace_period": 2 * eighth,
            "scheduler.eval_interval": eighth,
        },
        "ours, first rung at half the budget": {"scheduler.grace_period": budget // 2},
        "ours, reduction factor 2": {"scheduler.reduction_factor": 2},
        "ours, reduction factor 4": {"scheduler.reduction_factor": 4},
        "ours, TPE start-up 3, reduction factor 4": {"trials.startup_trials": 3, "scheduler.reduction_factor": 4},
        "ours, 8 trials": {"trials.num_samples": 8},
        "ours, 24 trials": {"trials.num_samples": 24},
    }


def quartiles(values: list[float]) -> tuple[float, float, float]:
    """(lower quartile, median, upper quartile) by rank: no interpolation, so runs that never
    reached the target (inf) count as the slowest instead of turning the figure into nan."""
    ordered = sorted(values)
    at = lambda q: ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]  # noqa: E731
    return at(0.25), at(0.5), at(0.75)


def fmt(values: list[float], scale: float = 1.0, digits: int = 0) -> str:
    q1, median, q3 = quartiles(values)
    if math.isinf(median):
        return "not reached"
    show = lambda v: "inf" if math.isinf(v) else f"{v / scale:.{digits}f}"  # noqa: E731
    return f"{show(median)} [{show(q1)}, {show(q3)}]"


def compare(table: CurveTable, policies: dict[str, dict], seeds: int, base: dict) -> dict[str, list[ReplayResult]]:
    results = {}
    for label, overrides in policies.items():
        results[label] = [
            replay(table, benchmark_space(table, f"replay-{seed}", **{**base, **overrides, "seed": seed}))
            for seed in range(seeds)
        ]
        print(f"replayed {label} over {seeds} seeds", file=sys.stderr, flush=True)
    return results


def print_table(results: dict[str, list[ReplayResult]], table: CurveTable) -> None:
    print(
        f"{'policy':42s} {'compute to 1% (examples)':>28s} {'reached':>8s} {'regret (ROUGE-L)':>26s} "
        f"{'simulated wall (s)':>22s}"
    )
    for label, runs in results.items():
        reached = sum(math.isfinite(r.compute_to_target) for r in runs)
        print(
            f"{label:42s} {fmt([r.compute_to_target for r in runs]):>28s} {reached:>4d}/{len(runs):<3d} "
            f"{fmt([r.regret for r in runs], digits=4):>26s} {fmt([r.wall_s for r in runs]):>22s}"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--table", type=Path, default=DEFAULT_TABLE)
    p.add_argument("--seeds", type=int, default=30)
    p.add_argument("--trials", type=int, default=16, help="trials per search")
    p.add_argument("--concurrent", type=int, default=2, help="simulated workers")
    p.add_argument("--variants", action="store_true", help="also replay our policy with one default changed")
    p.add_argument("--only", nargs="+", default=None, help="replay only the policies whose label contains one of these")
    p.add_argument("--json", type=Path, default=None, help="write every replay's figures here")
    args = p.parse_args()
    import logging

    logging.getLogger("optuna").setLevel(logging.WARNING)
    table = CurveTable(args.table)
    print(
        f"table {args.table.name}: {len(table.curves)} configurations, best full-validation ROUGE-L "
        f"{table.best_full:.4f}, recorded on {table.meta['machine']} ({table.meta['recorded']})"
    )
    print(f"{args.seeds} seeds per policy, {args.trials} trials per search, {args.concurrent} at once")
    base = {"trials.num_samples": args.trials, "trials.max_concurrent": args.concurrent}
    policies = {**POLICIES, **(variants(table.settings["budget"]) if args.variants else {})}
    if not table.has_loss:  # recorded before issue 23: no loss to rank rungs on
        policies = {label: o for label, o in policies.items() if "scheduler.rung_metric" not in o}
    if args.only:
        # the last line's ratios need ours and both random baselines
        keep = [*args.only, "ours (TPE+ASHA)", "random+FIFO", "random+ASHA"]
        policies = {label: o for label, o in policies.items() if any(k in label for k in keep)}
    results = compare(table, policies, args.seeds, base)
    print_table(results, table)
    if args.json:
        args.json.write_text(
            json.dumps({label: [r.__dict__ for r in runs] for label, runs in results.items()}, indent=1)
        )
    median = lambda label: quartiles([r.compute_to_target for r in results[label]])[1]  # noqa: E731
    ratio = lambda a, b: "n/a" if math.isinf(a) or math.isinf(b) else f"{a / b:.2f}"  # noqa: E731
    ours = median("ours (TPE+ASHA)")
    print(
        f"replay: ours / random+FIFO compute to 1% {ratio(ours, median('random+FIFO'))} (target <= 0.40), "
        f"ours / random+ASHA {ratio(ours, median('random+ASHA'))} (target < 1), medians over {args.seeds} seeds "
        "(n/a: a median run never reached within 1%)"
    )


if __name__ == "__main__":
    main()
