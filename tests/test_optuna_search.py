"""The PRUNED-aware searcher, driven with synthetic results: no Ray cluster, no training, in a second.

It leans on private attributes of Ray's OptunaSearch and Optuna's study, read through
tune_dialsum/ray_compat.py; tests/test_ray_compat.py says when a release moved one.
"""

from __future__ import annotations

import math

import pytest

from tests.conftest import BUNDLED_DATA, TINY
from tune_dialsum.experiment_context import experiment_context
from tune_dialsum.ray_compat import optuna_study, optuna_trials
from tune_dialsum.space import load_space
from tune_dialsum.tuner import build_searcher


@pytest.fixture
def searcher():
    space = load_space(TINY, [f"data.path={BUNDLED_DATA}"])
    context = experiment_context(space)
    return build_searcher(space, context), context


def _trial(searcher, trial_id: str):
    return optuna_study(searcher).trials[optuna_trials(searcher)[trial_id].number]


def test_suggestions_hold_each_setting_once_under_its_own_name(searcher):
    search, _ = searcher
    config = search.suggest("a")
    assert config["model"] in ("tiny:bart", "tiny:t5")
    assert not any("@" in key for key in config)  # learning_rate@t5 is the study's name, not the trial's
    family_range = (1e-3, 1e-2) if config["model"] == "tiny:t5" else (3e-4, 5e-3)
    assert family_range[0] <= config["learning_rate"] <= family_range[1]


def test_a_trial_the_scheduler_stopped_is_pruned_with_its_curve_by_budget(searcher):
    from optuna.trial import TrialState

    search, settings = searcher
    metric, budget = settings.ranked_by, settings.time_attr
    search.suggest("stopped")
    search.on_trial_result("stopped", {metric: 0.1, budget: 1600})
    search.on_trial_complete("stopped", {metric: 0.2, budget: 3200})
    stopped = _trial(search, "stopped")
    assert stopped.state == TrialState.PRUNED  # not COMPLETE: TPE does not take 0.2 for a full run's score
    assert stopped.intermediate_values == {1600: 0.1, 3200: 0.2}
    search.on_trial_complete("stopped", {metric: 0.9, budget: 6400})  # told twice: the first word stands
    assert _trial(search, "stopped").state == TrialState.PRUNED


def test_a_trial_at_the_full_budget_completes_and_a_crash_fails(searcher):
    from optuna.trial import TrialState

    search, settings = searcher
    metric, budget = settings.ranked_by, settings.time_attr
    search.suggest("full")
    search.suggest("crashed")
    search.on_trial_result("full", {metric: 0.3, budget: 1600})
    search.on_trial_complete("full", {metric: 0.5, budget: settings.scheduler.max_budget})
    search.on_trial_complete("crashed", None, error=True)
    full, crashed = _trial(search, "full"), _trial(search, "crashed")
    assert full.state == TrialState.COMPLETE and math.isclose(full.value, 0.5)
    assert full.intermediate_values == {1600: 0.3, settings.scheduler.max_budget: 0.5}
    assert crashed.state == TrialState.FAIL
