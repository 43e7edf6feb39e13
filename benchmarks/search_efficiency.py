"""ASHA + Optuna TPE against full-budget random search (FIFO): training spent and best ROUGE-L found.

Same space, same trial count, same data and model. Target: at most 40% of random search's
training steps at 98% or more of its best ROUGE-L. The last line prints both ratios.
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
        trials = Experiment.load(outcome.location).trials
        rows[label] = {"steps": int(trials["step"].sum()), "wall": wall, "best": float(trials["best_rougeL"].max())}
        print(f"seed {args.seed} {label:12s} " + " ".join(f"{k}={v:.4g}" for k, v in rows[label].items()), flush=True)
    ours, theirs = rows["asha+tpe"], rows["random+fifo"]
    return {key: ours[key] / theirs[key] for key in ("steps", "wall", "best")}


def main() -> None:
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--concurrent", type=int, default=2)
    p.add_argument("--max-budget", type=int, default=600, help="training steps of a full trial")
    p.add_argument("--seed", type=int, default=0, help="the first seed")
    p.add_argument("--seeds", type=int, default=1, help="how many seeds (--seed, --seed + 1, ...)")
    args = p.parse_args()
    data_dir, model_dir = _common.dialogsum_subset(args)
    storage = model_dir.parent / "ray_results"
    ratios = []
    for seed in range(args.seed, args.seed + args.seeds):
        args.seed = seed
        ratios.append(one_seed(args, data_dir, model_dir, storage))
    print(f"machine: {_common.machine()}")
    spread = {k: sorted(r[k] for r in ratios) for k in ("steps", "wall", "best")}
    show = lambda k: f"{statistics.median(spread[k]):.2f} (range {spread[k][0]:.2f}..{spread[k][-1]:.2f})"  # noqa: E731
    print(
        f"search_efficiency: steps ratio {show('steps')} (target <= 0.40), best ROUGE-L ratio {show('best')} "
        f"(target >= 0.98), wall ratio {show('wall')}; medians over {len(ratios)} seeds"
    )


if __name__ == "__main__":
    main()
