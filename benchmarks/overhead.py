"""How much of a search's wall time the trial slots spend inside trials.

Search wall time x concurrent slots, against the sum of the trials' own time (Ray's time_total_s:
model loading, training and evaluation). Target: at least 90%. The last line prints the ratio.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402


def main() -> None:
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=4)
    p.add_argument("--concurrent", type=int, default=2)
    p.add_argument("--max-budget", type=int, default=600)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    data_dir, model_dir = _common.dialogsum_subset(args)
    from tune_dialsum.analysis import Experiment

    space = _common.search_space(
        data_dir,
        model_dir,
        model_dir.parent / "ray_results",
        f"overhead-{args.seed}-{int(time.time())}",
        args,
        **{"scheduler.type": "fifo"},
    )
    outcome, wall = _common.run(space)
    trials = Experiment.load(outcome.location).trials
    inside = float(trials["wall_time_s"].sum())
    slots = args.concurrent
    print(f"trials={len(trials)} slots={slots} search wall={wall:.1f}s sum of trial time={inside:.1f}s")
    print(f"machine: {_common.machine()}")
    print(f"overhead: {inside / (wall * slots):.2f} of slot time spent inside trials (target >= 0.90)")


if __name__ == "__main__":
    main()
