"""What ASHA's rungs compare: the objective, the validation loss, or the loss until the last rung.

Greedy ROUGE on a hundred validation summaries zig-zags from one evaluation to the next while the
teacher-forced loss falls smoothly (BENCHMARKS.md, "Rung signals"); a rung that ranks on the
zig-zag stops trials on noise. ``scheduler.rung_metric`` says which signal ranks:

- ``objective``: the objective's best value so far (``best_<metric>``), as before;
- ``eval_loss``: the lowest validation loss so far;
- ``auto``: the lowest loss at every rung below the last, the objective's best at the last.

For the last two, a trial reports :data:`~tune_dialsum.contract.RUNG_SCORE`, higher is better,
which ASHA ranks on in ``max`` mode. An evaluation whose greedy output is degenerate (empty, or one
summary for every input) gives no ROUGE credit there: it is left out of the best so far, and a trial
with nothing else counts as 0. Pure functions, no Ray: the
trainable and the replay benchmark call the same ones.
"""

from __future__ import annotations

import math

from tune_dialsum.contract import RUNG_SCORE, best
from tune_dialsum.space_schema import ObjectiveSection, SchedulerSection


def scheduler_target(scheduler: SchedulerSection, objective: ObjectiveSection, ranked_by: str) -> tuple[str, str]:
    """(result key, mode) that ASHA ranks on."""
    if scheduler.rung_metric == "objective":
        return ranked_by, objective.mode
    return RUNG_SCORE, "max"


def uses_loss(scheduler: SchedulerSection, objective: ObjectiveSection, budget: float) -> bool:
    """Whether the rung a report at ``budget`` reaches is ranked on the loss."""
    if scheduler.rung_metric == "eval_loss" or objective.metric == "eval_loss":
        return True
    if scheduler.rung_metric == "auto":
        rungs = scheduler.rungs
        return bool(rungs) and budget < rungs[-1]
    return False


def best_score(evaluations: list[dict], metric: str, mode: str, skip_degenerate: bool = False) -> float:
    """The best finite ``eval_<metric>`` over ``evaluations`` (transformers' log entries); NaN where none.

    ``skip_degenerate``: an evaluation flagged ``eval_degenerate`` is left out.
    """
    key = metric if metric.startswith("eval_") else f"eval_{metric}"
    values = [
        e[key]
        for e in evaluations
        if key in e and math.isfinite(e[key]) and not (skip_degenerate and e.get("eval_degenerate"))
    ]
    return best(values, mode)


def rung_report(evaluations: list[dict], budget: float, scheduler: SchedulerSection, objective) -> dict:
    """What a report adds for ASHA: ``best_eval_loss`` always, and ``rung_score`` where it ranks."""
    best_loss = best_score(evaluations, "eval_loss", "min")
    report = {"best_eval_loss": best_loss}
    if scheduler.rung_metric == "objective":
        return report
    if uses_loss(scheduler, objective, budget):
        report[RUNG_SCORE] = -best_loss
    else:
        best = best_score(evaluations, objective.metric, objective.mode, skip_degenerate=True)
        sign = 1.0 if objective.mode == "max" else -1.0
        report[RUNG_SCORE] = sign * best if math.isfinite(best) else 0.0  # only degenerate output: no credit
    return report
