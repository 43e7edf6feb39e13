"""ASHA + Optuna TPE against full-budget random search (FIFO): training spent and best ROUGE-L found.

Same space, same trial count, same data and model. Target: at most 40% of random search's
training steps at 98% or more of its best ROUGE-L. The last line prints both ratios.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402


def main() -> None:
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--concurrent", type=int, default=2)
    p.add_argument("--max-budget", type=int, default=600, help="training steps of a full trial")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    data_dir, model_dir = _common.dialogsum_subset(args)
    storage = model_dir.parent / "ray_results"
    from tune_dialsum.analysis import Experiment

    rows = {}
    for label, overrides in (("asha+tpe", {}), ("random+fifo", {"scheduler.type": "fifo", "trials.sampler": "random"})):
        name = f"efficiency-{label.replace('+', '-')}-{args.seed}-{int(time.time())}"
        outcome, wall = _common.run(_common.search_space(data_dir, model_dir, storage, name, args, **overrides))
        trials = Experiment.load(outcome.location).trials
        rows[label] = (int(trials["step"].sum()), wall, float(trials["best_rougeL"].max()))
        print(f"{label:12s} steps={rows[label][0]:6d} wall={wall:7.1f}s best_rougeL={rows[label][2]:.4f}")
    (asha_steps, asha_wall, asha_best), (rand_steps, rand_wall, rand_best) = rows["asha+tpe"], rows["random+fifo"]
    print(f"machine: {_common.machine()}")
    print(f"wall time ratio {asha_wall / rand_wall:.2f}")
    print(
        f"search_efficiency: steps ratio {asha_steps / rand_steps:.2f} (target <= 0.40), "
        f"best ROUGE-L ratio {asha_best / rand_best:.3f} (target >= 0.98)"
    )


if __name__ == "__main__":
    main()
