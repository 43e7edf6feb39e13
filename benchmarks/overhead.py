"""How much of a search's wall time the trial slots spend inside trials, and where the rest goes.

Search wall time x concurrent slots, against the sum of the trials' own time (Ray's time_total_s:
model loading, training and evaluation). Target: at least 90%. The slot time outside trials is split
by each trial's last report: its end (Ray's ``timestamp``, whole seconds) and its start (that minus
``time_total_s``). Result handling and the checkpoints saved with every report but the last fall inside
``time_total_s``, so they count as trial time here:

- before: from the call to the first trial starting (preflight, Ray start, Tune set-up, worker start);
- between: the mean gap from the end of a trial to the start of the one that waited for its slot
  (scheduling, result handling, trial clean-up and start on a reused worker);
- after: from the last trial's end to the search's return (re-scoring the top checkpoints on the whole
  validation split, export, Ray shutdown).

By default it searches the DialogSum bench with FIFO; ``--bed bundled --max-budget 19200`` makes
trials of about 2.5 minutes; ``--space FILE`` measures any space file instead, e.g. the demo's.
The last line prints the ratio.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402


def slot_breakdown(curves, slots: int, began: float, ended: float) -> dict[str, float]:
    """Where the slot time went, from every trial's last report (its end, and its start: end minus
    ``time_total_s``): before the first trial, the mean gap before a trial that waited for a slot
    (the i-th start waits for the (i - slots)-th end), inside trials, and after the last trial."""
    last = curves.groupby("trial_id").tail(1)
    ends = sorted(float(t) for t in last["timestamp"])
    starts = sorted(float(t) for t in last["timestamp"] - last["time_total_s"])
    gaps = [max(0.0, starts[i] - ends[i - slots]) for i in range(slots, len(starts))]
    return {
        "before": max(0.0, starts[0] - began),
        "between_per_trial": sum(gaps) / len(gaps) if gaps else 0.0,
        "inside": float(last["time_total_s"].sum()),
        "after": max(0.0, ended - ends[-1]),
    }


def main() -> None:
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=4)
    p.add_argument("--concurrent", type=int, default=2)
    p.add_argument("--max-budget", type=int, default=None, help="steps on DialogSum (600), examples on --bed bundled")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--space", type=Path, default=None, help="a space file to measure instead of the bench")
    args = p.parse_args()
    import yaml

    from tune_dialsum.analysis import Experiment

    name = f"overhead-{args.seed}-{int(time.time())}"
    if args.space:
        space = {**yaml.safe_load(args.space.read_text()), "name": name}
        space["storage_path"] = str(Path(args.workdir or "/tmp") / "overhead_results")
        data = space.setdefault("data", {})
        data["path"] = str((_common.REPO / data.get("path", "data")).resolve())
    else:
        data_dir, model_dir = _common.bed(args)
        storage = model_dir.parent / "ray_results"
        space = _common.search_space(data_dir, model_dir, storage, name, args, **{"scheduler.type": "fifo"})
    began = time.time()
    outcome, wall = _common.run(space)
    ended = time.time()
    experiment = Experiment.load(outcome.location)
    trials, slots = len(experiment.trials), outcome.at_once
    parts = slot_breakdown(experiment.curves, slots, began, ended)
    inside = parts["inside"]
    print(
        f"trials={trials} slots={slots} search wall={wall:.1f}s sum of trial time={inside:.1f}s "
        f"(mean {inside / trials:.1f}s a trial)"
    )
    print(
        f"slot time outside trials: before the first {parts['before']:.1f}s, "
        f"between trials {parts['between_per_trial']:.1f}s per trial, after the last {parts['after']:.1f}s"
    )
    print(f"machine: {_common.machine()}")
    print(f"overhead: {inside / (wall * slots):.2f} of slot time spent inside trials (target >= 0.90)")


if __name__ == "__main__":
    main()
