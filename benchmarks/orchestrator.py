"""Benchmark what tracking costs a run: 100-slice walk-forward with and without it.

Run from the repository root: ``python benchmarks/orchestrator.py``.
It starts the strategy manager in a uvicorn subprocess on a free port with a
temporary data dir, times the same run with tracking to it and without tracking
(best of 3 each, alternating), prints both and their ratio, and stops the server.
Target: tracking adds under 2%.
"""

from __future__ import annotations

import logging
import sys
import tempfile
import time
from pathlib import Path

# The live-server helper lives with the tests, at the repository root.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pandas as pd

from backtest_data_module.backtesting.orchestrator import Orchestrator
from backtest_data_module.backtesting.strategies import SmaCrossover
from backtest_data_module.backtesting.validation import WalkForward
from backtest_data_module.data import synthetic_bars
from tests.live_server import running_server

N_SLICES = 100
TRAIN_SIZE = 10_000
TEST_SIZE = 2_000
REPEATS = 3
TARGET_OVERHEAD = 0.02


def timed_run(orchestrator: Orchestrator, bars: pd.DataFrame) -> tuple[float, float]:
    """Wall time of one run, and how long its end waited for tracking calls."""
    start = time.perf_counter()
    result = orchestrator.run(bars)
    elapsed = time.perf_counter() - start
    assert result.status == "COMPLETED"
    assert len(result.slices) == N_SLICES
    assert result.tracking is not None
    if orchestrator.register_api:
        assert result.tracking.delivered == 3, result.tracking
    return elapsed, result.tracking.wait_s


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    bars = synthetic_bars(TRAIN_SIZE + N_SLICES * TEST_SIZE, seed=1, freq="1min")
    validation = WalkForward(train_size=TRAIN_SIZE, test_size=TEST_SIZE)

    with tempfile.TemporaryDirectory() as tmp, running_server(Path(tmp)) as server:
        common = {
            "strategy": SmaCrossover,
            "hyperparameters": {"fast": 10, "slow": 50},
            "validation": validation,
            "commission_bps": 1.0,
        }
        untracked = Orchestrator(**common, metrics_dir=f"{tmp}/plain")
        tracked = Orchestrator(
            **common,
            metrics_dir=f"{tmp}/tracked",
            register_api=server.url,
            api_key=server.api_key,
        )

        timed_run(untracked, bars)  # warm-up: imports, caches, first connection
        timed_run(tracked, bars)
        plain_times, tracked_times = [], []
        for _ in range(REPEATS):
            plain_times.append(timed_run(untracked, bars))
            tracked_times.append(timed_run(tracked, bars))

    plain = min(elapsed for elapsed, _ in plain_times)
    with_tracking, wait = min(tracked_times)
    ratio = with_tracking / plain
    print(f"walk-forward, {N_SLICES} slices, {len(bars):,} bars, best of {REPEATS}")
    print(f"  without tracking  {plain * 1e3:9.1f} ms")
    print(f"  with tracking     {with_tracking * 1e3:9.1f} ms  (live local server)")
    print(f"  of which waiting  {wait * 1e3:9.1f} ms  for the final tracking call")
    print(f"  ratio             {ratio:9.4f}  (overhead {100 * (ratio - 1):+.2f}%)")
    verdict = "met" if ratio - 1 < TARGET_OVERHEAD else "NOT met"
    print(f"  target: under {100 * TARGET_OVERHEAD:.0f}% overhead -> {verdict}")


if __name__ == "__main__":
    main()
