"""How large an edge "at least the peer's in 4 of 5 seeds" needs, read from recorded comparisons.

Issue 23's criterion counts, over 5 seeds, how often the model our search delivers scores at least the peer's
(its search plus the retrain) on test. Each seed's difference is the systematic edge of one workflow over the
other plus what that seed happened to draw: which configurations each 8-trial search trained to the end, and
the training noise of the model each side delivered. This reads:

- ``--comparisons``: rows of ``vs_transformers.py --json`` runs; for each file, the paired test ROUGE-L
  difference of every seed, its mean and its standard deviation over seeds (the spread a verdict is drawn from);
- every seed once, from the last file that ran it: the mean paired difference over seeds with its bootstrap
  interval, the question the 4-of-5 count asks with less noise;
- ``--one-model``: rows of ``batch_order.py --json`` runs (one configuration trained with several seeds); the
  standard deviation of test ROUGE-L over training seeds at each configuration: the noise left when both sides
  deliver the same configuration.

Then, taking a seed's difference as normal with mean ``edge`` and the pooled spread of the comparisons, the
chance of winning one seed and of winning at least ``--wins`` of ``--seeds``, for edges from 0 to 0.06, and the
edge at which the criterion is passed half the time and 80% of the time. A model, not a measurement: it says what
size of effect the criterion can see on this bed; the last line prints that edge at 50%.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from collections import defaultdict
from pathlib import Path

EDGES = (0.0, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06)


def rows(path: Path) -> list[dict]:
    data = json.loads(path.read_text())
    return data["runs"] if isinstance(data, dict) else data


def at_least(wins: int, seeds: int, p: float) -> float:
    """The chance of at least ``wins`` successes in ``seeds`` independent tries of chance ``p``."""
    return sum(math.comb(seeds, k) * p**k * (1 - p) ** (seeds - k) for k in range(wins, seeds + 1))


def edge_for(chance: float, spread: float, wins: int, seeds: int) -> float:
    """The systematic edge at which at least ``wins`` of ``seeds`` are won with ``chance`` (bisection)."""
    low, high = 0.0, 10 * spread
    for _ in range(60):
        middle = (low + high) / 2
        win = 1 - statistics.NormalDist(middle, spread).cdf(0)
        low, high = (middle, high) if at_least(wins, seeds, win) < chance else (low, middle)
    return high


def print_distinct_seeds(paths: list[Path]) -> None:
    """Each seed once (its row in the last file that ran it): the mean paired difference over the seeds, with the
    bootstrap over seeds the other benchmarks use over pairs (``metrics.paired_difference``), and the count of wins."""
    from tune_dialsum.metrics import paired_difference

    latest = {r["seed"]: r for path in paths for r in rows(path)}
    runs = [latest[seed] for seed in sorted(latest)]
    difference = paired_difference([r["ours_test"] for r in runs], [r["theirs_test"] for r in runs])
    ratios = [r["ours_model_s"] / r["theirs_model_s"] for r in runs]
    print(
        f"seeds {min(latest)}-{max(latest)}, each once: ours - theirs {difference.mean:+.4f} (95% over seeds "
        f"{difference.low:+.4f}..{difference.high:+.4f}), at least theirs in "
        f"{sum(r['ours_test'] >= r['theirs_test'] for r in runs)} of {len(runs)}, time ratio {statistics.median(ratios):.2f}"
        f" (median; {min(ratios):.2f}..{max(ratios):.2f})"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--comparisons", type=Path, nargs="+", required=True, help="vs_transformers.py --json files")
    p.add_argument("--one-model", type=Path, nargs="*", default=[], help="batch_order.py --json files")
    p.add_argument("--wins", type=int, default=4)
    p.add_argument("--seeds", type=int, default=5)
    args = p.parse_args()

    print("comparison | ours - theirs per seed | at least theirs | mean | sd over seeds | time ratio (median)")
    variances = []
    for path in args.comparisons:
        runs = sorted(rows(path), key=lambda r: r["seed"])
        differences = [r["difference"][0] for r in runs]
        ratios = [r["ours_model_s"] / r["theirs_model_s"] for r in runs]
        sd = statistics.stdev(differences)
        variances.append(sd**2)
        print(
            f"{path.stem} | {' '.join(f'{d:+.4f}' for d in differences)} | {sum(d >= 0 for d in differences)} of "
            f"{len(differences)} | {statistics.mean(differences):+.4f} | {sd:.4f} | {statistics.median(ratios):.2f}"
        )
    spread = math.sqrt(statistics.mean(variances))
    print(f"pooled sd of a seed's difference: {spread:.4f} (over {len(variances)} files; seeds repeat across files)")
    print_distinct_seeds(args.comparisons)

    by_configuration = defaultdict(list)
    for path in args.one_model:
        for r in rows(path):
            by_configuration[(path.stem, r["learning_rate"])].append(r["test_rougeL"])
    for (name, rate), scores in sorted(by_configuration.items()):
        if len(scores) > 1:
            print(
                f"{name} lr {rate:g}: test ROUGE-L over {len(scores)} training seeds {min(scores):.4f}..{max(scores):.4f}"
                f", sd {statistics.stdev(scores):.4f}"
            )

    print(f"edge | P(win a seed) | P(at least {args.wins} of {args.seeds})")
    for edge in EDGES:
        win = 1 - statistics.NormalDist(edge, spread).cdf(0)
        print(f"{edge:+.2f} | {win:.2f} | {at_least(args.wins, args.seeds, win):.2f}")
    half, most = (edge_for(c, spread, args.wins, args.seeds) for c in (0.5, 0.8))
    print(f"edge for 80%: {most:+.4f}")
    print(f"edge the criterion passes half the time: {half:+.4f} (sd {spread:.4f})")


if __name__ == "__main__":
    main()
