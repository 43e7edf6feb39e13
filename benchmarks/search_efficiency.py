"""ASHA + Optuna TPE against full-budget random search (FIFO): training spent and best ROUGE-L found.

Same space, same trial count, same data and model. Target: at most 40% of random search's
training (steps on DialogSum, examples on ``--bed bundled``) at 98% or more of its best ROUGE-L.
The last line prints both ratios.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402


def one_seed(args, data_dir: Path, model_dir: Path, storage: Path) -> dict:
    """Both searches with ``args.seed``: training spent, wall time and best ROUGE-L of each."""
    from tune_dialsum.analysis import Experiment

    rows = {}
    for label, overrides in (("asha+tpe", {}), ("random+fifo", {"scheduler.type": "fifo", "trials.sampler": "random"})):
        name = f"efficiency-{label.replace('+', '-')}-{args.seed}-{int(time.time())}"
        outcome, wall = _common.run(_common.search_space(data_dir, model_dir, storage, name, args, **overrides))
        experiment = Experiment.load(outcome.location)
        trials = experiment.trials  # the budget spent in the space's unit: steps on DialogSum, examples on bundled
        rows[label] = {
            "spent": int(trials[experiment.time_attr].sum()),
            "wall": wall,
            "best": float(trials["best_rougeL"].max()),
        }
        print(f"seed {args.seed} {label:12s} " + " ".join(f"{k}={v:.4g}" for k, v in rows[label].items()), flush=True)
    ours, theirs = rows["asha+tpe"], rows["random+fifo"]
    return {key: ours[key] / theirs[key] for key in ("spent", "wall", "best")}


def main() -> None:
    args = _common.comparison_parser(__doc__.splitlines()[0]).parse_args()
    ratios = _common.over_seeds(args, one_seed)
    spread = {k: sorted(r[k] for r in ratios) for k in ("spent", "wall", "best")}
    show = lambda k: f"{statistics.median(spread[k]):.2f} (range {spread[k][0]:.2f}..{spread[k][-1]:.2f})"  # noqa: E731
    print(
        f"search_efficiency: training ratio {show('spent')} (target <= 0.40), best ROUGE-L ratio {show('best')} "
        f"(target >= 0.98), wall ratio {show('wall')}; medians over {len(ratios)} seeds"
    )


if __name__ == "__main__":
    main()
