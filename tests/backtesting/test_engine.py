"""Tests of the vectorized accounting engine."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from backtest_data_module.backtesting.engine import Trade, find_trades, run_backtest
from backtest_data_module.backtesting.strategies import SmaCrossover
from backtest_data_module.data import synthetic_bars

CLOSE = np.array([100.0, 110.0, 99.0, 99.0, 108.9])


def test_position_at_t_earns_the_return_from_t_to_t_plus_1():
    result = run_backtest(CLOSE, np.array([1.0, -1.0, 0.0, 0.5, 0.5]))
    # Asset returns at bars 1..4: +10%, -10%, 0%, +10%.
    np.testing.assert_allclose(result.returns, [0.0, 0.10, 0.10, 0.0, 0.05])
    np.testing.assert_allclose(result.equity, np.cumprod(1 + result.returns))
    assert result.equity[0] == 1.0


def test_costs_are_charged_per_unit_of_position_change():
    positions = np.array([1.0, -1.0, 0.0, 0.5, 0.5])
    result = run_backtest(CLOSE, positions, commission_bps=7.0, slippage_bps=3.0)
    # Changes of 1, 2, 1, 0.5 at bars 0..3 cost 10 bps each, one bar later.
    costs = np.array([0.0, 1.0, 2.0, 1.0, 0.5]) * 10e-4
    np.testing.assert_allclose(result.returns, [0.0, 0.10, 0.10, 0.0, 0.05] - costs)


def test_peeking_positions_only_profit_when_shifted_into_the_past():
    close = synthetic_bars(500, seed=5)["close"].to_numpy()
    future_sign = np.sign(np.diff(close))

    # Position at t set from the move t -> t+1: the engine pays that move to it.
    peeking = np.append(future_sign, 0.0)
    result = run_backtest(close, peeking)
    np.testing.assert_allclose(result.returns[1:], np.abs(np.diff(close) / close[:-1]))

    # The same signal known only one bar later (causal) earns nothing special.
    causal = np.insert(future_sign, 0, 0.0)
    late = run_backtest(close, causal)
    assert late.returns.sum() < 0.2 * result.returns.sum()


def test_sma_backtest_matches_a_plain_loop():
    bars = synthetic_bars(400, seed=9)
    close = bars["close"].to_numpy()
    positions = SmaCrossover(fast=5, slow=20).target_positions(bars)
    result = run_backtest(close, positions, commission_bps=5.0)

    equity = 1.0
    expected = [1.0]
    for t in range(1, len(close)):
        previous = positions[t - 2] if t >= 2 else 0.0
        cost = abs(positions[t - 1] - previous) * 5e-4
        equity *= 1 + positions[t - 1] * (close[t] / close[t - 1] - 1) - cost
        expected.append(equity)
    np.testing.assert_allclose(result.equity, expected, rtol=1e-12)


def test_trades_are_runs_of_same_sign():
    positions = np.array([0, 1, 1, -1, -0.5, 0, 0, 1, 1], dtype=float)
    close = np.array([10, 10, 11, 12, 9, 9, 9, 10, 11], dtype=float)
    index = pd.date_range("2021-01-01", periods=9, freq="1D")
    result = run_backtest(close, positions, index=index)

    expected = [(1, 3, 1, False), (3, 5, -1, False), (7, 8, 1, True)]
    got = [(t.entry_index, t.exit_index, t.side, t.is_open) for t in result.trades]
    assert got == expected
    # Long 10 -> 12 (+20%); short 1 then 0.5: -1 * (9/12 - 1) = +25%, then 0;
    # long 10 -> 11 (+10%), still open.
    np.testing.assert_allclose([t.return_ for t in result.trades], [0.2, 0.25, 0.1])
    assert result.trades[0] == Trade(
        1, 3, 1, pytest.approx(0.2), False, index[1], index[3]
    )


def test_find_trades_handles_edges():
    entries, exits, sides, is_open = find_trades(np.array([-1.0, -1.0, 1.0]))
    assert entries.tolist() == [0, 2]
    assert exits.tolist() == [2, 2]
    assert sides.tolist() == [-1, 1]
    assert is_open.tolist() == [False, True]
    assert find_trades(np.zeros(4))[0].size == 0


def test_single_bar_backtest():
    result = run_backtest(np.array([5.0]), np.array([1.0]), commission_bps=10.0)
    assert result.returns.tolist() == [0.0]
    assert result.equity.tolist() == [1.0]
    assert len(result.trades) == 1


@pytest.mark.parametrize(
    ("close", "positions", "kwargs", "message"),
    [
        ([1.0, 2.0], [0.0], {}, r"positions has length 1 but close has length 2"),
        (
            [1.0, 0.0],
            [0.0, 0.0],
            {},
            r"close must be finite and > 0, got 0\.0 at bar 1",
        ),
        ([1.0, np.inf], [0.0, 0.0], {}, r"close must be finite and > 0, got inf"),
        ([1.0, 2.0], [0.0, 1.5], {}, r"in \[-1, 1\], got 1\.5 at bar 1"),
        ([1.0, 2.0], [np.nan, 0.0], {}, r"in \[-1, 1\], got nan at bar 0"),
        ([], [], {}, r"close must be a non-empty 1-D array, got shape \(0,\)"),
        ([1.0, 2.0], [0.0, 0.0], {"commission_bps": -1.0}, r"commission_bps must"),
        ([1.0, 2.0], [0.0, 0.0], {"slippage_bps": "1"}, r"slippage_bps must be"),
        (
            [1.0, 2.0],
            [0.0, 0.0],
            {"index": pd.date_range("2020", periods=3)},
            r"index has length 3",
        ),
    ],
)
def test_bad_inputs_are_refused(close, positions, kwargs, message):
    with pytest.raises(ValueError, match=message):
        run_backtest(np.array(close), np.array(positions), **kwargs)
