"""Trace the search space through one search: which modules receive it, from where, in what order.

Run from the repository root (it runs a small search on the demo space, in this process):

    python docs/design/space_walk.py OUT_DIR [PIPELINE_MODULE]

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
# The stages after the trials (tests/test_layering.py); the readers below them are called at will.
STAGES = {"outcome", "selection", "refit", "decoding", "export", "scoring", "report"}
sys.path.insert(0, str(REPO))


def main(out: str, pipeline: str = "finish") -> None:
    from tests.conftest import TINY, mechanics_sets
    from tune_dialsum.search import run_search
    from tune_dialsum.space import load_space

    sets = ["trials.num_samples=2", "scheduler.type=fifo", "scheduler.budget_unit=steps", "scheduler.max_budget=20"]
    sets += ["scheduler.eval_interval=20", "scheduler.grace_period=20", "selection.top_k=2", f"storage_path={out}"]
    sets += ["search.model={choice: ['tiny:t5']}", "name=walk", *mechanics_sets()]
    space = load_space(TINY, sets)
    walk: list[str] = []
    entries: Counter = Counter()  # (caller module, entered module) -> times
    functions: dict[tuple[str, str], list[str]] = {}  # (caller module, entered module) -> the functions entered
    order: list[tuple[str, str]] = []
    stages: list[str] = []  # the modules the pipeline's module calls directly, in order
    stack: list[tuple[object, str]] = [(None, "run_search")]  # (frame, module) of the calls holding the space

    def holds_space(frame) -> bool:
        if frame.f_locals.get("self") is space:  # the space's own methods are the space, not a stage
            return False
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
        callee = frame.f_globals["__name__"].removeprefix("tune_dialsum.")
        if frame.f_back is not None and frame.f_back.f_globals.get("__name__") == f"tune_dialsum.{pipeline}":
            # a stage's functions; not the methods of the records they return (a choice's as_dict, say)
            if callee in STAGES and callee != pipeline and "." not in frame.f_code.co_qualname:
                stages.append(f"{callee}.{frame.f_code.co_name}")
        if not holds_space(frame):
            return
        module = frame.f_globals["__name__"].removeprefix("tune_dialsum.")
        caller = stack[-1][1]
        if module != caller:
            entries[(caller, module)] += 1
            functions.setdefault((caller, module), []).append(frame.f_code.co_name)
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
        print(f"  {caller} -> {module}: {entries[(caller, module)]} ({', '.join(functions[(caller, module)])})")
    entered = Counter(module for _, module in entries.elements())
    print(f"{sum(entries.values())} entries into {len(entered)} modules; entered more than once: ", end="")
    print(", ".join(f"{m} ({n})" for m, n in entered.items() if n > 1) or "none")
    print(f"the after-trials pipeline ({pipeline}.py) calls into the stages: " + " -> ".join(stages))
    visits = [m for i, m in enumerate(s.split(".")[0] for s in stages) if i == 0 or stages[i - 1].split(".")[0] != m]
    print(f"{len(visits)} visits to {len(set(visits))} stage modules, {len(visits) - len(set(visits))} returns to one")


if __name__ == "__main__":
    main(*sys.argv[1:3])
