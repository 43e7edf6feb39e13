"""The criterion's arithmetic in benchmarks/criterion_power.py, against cases worked by hand."""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import criterion_power  # noqa: E402


def test_at_least_counts_the_binomial_tail():
    assert criterion_power.at_least(4, 5, 0.5) == pytest.approx(6 / 32)  # C(5,4) + C(5,5) of 32
    assert criterion_power.at_least(0, 5, 0.3) == pytest.approx(1.0)
    assert criterion_power.at_least(5, 5, 0.9) == pytest.approx(0.9**5)


def test_edge_for_inverts_the_chance_of_passing():
    spread = 0.04
    edge = criterion_power.edge_for(0.5, spread, 4, 5)
    win = 1 - statistics.NormalDist(edge, spread).cdf(0)
    assert criterion_power.at_least(4, 5, win) == pytest.approx(0.5, abs=1e-6)
    # a coin per seed passes 4 of 5 with 6/32: no edge is needed for that chance
    assert criterion_power.edge_for(6 / 32, spread, 4, 5) == pytest.approx(0.0, abs=1e-6)
    # the edge scales with the spread
    assert criterion_power.edge_for(0.5, 2 * spread, 4, 5) == pytest.approx(2 * edge, rel=1e-6)


@pytest.mark.parametrize(
    ("df", "t", "chi2_low", "chi2_high"),
    [(1, 12.706, 0.000982, 5.024), (4, 2.776, 0.4844, 11.143), (9, 2.262, 2.700, 19.023), (10, 2.228, 3.247, 20.483)],
)
def test_t_and_chi_square_quantiles_match_the_printed_tables(df, t, chi2_low, chi2_high):
    assert criterion_power.t_quantile(0.95, df) == pytest.approx(t, abs=1e-3)
    assert criterion_power.chi2_quantile(0.025, df) == pytest.approx(chi2_low, rel=1e-3)
    assert criterion_power.chi2_quantile(0.975, df) == pytest.approx(chi2_high, rel=1e-3)
