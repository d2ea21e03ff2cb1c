"""Benchmark the backtesting core: one big SMA backtest, a parameter grid, a floor.

Run from the repository root: ``PYTHONPATH=. python benchmarks/engine.py``. The
floor is one ``np.diff`` over the same close array: a single read-and-write pass
over memory, which no backtest can beat.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable

import numpy as np

from backtest_data_module.backtesting.engine import run_backtest
from backtest_data_module.backtesting.metrics import compute_metrics
from backtest_data_module.backtesting.strategies import SmaCrossover
from backtest_data_module.data import synthetic_bars

N_BARS = 1_000_000
GRID_BARS = 10_000
TARGET_RATIO = 40.0


def best_of(func: Callable[[], object], repeats: int) -> float:
    """Smallest wall time of ``repeats`` calls, in seconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    return min(times)


def sma_backtest(bars, close: np.ndarray, fast: int, slow: int) -> dict[str, float]:
    """Positions, engine and metrics for one SMA crossover."""
    positions = SmaCrossover(fast=fast, slow=slow).target_positions(bars)
    result = run_backtest(close, positions)
    return compute_metrics(
        result.returns, result.positions, result.trade_returns, equity=result.equity
    )


def vectorbt_time(close: np.ndarray, repeats: int) -> float | None:
    """Best time of the same SMA(10/50) long/short backtest in vectorbt, if present."""
    try:
        import pandas as pd
        import vectorbt as vbt
    except ImportError:
        return None

    series = pd.Series(close)

    def run() -> None:
        fast = vbt.MA.run(series, 10).ma
        slow = vbt.MA.run(series, 50).ma
        above = (fast > slow).to_numpy()
        below = (fast < slow).to_numpy()
        portfolio = vbt.Portfolio.from_signals(
            series, entries=above, exits=below, short_entries=below,
            short_exits=above, freq="1D",
        )  # fmt: skip
        portfolio.stats()

    run()  # compile numba kernels outside the timing
    return best_of(run, repeats)


def main() -> None:
    bars = synthetic_bars(N_BARS, seed=0)
    close = bars["close"].to_numpy()
    sma_backtest(bars, close, 10, 50)

    single = best_of(lambda: sma_backtest(bars, close, 10, 50), repeats=15)
    floor = best_of(lambda: np.diff(close), repeats=30)
    ratio = single / floor
    print(f"SMA(10/50) backtest on {N_BARS:,} bars (positions + engine + metrics)")
    print(f"  best of 15: {single * 1e3:.2f} ms = {N_BARS / single / 1e6:.1f} M bars/s")
    print(f"np.diff floor on the same close: {floor * 1e3:.3f} ms (best of 30)")
    verdict = "within" if ratio <= TARGET_RATIO else "OVER"
    print(
        f"ratio backtest / floor: {ratio:.1f}x "
        f"({verdict} the {TARGET_RATIO:.0f}x target)"
    )

    small = synthetic_bars(GRID_BARS, seed=1)
    small_close = small["close"].to_numpy()
    grid = list(itertools.product(range(5, 55, 5), range(60, 260, 20)))
    start = time.perf_counter()
    for fast, slow in grid:
        sma_backtest(small, small_close, fast, slow)
    elapsed = time.perf_counter() - start
    print(
        f"grid of {len(grid)} (fast, slow) on {GRID_BARS:,} bars: "
        f"{elapsed * 1e3:.1f} ms total, {len(grid) / elapsed:,.0f} backtests/s"
    )

    other = vectorbt_time(close, repeats=3)
    if other is None:
        print("vectorbt: not installed, skipped")
    else:
        print(
            f"vectorbt SMA(10/50) from_signals + stats on {N_BARS:,} bars: "
            f"{other * 1e3:.1f} ms (ours {single * 1e3:.1f} ms, "
            f"{other / single:.1f}x faster)"
        )


if __name__ == "__main__":
    main()
