"""Trace the search space through one search: which modules receive it, in what order.

Run from the repository root (it runs a small search on the demo space, in this process):

    python docs/design/space_walk.py OUT_DIR

Every call into a tune_dialsum function that takes the space (a ``space`` argument) is recorded in
order; repeats of one module in a row are one visit. Printed: the walk, the modules it enters,
how often it returns to a module it left ("re-entries"), and how often it steps to a module that
tests/test_layering.py places below the one it leaves and then back up ("climbs back up").
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def main(out: str) -> None:
    from tests.conftest import TINY, mechanics_sets
    from tests.test_layering import ORDER
    from tune_dialsum.search import run_search
    from tune_dialsum.space import load_space

    sets = ["trials.num_samples=2", "scheduler.type=fifo", "scheduler.budget_unit=steps", "scheduler.max_budget=20"]
    sets += ["scheduler.eval_interval=20", "scheduler.grace_period=20", "selection.top_k=2", f"storage_path={out}"]
    sets += ["search.model={choice: ['tiny:t5']}", "name=walk", *mechanics_sets()]
    space = load_space(TINY, sets)
    walk: list[str] = []

    def profile(frame, event, arg):
        if event != "call" or "space" not in frame.f_code.co_varnames[: frame.f_code.co_argcount]:
            return
        module = frame.f_globals.get("__name__", "")
        if module.startswith("tune_dialsum") and frame.f_locals.get("space") is space:
            name = module.removeprefix("tune_dialsum.")
            if not walk or walk[-1] != name:
                walk.append(name)

    sys.setprofile(profile)
    try:
        run_search(space)
    finally:
        sys.setprofile(None)
    place = {m: i for i, m in enumerate(ORDER)}
    upward = sum(1 for a, b in zip(walk, walk[1:], strict=False) if place.get(b, -1) > place.get(a, -1))
    downward = len(walk) - 1 - upward
    reentries = len(walk) - len(set(walk))
    print(" -> ".join(walk))
    print(f"{len(set(walk))} modules, {len(walk)} visits, {reentries} re-entries, {upward} steps up the layers")
    print(f"(and {downward} down)")


if __name__ == "__main__":
    main(sys.argv[1])
