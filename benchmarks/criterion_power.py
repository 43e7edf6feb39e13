"""How large an edge "at least the peer's in 4 of 5 seeds" needs, read from recorded comparisons.

Issue 23's criterion counts, over 5 seeds, how often the model our search delivers scores at least the peer's
(its search plus the retrain) on test. Each seed's difference is the systematic edge of one workflow over the
other plus what that seed happened to draw: which configurations each 8-trial search trained to the end, and
the training noise of the model each side delivered. This reads:

- ``--comparisons``: rows of ``vs_transformers.py --json`` runs. For each file, the paired test ROUGE-L difference
  of every seed, its mean and standard deviation over seeds, and the median time ratio. Then every seed once, from
  the last file on the command line that ran it (so give one workflow's files last): the mean difference with its
  t interval over seeds, the standard deviation with its chi-square interval. Files that re-run the same seeds are
  replays, not more seeds: only distinct seeds count towards the spread.
- ``--one-model``: rows of ``batch_order.py --json`` runs (one configuration trained with several seeds): the
  spread of test ROUGE-L over training seeds at each configuration, the noise left when both sides deliver the
  same configuration.

Then, taking a seed's difference as normal around a systematic ``edge`` with the distinct seeds' spread, the chance
of winning one seed and of winning at least ``--wins`` of ``--seeds``, and the edge at which the criterion passes
half the time and 80% of the time, also at the ends of the spread's interval. A model, not a measurement: it says
what size of effect the criterion can see on this bed; the last line prints the edge at 50%.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from collections import defaultdict
from pathlib import Path

EDGES = (0.0, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06)
CONFIDENCE = 0.95


def rows(path: Path) -> list[dict]:
    data = json.loads(path.read_text())
    return data["runs"] if isinstance(data, dict) else data


def difference(row: dict) -> float:
    """Ours - theirs on test, one seed."""
    return row["ours_test"] - row["theirs_test"]


def won(row: dict) -> bool:
    """The criterion's count: our delivered model at least the peer's on test."""
    return difference(row) >= 0


def time_ratio(row: dict) -> float:
    """Our time to a model over the peer's, one seed."""
    return row["ours_model_s"] / row["theirs_model_s"]


def at_least(wins: int, seeds: int, p: float) -> float:
    """The chance of at least ``wins`` successes in ``seeds`` independent tries of chance ``p``."""
    return sum(math.comb(seeds, k) * p**k * (1 - p) ** (seeds - k) for k in range(wins, seeds + 1))


def _bisect(function, target: float, low: float, high: float) -> float:
    """The x in [low, high] where the increasing ``function`` reaches ``target``."""
    for _ in range(100):
        middle = (low + high) / 2
        low, high = (middle, high) if function(middle) < target else (low, middle)
    return high


def edge_for(chance: float, spread: float, wins: int, seeds: int) -> float:
    """The systematic edge (0 or more) at which at least ``wins`` of ``seeds`` are won with ``chance``; 0 where
    a coin per seed already passes that often (6/32 for 4 of 5)."""
    return _bisect(
        lambda edge: at_least(wins, seeds, 1 - statistics.NormalDist(edge, spread).cdf(0)), chance, 0, spread * 10
    )


