"""Deciding on signals that are not noise (issue 23), without Ray: intervals, degenerate output, the tie
rule among re-scored checkpoints, and what ASHA's rungs rank on."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest

from tune_dialsum.checkpoints import CheckpointRecord
from tune_dialsum.contract import RUNG_SCORE
from tune_dialsum.metrics import bootstrap_interval, is_degenerate, paired_difference
from tune_dialsum.rungs import rung_report, scheduler_target
from tune_dialsum.selection import Candidate, choose, ranked, within_noise
from tune_dialsum.space import parse_space
from tune_dialsum.space_schema import ObjectiveSection, SchedulerSection


def test_bootstrap_interval_matches_the_binomial_distribution_of_the_resampled_mean():
    # Resampling [0, 0, 1, 1] four times with replacement gives a mean of k/4, k ~ Binomial(4, 1/2):
    # P(0) = 1/16, P(<= 1/4) = 5/16, P(<= 3/4) = 15/16. So the 2.5th and 97.5th percentiles are 0 and 1,
    # the 10th and 90th are 1/4 and 3/4.
    assert bootstrap_interval([0, 0, 1, 1]) == (0.0, 1.0)
    assert bootstrap_interval([0, 0, 1, 1], confidence=0.8) == (0.25, 0.75)
    assert bootstrap_interval([0.3] * 7) == pytest.approx((0.3, 0.3))
    assert bootstrap_interval([0.1, 0.9, 0.4]) == bootstrap_interval([0.1, 0.9, 0.4])  # seeded


def test_paired_difference_sees_a_constant_gain_that_unpaired_intervals_would_hide():
    rng = random.Random(0)
    b = [rng.random() for _ in range(100)]
    a = [x + 0.02 for x in b]
    difference = paired_difference(a, b)
    assert difference.mean == pytest.approx(0.02)
    assert (difference.low, difference.high) == pytest.approx((0.02, 0.02))
    assert not difference.within_noise
    # the two means' own intervals overlap almost entirely
    assert bootstrap_interval(a)[0] < bootstrap_interval(b)[1]
    shuffled = b[:]
    rng.shuffle(shuffled)
    assert paired_difference(b, shuffled).within_noise
    with pytest.raises(ValueError, match="same examples"):
        paired_difference([1.0], [1.0, 2.0])


@pytest.mark.parametrize(
    "predictions, degenerate",
    [(["", "  "], True), (["Tom calls.", "Tom calls.", "Tom calls."], True), (["a", "b"], False), (["a"], False)],
)
def test_empty_output_or_one_summary_for_every_input_is_degenerate(predictions, degenerate):
    assert is_degenerate(predictions) is degenerate


def _candidate(trial: str, step: int, per_example: list[float], loss: float, degenerate: bool = False) -> Candidate:
    record = CheckpointRecord(Path(f"/x/{trial}/{step}"), trial, step, {"rougeL": 0.5, "loss": loss}, {})
    mean = sum(per_example) / len(per_example)
    return Candidate(record, 0.5, {"rougeL": mean, "degenerate": degenerate}, per_example)


def _noisy(rng, centre: float, n: int = 100) -> list[float]:
    return [min(1.0, max(0.0, rng.gauss(centre, 0.2))) for _ in range(n)]


def _plus(rng, base: list[float], gain: float, noise: float = 0.1) -> list[float]:
    """``base`` + ``gain`` on average, with per-example noise of mean exactly 0."""
    jitter = [rng.gauss(0, noise) for _ in base]
    centre = sum(jitter) / len(jitter)
    return [x + gain + j - centre for x, j in zip(base, jitter, strict=True)]


def test_within_noise_of_its_best_a_trial_is_represented_by_its_lower_loss_and_later_checkpoint():
    rng = random.Random(1)
    base = _noisy(rng, 0.4)
    lucky_early = _candidate("a", 100, _plus(rng, base, 0.01), loss=3.9)
    later_lower = _candidate("a", 400, _plus(rng, base, 0.005), loss=3.5)
    same_loss_later = _candidate("a", 500, base, loss=3.5)
    candidates = [lucky_early, later_lower, same_loss_later]
    assert lucky_early.full["rougeL"] > max(later_lower.full["rougeL"], same_loss_later.full["rougeL"])
    order = ranked(candidates, "rougeL", "max")
    assert order[0] is same_loss_later  # loss 3.5 twice: the later step
    assert [c.record.step for c in order[1:]] == [100, 400]  # the others by score
    assert within_noise(candidates)
    assert lucky_early.versus_leader.mean == 0 and later_lower.versus_leader.within_noise


def test_between_trials_within_noise_the_better_score_decides_not_the_loss():
    # across learning rates a lower loss does not mean better summaries (BENCHMARKS.md, "The tie rule")
    rng = random.Random(4)
    base = _noisy(rng, 0.4)
    better = _candidate("a", 400, _plus(rng, base, 0.005), loss=0.62)
    lower_loss = _candidate("b", 400, base, loss=0.55)
    early_of_b = _candidate("b", 300, _plus(rng, base, 0.008), loss=0.60)  # b's best, within noise of its last
    candidates = [lower_loss, early_of_b, better]
    assert early_of_b.full["rougeL"] > better.full["rougeL"] > lower_loss.full["rougeL"]
    order = ranked(candidates, "rougeL", "max")
    assert within_noise(candidates) and better.versus_leader.within_noise and lower_loss.versus_leader.within_noise
    # b stands as its settled step 400 (lower loss than its lucky step 300), which a's better score beats
    assert order == [better, lower_loss, early_of_b]
    assert choose(candidates, "rougeL", "max") is better


def test_degenerate_checkpoints_come_last_even_where_one_stands_for_its_trial():
    rng = random.Random(8)
    base = _noisy(rng, 0.4)
    constant = _candidate("a", 400, [x + 0.2 for x in base], loss=1.0, degenerate=True)  # all of trial a
    best_of_b = _candidate("b", 400, [x + 0.1 for x in base], loss=2.0)
    worse_of_b = _candidate("b", 100, base, loss=3.0)  # beyond the noise of b's best
    # the decoding stage studies the first k of this order: a degenerate one must not push a real one out
    assert ranked([constant, worse_of_b, best_of_b], "rougeL", "max") == [best_of_b, worse_of_b, constant]


def test_where_lower_is_better_the_lower_score_decides_between_trials():
    rng = random.Random(9)
    base = _noisy(rng, 0.4)
    lower = _candidate("a", 400, base, loss=0.7)
    higher_lower_loss = _candidate("b", 400, _plus(rng, base, 0.004), loss=0.5)
    order = ranked([higher_lower_loss, lower], "rougeL", "min")
    assert higher_lower_loss.versus_leader.within_noise and order == [lower, higher_lower_loss]


def test_a_difference_beyond_the_noise_decides_whatever_the_loss():
    rng = random.Random(2)
    base = _noisy(rng, 0.3)
    better = _candidate("a", 100, [x + 0.05 for x in base], loss=4.0)
    worse = _candidate("b", 900, base, loss=3.0)
    assert choose([worse, better], "rougeL", "max") is better
    assert not within_noise([worse, better])
    assert worse.as_dict("rougeL")["difference_from_leader"][1] > 0  # its interval excludes 0


def test_degenerate_output_is_not_ranked_on_rouge():
    rng = random.Random(3)
    constant = _candidate("a", 100, _noisy(rng, 0.6), loss=2.0, degenerate=True)  # a lucky fixed sentence
    real = _candidate("b", 100, _noisy(rng, 0.3), loss=3.0)
    assert choose([constant, real], "rougeL", "max") is real
    both = [constant, _candidate("c", 200, _noisy(rng, 0.7), loss=1.5, degenerate=True)]
    assert choose(both, "rougeL", "max").record.trial_id == "c"  # none summarizes: the lower loss


# -- what the rungs rank on ---------------------------------------------------------------------


def _scheduler(rung_metric: str) -> SchedulerSection:
    return SchedulerSection(
        type="asha", budget_unit="samples", max_budget=6400, grace_period=1600, eval_interval=1600,
        rung_metric=rung_metric,
    )  # fmt: skip


def test_asha_rungs_are_rays_milestones_below_the_budget():
    assert _scheduler("auto").rungs == [1600, 4800]
    assert SchedulerSection(type="fifo", max_budget=100, grace_period=25).rungs == []


EVALUATIONS = [
    {"eval_rougeL": 0.30, "eval_loss": 4.0, "eval_degenerate": 0.0},
    {"eval_rougeL": 0.45, "eval_loss": 3.8, "eval_degenerate": 1.0},  # a fluke of one fixed summary
    {"eval_rougeL": 0.35, "eval_loss": 3.5, "eval_degenerate": 0.0},
]


def test_rung_score_is_the_loss_below_the_last_rung_and_the_objective_at_it_under_auto():
    objective = ObjectiveSection("rougeL", "max")
    assert rung_report(EVALUATIONS, 1600, _scheduler("auto"), objective) == {
        "best_eval_loss": 3.5,
        RUNG_SCORE: -3.5,
    }
    at_last = rung_report(EVALUATIONS, 4800, _scheduler("auto"), objective)
    assert at_last[RUNG_SCORE] == 0.35  # the degenerate 0.45 gives no credit
    assert rung_report(EVALUATIONS, 4800, _scheduler("eval_loss"), objective)[RUNG_SCORE] == -3.5
    assert RUNG_SCORE not in rung_report(EVALUATIONS, 4800, _scheduler("objective"), objective)
    only_degenerate = [dict(EVALUATIONS[1])]
    assert rung_report(only_degenerate, 4800, _scheduler("auto"), objective)[RUNG_SCORE] == 0.0
    assert scheduler_target(_scheduler("auto"), objective, "best_rougeL") == (RUNG_SCORE, "max")
    assert scheduler_target(_scheduler("objective"), objective, "best_rougeL") == ("best_rougeL", "max")


def test_a_loss_objective_with_a_loss_rung_metric_ranks_the_lowest_loss_first():
    space = parse_space(
        {
            "data": {"path": "data"},
            "objective": {"metric": "eval_loss"},
            "fixed": {"model": "tiny:t5"},
            "search": {"learning_rate": {"loguniform": [1e-4, 1e-2]}},
            "scheduler": {
                "budget_unit": "samples",
                "max_budget": 6400,
                "grace_period": 1600,
                "rung_metric": "eval_loss",
            },
        },
        source="<test>",
    )
    assert space.scheduler.rung_metric == "eval_loss" and space.mode == "min"
    objective = ObjectiveSection("eval_loss", "min")
    assert rung_report(EVALUATIONS, 4800, space.scheduler, objective)[RUNG_SCORE] == -3.5
    for rung_metric in ("auto", "objective"):
        report = rung_report(EVALUATIONS, 4800, _scheduler(rung_metric), objective)
        assert report["best_eval_loss"] == 3.5 and report.get(RUNG_SCORE, -3.5) == -3.5
    assert not math.isnan(report["best_eval_loss"])


def test_an_unknown_rung_metric_is_refused_with_the_choices():
    from tune_dialsum.errors import SpaceError

    with pytest.raises(SpaceError, match=r"scheduler.rung_metric: must be one of objective, eval_loss, auto"):
        parse_space(
            {
                "fixed": {"model": "tiny:t5"},
                "search": {"learning_rate": {"loguniform": [1e-4, 1e-2]}},
                "scheduler": {"max_budget": 100, "rung_metric": "bleu"},
            },
            source="<t>",
        )


# -- the refit ----------------------------------------------------------------------------------


def _refit_scores(per_example: list[float], degenerate: bool = False) -> dict:
    mean = sum(per_example) / len(per_example)
    return {"rougeL": mean, "degenerate": degenerate, "per_example": {"rougeL": per_example}}


@pytest.mark.parametrize(
    "gain, degenerate, exported",
    [(0.0, False, True), (0.03, False, True), (-0.001, False, False), (0.2, True, False)],
)
def test_the_refit_is_exported_only_where_it_scores_at_least_as_well(gain, degenerate, exported):
    from tune_dialsum.refit import judge

    rng = random.Random(4)
    chosen = _candidate("a", 100, _noisy(rng, 0.4), loss=3.0)
    record = CheckpointRecord(Path("/x/refit/final"), "refit", 800, {"rougeL": 0.4}, {})
    refit_scores = _refit_scores([x + gain for x in chosen.per_example], degenerate)
    result = judge(record, refit_scores, chosen, "rougeL", "max")
    assert result.exported is exported
    assert result.versus_chosen.mean == pytest.approx(gain)
    assert "per_example" not in result.full  # never written into tuning.json
    recorded = result.as_dict("rougeL", chosen)
    assert recorded["exported"] is exported and recorded["chosen_full_validation"] == chosen.full["rougeL"]


def test_a_refit_with_a_loss_objective_is_refused_in_one_line():
    from tune_dialsum.errors import SpaceError

    with pytest.raises(SpaceError, match=r"selection.refit: .*eval_loss set it to false"):
        parse_space(
            {
                "fixed": {"model": "tiny:t5"},
                "search": {"learning_rate": {"loguniform": [1e-4, 1e-2]}},
                "objective": {"metric": "eval_loss"},
                "scheduler": {"max_budget": 100},
                "selection": {"refit": True},
            },
            source="<t>",
        )


def test_a_loss_rung_metric_over_searched_models_is_warned_about(caplog):
    parse_space(
        {
            "search": {"model": {"choice": ["tiny:bart", "tiny:t5"]}, "learning_rate": {"loguniform": [1e-4, 1e-2]}},
            "scheduler": {"max_budget": 100, "rung_metric": "auto"},
        },
        source="<t>",
    )
    assert "compares validation losses, but model is searched" in caplog.text


def test_the_tie_rule_study_counts_which_signal_picked_the_better_test_score():
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from tie_rule import tie_pairs

    rng = random.Random(7)
    base = _noisy(rng, 0.5)

    def model(gain: float, loss: float, test: float) -> dict:
        each = _plus(rng, base, gain)
        return {"per_example": each, "validation": sum(each) / len(each), "loss": loss, "test": test}

    models = {
        (0, "lr=3e-3", 400): model(0.004, loss=0.60, test=0.72),  # better score, higher loss, better test
        (0, "lr=9e-3", 400): model(0.0, loss=0.55, test=0.70),
        (0, "lr=9e-3", 300): model(0.001, loss=0.58, test=0.69),  # the same trial, earlier
        (1, "lr=3e-3", 400): model(0.0, loss=0.50, test=0.71),  # another seed: never paired with seed 0
        (0, "lr=1e-3", 400): model(0.2, loss=0.90, test=0.75),  # far beyond the noise: no tie
    }
    pairs = tie_pairs(models)
    two, one = pairs["two trials"], pairs["one trial"]
    assert len(two) == 2 and len(one) == 1
    assert all(row["seed"] == 0 for row in two + one)
    first = next(row for row in two if row["score_gain"] == pytest.approx(0.72 - 0.70))
    assert first["loss_gain"] == pytest.approx(0.70 - 0.72) and not first["agree"]
