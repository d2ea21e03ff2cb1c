"""Tests of strategy parameters, the registry and the built-in strategies."""

from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd
import pytest

from backtest_data_module.backtesting.strategies import (
    STRATEGIES,
    MeanReversion,
    SmaCrossover,
    Strategy,
    get_strategy,
    register_strategy,
)
from backtest_data_module.data import synthetic_bars


def close_bars(close: list[float]) -> pd.DataFrame:
    index = pd.date_range("2020-01-01", periods=len(close), freq="1D")
    return pd.DataFrame({"close": np.asarray(close, dtype=float)}, index=index)


@pytest.fixture(scope="module")
def bars() -> pd.DataFrame:
    return synthetic_bars(3000, seed=11)


def test_params_fill_defaults_and_are_json():
    strategy = SmaCrossover(fast=5)
    assert strategy.params == {"fast": 5, "slow": 50}
    assert json.loads(json.dumps(strategy.params)) == strategy.params
    assert MeanReversion(entry_z=3).params == {
        "lookback": 20,
        "entry_z": 3.0,
        "exit_z": 0.5,
    }
    assert repr(strategy) == "SmaCrossover(fast=5, slow=50)"
    assert (SmaCrossover.name, SmaCrossover.version) == ("sma_crossover", "1.0.0")


@pytest.mark.parametrize(
    ("cls", "kwargs", "message"),
    [
        (SmaCrossover, {"fsat": 3}, r"unknown parameter 'fsat'=3"),
        (SmaCrossover, {"fast": 2.5}, r"'fast' must be a finite int, got 2\.5"),
        (SmaCrossover, {"fast": True}, r"'fast' must be a finite int, got True"),
        (SmaCrossover, {"fast": 50, "slow": 50}, r"'fast' must be < slow \(50\)"),
        (SmaCrossover, {"fast": 0}, r"'fast' must be >= 1, got 0"),
        (MeanReversion, {"lookback": 0}, r"'lookback' must be >= 2, got 0"),
        (MeanReversion, {"entry_z": -1.0}, r"'entry_z' must be > 0, got -1\.0"),
        (MeanReversion, {"exit_z": 2.0}, r"'exit_z' must be in \[0, entry_z=2\.0\)"),
        (MeanReversion, {"entry_z": float("nan")}, r"'entry_z' must be a finite"),
        (MeanReversion, {"entry_z": "2"}, r"'entry_z' must be a finite float"),
    ],
)
def test_bad_parameters_are_refused_at_creation(cls, kwargs, message):
    with pytest.raises(ValueError, match=message):
        cls(**kwargs)


def test_registry_resolves_names_and_classes():
    assert STRATEGIES["sma_crossover"] is SmaCrossover
    assert get_strategy("mean_reversion") is MeanReversion
    assert get_strategy(SmaCrossover) is SmaCrossover
    with pytest.raises(ValueError, match=r"known strategies are \['mean_reversion'"):
        get_strategy("nope")


def test_register_strategy_refuses_name_clash():
    class Impostor(Strategy):
        name = "sma_crossover"

    with pytest.raises(ValueError, match="already registered to SmaCrossover"):
        register_strategy(Impostor)


def test_sma_crossover_positions_by_hand():
    # fast=1 is the close itself; slow=3 its 3-bar mean.
    bars = close_bars([1, 2, 3, 2, 1, 1, 5])
    positions = SmaCrossover(fast=1, slow=3).target_positions(bars)
    # Means from bar 2: 2, 7/3, 2, 4/3, 7/3 against closes 3, 2, 1, 1, 5.
    np.testing.assert_array_equal(positions, [0, 0, 1, -1, -1, -1, 1])
    assert SmaCrossover(fast=1, slow=3).warmup == 2


def test_sma_crossover_on_short_bars_is_flat():
    positions = SmaCrossover(fast=2, slow=5).target_positions(close_bars([1, 2, 3]))
    np.testing.assert_array_equal(positions, [0, 0, 0])


def test_mean_reversion_hysteresis_by_hand():
    close = [10.0, 10.0, 10.0, 10.0, 14.0, 13.0, 10.5, 9.9, 6.0, 8.0, 9.9]
    strategy = MeanReversion(lookback=4, entry_z=1.5, exit_z=0.3)
    positions = strategy.target_positions(close_bars(close))

    # z from bar 3: 0, 1.73, 0.70, -0.82, -1.15, -1.53, -0.34, 0.90. Bar 4 enters
    # short; bars 5-7 stay short (|z| >= exit_z and no long entry); bar 8 flips
    # long; bars 9-10 stay long.
    expected = [0, 0, 0, 0, -1, -1, -1, -1, 1, 1, 1]
    np.testing.assert_array_equal(positions, expected)


def test_mean_reversion_exits_when_z_is_small():
    close = [10.0, 10.0, 10.0, 10.0, 14.0, 12.0, 12.0, 12.2, 12.1]
    strategy = MeanReversion(lookback=4, entry_z=1.5, exit_z=0.5)
    positions = strategy.target_positions(close_bars(close))
    assert positions[4] == -1
    assert positions[-1] == 0


def test_mean_reversion_on_constant_prices_stays_flat():
    positions = MeanReversion(lookback=3).target_positions(close_bars([5.0] * 10))
    np.testing.assert_array_equal(positions, np.zeros(10))


@pytest.mark.parametrize(
    "strategy",
    [SmaCrossover(), SmaCrossover(fast=3, slow=7), MeanReversion()],
    ids=repr,
)
def test_positions_are_valid_and_flat_during_warmup(strategy, bars):
    positions = strategy.target_positions(bars)
    assert positions.dtype == np.float64
    assert positions.shape == (len(bars),)
    assert np.all(np.abs(positions) <= 1)
    assert np.all(positions[: strategy.warmup] == 0)
    assert np.any(positions[strategy.warmup :] != 0)


@pytest.mark.parametrize(
    "strategy",
    [SmaCrossover(), SmaCrossover(fast=3, slow=7), MeanReversion()],
    ids=repr,
)
def test_strategies_are_causal(strategy, bars):
    full = strategy.target_positions(bars)
    for k in (1, 10, 49, 50, 51, 777, 2999):
        np.testing.assert_array_equal(strategy.target_positions(bars[:k]), full[:k])


def test_strategies_are_fast_on_a_million_bars():
    bars = synthetic_bars(1_000_000)
    for strategy in (SmaCrossover(), MeanReversion()):
        start = time.perf_counter()
        strategy.target_positions(bars)
        assert time.perf_counter() - start < 1.0, strategy