def _t_within(t: float, df: int) -> float:
    """P(|T| < t) for Student's t with ``df`` (whole) degrees of freedom, in closed form (Abramowitz and Stegun 26.7.3-4)."""
    theta = math.atan(t / math.sqrt(df))
    c2 = math.cos(theta) ** 2
    term, total = 1.0, 1.0
    if df % 2:  # odd: 2/pi (theta + sin cos (1 + 2/3 cos^2 + 2*4/(3*5) cos^4 + ...))
        for k in range(1, (df - 1) // 2):
            term *= 2 * k / (2 * k + 1) * c2
            total += term
        return 2 / math.pi * (theta + (math.sin(theta) * math.cos(theta) * total if df > 1 else 0.0))
    for k in range(1, df // 2):  # even: sin (1 + 1/2 cos^2 + 1*3/(2*4) cos^4 + ...)
        term *= (2 * k - 1) / (2 * k) * c2
        total += term
    return math.sin(theta) * total


def t_quantile(confidence: float, df: int) -> float:
    """The t with P(|T| < t) = ``confidence``: the half-width of a t interval, in standard errors."""
    return _bisect(lambda t: _t_within(t, df), confidence, 0.0, 1e3)


def _chi2_below(x: float, df: int) -> float:
    """P(X < x) for chi-square with ``df`` (whole) degrees of freedom, in closed form (Abramowitz and Stegun 26.4.4-5)."""
    if df % 2 == 0:  # 1 - exp(-x/2) sum_{i < df/2} (x/2)^i / i!
        term, total = 1.0, 1.0
        for i in range(1, df // 2):
            term *= x / 2 / i
            total += term
        return 1 - math.exp(-x / 2) * total
    # odd: 2 Phi(sqrt x) - 1 - sqrt(2x/pi) exp(-x/2) sum_{i < (df-1)/2} x^i / (1*3*...*(2i+1))
    term, total = 1.0, 1.0 if df > 1 else 0.0
    for i in range(1, (df - 1) // 2):
        term *= x / (2 * i + 1)
        total += term
    normal = 2 * statistics.NormalDist().cdf(math.sqrt(x)) - 1
    return normal - math.sqrt(2 * x / math.pi) * math.exp(-x / 2) * total


def chi2_quantile(p: float, df: int) -> float:
    return _bisect(lambda x: _chi2_below(x, df), p, 0.0, 1e3)


def print_comparisons(paths: list[Path]) -> list[dict]:
    """A line per file; returns every seed once, from the last file that ran it."""
    print("comparison | ours - theirs per seed | at least theirs | mean | sd over seeds | time ratio (median)")
    latest = {}
    for path in paths:
        runs = sorted(rows(path), key=lambda r: r["seed"])
        differences = [difference(r) for r in runs]
        sd = f"{statistics.stdev(differences):.4f}" if len(runs) > 1 else "-"
        print(
            f"{path.stem} | {' '.join(f'{d:+.4f}' for d in differences)} | {sum(map(won, runs))} of {len(runs)} | "
            f"{statistics.mean(differences):+.4f} | {sd} | "
            f"{statistics.median(map(time_ratio, runs)):.2f}"
        )
        latest |= {r["seed"]: r | {"file": path.stem} for r in runs}
    return [latest[seed] for seed in sorted(latest)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--comparisons",
        type=Path,
        nargs="+",
        required=True,
        help="vs_transformers.py --json files; one workflow's last",
    )
    p.add_argument("--one-model", type=Path, nargs="*", default=[], help="batch_order.py --json files")
    p.add_argument("--wins", type=int, default=4)
    p.add_argument("--seeds", type=int, default=5)
    args = p.parse_args()

    seeds = print_comparisons(args.comparisons)
    n = len(seeds)
    if n < 2:
        raise SystemExit("error: the comparisons hold one seed; a spread needs at least two distinct seeds")
    differences = [difference(r) for r in seeds]
    mean, spread = statistics.mean(differences), statistics.stdev(differences)
    half_width = t_quantile(CONFIDENCE, n - 1) * spread / math.sqrt(n)
    tail = (1 - CONFIDENCE) / 2
    spread_low, spread_high = (spread * math.sqrt((n - 1) / chi2_quantile(q, n - 1)) for q in (1 - tail, tail))
    ratios = [time_ratio(r) for r in seeds]
    print(
        f"{n} distinct seeds ({', '.join(sorted({r['file'] for r in seeds}))}): ours - theirs {mean:+.4f} "
        f"(95% t interval {mean - half_width:+.4f}..{mean + half_width:+.4f}), sd {spread:.4f} (95% "
        f"{spread_low:.4f}..{spread_high:.4f}), at least theirs in {sum(map(won, seeds))} of {n}, time ratio "
        f"{statistics.median(ratios):.2f} (median; {min(ratios):.2f}..{max(ratios):.2f})"
    )

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

    print(f"edge | P(win a seed) | P(at least {args.wins} of {args.seeds})   (sd {spread:.4f})")
    for edge in EDGES:
        win = 1 - statistics.NormalDist(edge, spread).cdf(0)
        print(f"{edge:+.2f} | {win:.2f} | {at_least(args.wins, args.seeds, win):.2f}")
    for chance in (0.8, 0.5):
        edges = [edge_for(chance, s, args.wins, args.seeds) for s in (spread, spread_low, spread_high)]
        print(
            f"edge the criterion passes {chance:.0%} of the time: {edges[0]:+.4f} ({edges[1]:+.4f}..{edges[2]:+.4f} over the sd's interval)"
        )


if __name__ == "__main__":
    main()
