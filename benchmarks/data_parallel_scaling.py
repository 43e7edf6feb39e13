"""Training examples per second of a data-parallel trial (N workers) against a one-process trial.

The same trial both ways: one fixed configuration (tiny model, bundled dialogues, batch 8 per
device), trained to ``--max-budget`` examples under FIFO (no early stopping), through the whole
search path (Tune, and for N > 1 Ray Train with its workers). Both sides get the same cores: the
one-process trial ``--cpus`` CPUs (torch uses that many threads), each of the N workers
``--cpus / N``. Throughput is measured between a trial's first and last report (examples trained
in between over seconds in between), so Ray Train's start-up (its workers and process group) is
left out; the evaluations in between are in. Repeated ``--repeats`` times, alternating sides; the
last line prints the median ratio N-worker / 1-worker with its range.

On a 2-core machine there is nothing to gain: two 1-thread processes do the work of one 2-thread
process plus a gradient all-reduce (gloo) per step. What the figure shows there is the cost of
that path; on GPUs the same code divides each step's batch over the cards.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402


def trial_throughput(args, data_dir: Path, model_dir: Path, storage: Path, workers: int, repeat: int) -> float:
    """Training examples per second between the first and the last report of one trial."""
    from tune_dialsum.analysis import read_reports

    name = f"scaling-w{workers}-r{repeat}"
    space = _common.search_space(data_dir, model_dir, storage, name, args)
    space["fixed"] |= {"learning_rate": 3e-3, "dialogue_format": "standard", "batch_size": 8}
    space["search"] = {"max_target_length": {"choice": [48]}}  # one configuration
    space["scheduler"] = {"type": "fifo", "budget_unit": "samples", "max_budget": args.max_budget}
    space["scheduler"]["eval_interval"] = args.max_budget // 4
    space["trials"] = {"num_samples": 1}
    space["selection"] = {"top_k": 1}
    space["resources"] = {"workers_per_trial": workers, "cpus_per_worker": args.cpus / workers}
    outcome, _ = _common.run(space)
    (trial_dir,) = Path(outcome.experiment_dir).glob("trial_*")
    reports = read_reports(trial_dir)
    first, last = reports[0], reports[-1]
    assert last["world_size"] == workers, last
    return (last["samples"] - first["samples"]) / (last["time_total_s"] - first["time_total_s"])


def main() -> None:
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=2, help="workers of the data-parallel trial")
    p.add_argument("--cpus", type=float, default=2, help="CPUs each side gets in all")
    p.add_argument("--max-budget", type=int, default=3200, help="training examples per trial")
    p.add_argument("--repeats", type=int, default=3)
    p.set_defaults(bed="bundled", eval_size=16)
    args = p.parse_args()
    args.trials, args.concurrent, args.seed = 1, 1, 0
    data_dir, model_dir = _common.bed(args)
    storage = model_dir.parent / "ray_results"
    ratios = []
    for repeat in range(args.repeats):
        one = trial_throughput(args, data_dir, model_dir, storage, 1, repeat)
        many = trial_throughput(args, data_dir, model_dir, storage, args.workers, repeat)
        ratios.append(many / one)
        print(f"repeat {repeat}: 1 worker {one:.1f} examples/s, {args.workers} workers {many:.1f} examples/s")
    print(f"machine: {_common.machine()}; versions: {_common.versions()}")
    print(
        f"{args.workers} workers / 1 worker, examples per second ({args.cpus:g} CPUs each side, {args.repeats} "
        f"repeats): median {statistics.median(ratios):.2f} (range {min(ratios):.2f}..{max(ratios):.2f})"
    )


if __name__ == "__main__":
    main()
