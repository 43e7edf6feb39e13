"""Trace the search space through one search: which modules receive it, from where, in what order.

Run from the repository root (it runs a small search on the demo space, in this process):

    python docs/design/space_walk.py OUT_DIR

A call holds the space when one of its arguments is the space object or holds it as ``.space`` (a
stage's ``self``). Each such call into a tune_dialsum module other than its caller's is an *entry*
into that module, from the nearest calling module that holds the space. Printed: the flat walk (a
visit per run of calls in one module), and the tree of entries with how often each module was entered
from each caller: "each stage once, in order" reads as a tree where every module appears once.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def main(out: str) -> None:
    from tests.conftest import TINY, mechanics_sets
    from tune_dialsum.search import run_search
    from tune_dialsum.space import load_space

    sets = ["trials.num_samples=2", "scheduler.type=fifo", "scheduler.budget_unit=steps", "scheduler.max_budget=20"]
    sets += ["scheduler.eval_interval=20", "scheduler.grace_period=20", "selection.top_k=2", f"storage_path={out}"]
    sets += ["search.model={choice: ['tiny:t5']}", "name=walk", *mechanics_sets()]
    space = load_space(TINY, sets)
    walk: list[str] = []
    entries: Counter = Counter()  # (caller module, entered module) -> times
    order: list[tuple[str, str]] = []
    stack: list[tuple[object, str]] = [(None, "run_search")]  # (frame, module) of the calls holding the space

    def holds_space(frame) -> bool:
        for name in frame.f_code.co_varnames[: frame.f_code.co_argcount]:
            value = frame.f_locals.get(name)
            if value is space or getattr(value, "space", None) is space:
                return True
        return False

    def profile(frame, event, arg):
        if event == "return" and stack[-1][0] is frame:
            stack.pop()
        if event != "call" or not frame.f_globals.get("__name__", "").startswith("tune_dialsum"):
            return
        if not holds_space(frame):
            return
        module = frame.f_globals["__name__"].removeprefix("tune_dialsum.")
        caller = stack[-1][1]
        if module != caller:
            entries[(caller, module)] += 1
            if (caller, module) not in order:
                order.append((caller, module))
        stack.append((frame, module))
        if not walk or walk[-1] != module:
            walk.append(module)

    sys.setprofile(profile)
    try:
        run_search(space)
    finally:
        sys.setprofile(None)
    print("walk: " + " -> ".join(walk))
    print(f"{len(set(walk))} modules, {len(walk)} visits, {len(walk) - len(set(walk))} returns to a module")
    print("entries (caller -> module: times), in order of the first:")
    for caller, module in order:
        print(f"  {caller} -> {module}: {entries[(caller, module)]}")
    entered = Counter(module for _, module in entries.elements())
    print(f"{sum(entries.values())} entries into {len(entered)} modules; entered more than once: ", end="")
    print(", ".join(f"{m} ({n})" for m, n in entered.items() if n > 1) or "none")


if __name__ == "__main__":
    main(sys.argv[1])
