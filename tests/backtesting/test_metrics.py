"""Tests of the performance metrics, against empyrical-reloaded and a golden table."""

from __future__ import annotations

import math

import empyrical
import numpy as np
import pytest

from backtest_data_module.backtesting import metrics
from backtest_data_module.backtesting.engine import Trade, run_backtest
from backtest_data_module.backtesting.strategies import SmaCrossover
from backtest_data_module.data import synthetic_bars

APPROX = {"rel": 1e-9, "abs": 1e-9}

# SmaCrossover(10, 50) on synthetic_bars(2000, seed=42), no costs; generated once
# with this module and checked against empyrical where it has the metric.
GOLDEN = {
    "total_return": -0.4020515387435867,
    "cagr": -0.0627409710427729,
    "annual_volatility": 0.15784873957292445,
    "sharpe_ratio": -0.3314609256438393,
    "sortino_ratio": -0.45392933358373955,
    "max_drawdown": -0.6087542589641903,
    "calmar_ratio": -0.10306452910822857,
    "win_rate": 0.25806451612903225,
    "num_trades": 62.0,
    "exposure": 0.9755,
}


@pytest.fixture(scope="module", params=[252, 252 * 390], ids=["daily", "minute"])
def periods(request) -> int:
    return request.param


@pytest.fixture(scope="module", params=[0, 1, 2])
def returns(request) -> np.ndarray:
    rng = np.random.default_rng(request.param)
    return rng.normal(0.0004 * (request.param - 1), 0.012, 1500)


def test_matches_empyrical(returns, periods):
    ours = metrics.compute_metrics(returns, periods_per_year=periods)
    theirs = {
        "total_return": empyrical.cum_returns_final(returns),
        "cagr": empyrical.cagr(returns, annualization=periods),
        "annual_volatility": empyrical.annual_volatility(
            returns, annualization=periods
        ),
        "sharpe_ratio": empyrical.sharpe_ratio(returns, annualization=periods),
        "sortino_ratio": empyrical.sortino_ratio(returns, annualization=periods),
        "max_drawdown": empyrical.max_drawdown(returns),
        "calmar_ratio": empyrical.calmar_ratio(returns, annualization=periods),
    }
    for name, expected in theirs.items():
        assert ours[name] == pytest.approx(expected, **APPROX), name
        single = getattr(metrics, name)
        if name in ("total_return", "max_drawdown"):
            assert single(returns) == pytest.approx(expected, **APPROX), name
        else:
            assert single(returns, periods) == pytest.approx(expected, **APPROX), name


def test_max_drawdown_matches_empyrical_on_a_long_series():
    # Long enough to take the blocked path in max_drawdown.
    returns = np.random.default_rng(3).normal(0.0, 0.01, 200_000)
    assert metrics.max_drawdown(returns) == pytest.approx(
        empyrical.max_drawdown(returns), **APPROX
    )


def test_golden_table_for_sma_crossover():
    bars = synthetic_bars(2000, seed=42)
    positions = SmaCrossover(fast=10, slow=50).target_positions(bars)
    result = run_backtest(bars["close"].to_numpy(), positions)
    table = metrics.compute_metrics(result.returns, result.positions, result.trades)

    assert list(table) == list(GOLDEN)
    for name, expected in GOLDEN.items():
        assert table[name] == pytest.approx(expected, rel=1e-9, abs=1e-12), name
    returns = result.returns
    assert table["sharpe_ratio"] == pytest.approx(
        empyrical.sharpe_ratio(returns), **APPROX
    )


def test_trades_may_be_given_as_objects_arrays_or_derived():
    bars = synthetic_bars(2000, seed=42)
    positions = SmaCrossover().target_positions(bars)
    result = run_backtest(bars["close"].to_numpy(), positions, commission_bps=5.0)
    from_objects = metrics.compute_metrics(result.returns, positions, result.trades)
    from_array = metrics.compute_metrics(
        result.returns, positions, result.trade_returns, equity=result.equity
    )
    derived = metrics.compute_metrics(result.returns, positions)
    assert from_objects == pytest.approx(from_array, rel=1e-12)
    assert from_objects == pytest.approx(derived, rel=1e-12)


@pytest.mark.parametrize(
    "returns",
    [np.array([]), np.array([0.01]), np.zeros(50), np.full(50, 0.001)],
    ids=["empty", "one", "zeros", "constant"],
)
def test_degenerate_returns_give_finite_defined_values(returns):
    table = metrics.compute_metrics(returns)
    assert all(math.isfinite(v) for v in table.values())
    assert table["sharpe_ratio"] == 0.0
    assert table["annual_volatility"] == 0.0
    assert table["sortino_ratio"] == 0.0
    assert table["max_drawdown"] == 0.0
    assert table["calmar_ratio"] == 0.0
    assert table["win_rate"] == 0.0
    assert table["num_trades"] == 0.0
    assert table["exposure"] == 0.0


def test_constant_returns_keep_their_growth():
    table = metrics.compute_metrics(np.full(252, 0.001))
    assert table["total_return"] == pytest.approx(1.001**252 - 1)
    assert table["cagr"] == pytest.approx(1.001**252 - 1)


def test_only_gains_has_zero_sortino_and_no_drawdown():
    returns = np.array([0.01, 0.02, 0.0, 0.03])
    assert metrics.sortino_ratio(returns) == 0.0
    assert metrics.max_drawdown(returns) == 0.0
    assert metrics.calmar_ratio(returns) == 0.0


def test_total_loss_is_finite():
    returns = np.array([0.1, -1.0, 0.0])
    assert metrics.total_return(returns) == -1.0
    assert metrics.cagr(returns) == -1.0
    assert metrics.max_drawdown(returns) == -1.0


def test_huge_short_sample_growth_is_capped_not_infinite():
    assert math.isfinite(metrics.cagr(np.array([1.0, 1.0])))


def test_trade_and_position_metrics():
    trades = [Trade(0, 2, 1, 0.1), Trade(2, 4, -1, -0.05), Trade(5, 6, 1, 0.0)]
    assert metrics.win_rate(trades) == pytest.approx(1 / 3)
    assert metrics.win_rate(np.array([0.2, -0.1])) == 0.5
    assert metrics.win_rate([]) == 0.0
    assert metrics.num_trades(trades) == 3.0
    assert metrics.exposure(np.array([0.0, 1.0, -0.5, 0.0])) == 0.5
    assert metrics.exposure(np.array([])) == 0.0


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match=r"periods_per_year must be .* got 0"):
        metrics.sharpe_ratio(np.zeros(3), periods_per_year=0)
    with pytest.raises(ValueError, match=r"positions has shape \(2,\)"):
        metrics.compute_metrics(np.zeros(3), positions=np.zeros(2))
