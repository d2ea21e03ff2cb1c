"""Vectorized accounting: target positions -> per-bar returns, equity and trades.

Timing convention: the position decided at the close of bar t is held from t to
t + 1, so it earns the close-to-close return ``close[t + 1] / close[t] - 1`` and
appears in ``returns[t + 1]``. Nothing at bar t can earn bar t's own move.

Costs: ``commission_bps + slippage_bps`` (basis points of notional) times
``|positions[t] - positions[t - 1]|`` (with ``positions[-1] = 0``) is subtracted from
``returns[t + 1]``, the period the new position is held for. Hence ``returns[0]`` is
always 0, ``equity[0]`` is 1.0, and a position change on the last bar costs nothing
within the result. An open position at the end is marked to market, not closed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd

BPS = 1e-4


@dataclass(frozen=True)
class Trade:
    """One contiguous run of non-zero positions of the same sign.

    ``entry_index`` is the bar whose close opened the run; ``exit_index`` is the bar
    whose close left it (the first bar with another sign), or the last bar if the
    run is still open. ``return_`` compounds the strategy's net returns over bars
    ``entry_index + 1 .. exit_index``.
    """

    entry_index: int
    exit_index: int
    side: int
    return_: float
    is_open: bool = False
    entry_time: pd.Timestamp | None = None
    exit_time: pd.Timestamp | None = None


@dataclass(frozen=True, eq=False)
class BacktestResult:
    """Output of :func:`run_backtest`; every array has shape (n,) unless noted.

    Attributes
    ----------
    returns : np.ndarray
        Net strategy return of each bar; ``returns[0] == 0``.
    equity : np.ndarray
        ``cumprod(1 + returns)``; ``equity[0] == 1.0``.
    positions : np.ndarray
        The target positions that were backtested.
    trade_entries, trade_exits, trade_sides, trade_returns, trade_open : np.ndarray
        Shape (m,) for m trades: the columns of :attr:`trades`, kept as arrays so
        long backtests build no Python object per trade unless asked to.
    index : pd.DatetimeIndex or None
        Timestamps of the bars, if given.
    """

    returns: np.ndarray
    equity: np.ndarray
    positions: np.ndarray
    trade_entries: np.ndarray
    trade_exits: np.ndarray
    trade_sides: np.ndarray
    trade_returns: np.ndarray
    trade_open: np.ndarray
    index: pd.DatetimeIndex | None = None
    commission_bps: float = 0.0
    slippage_bps: float = 0.0

    @cached_property
    def trades(self) -> list[Trade]:
        """The trades as :class:`Trade` objects, with timestamps if ``index`` is set."""
        times = self.index
        return [
            Trade(
                entry_index=int(entry),
                exit_index=int(exit_),
                side=int(side),
                return_=float(ret),
                is_open=bool(is_open),
                entry_time=None if times is None else times[entry],
                exit_time=None if times is None else times[exit_],
            )
            for entry, exit_, side, ret, is_open in zip(
                self.trade_entries,
                self.trade_exits,
                self.trade_sides,
                self.trade_returns,
                self.trade_open,
                strict=True,
            )
        ]


def run_backtest(
    close: np.ndarray | pd.Series,
    positions: np.ndarray | pd.Series,
    *,
    commission_bps: float = 0.0,
    slippage_bps: float = 0.0,
    index: pd.DatetimeIndex | None = None,
) -> BacktestResult:
    """Account for target positions on a close price series.

    Parameters
    ----------
    close : np.ndarray or pd.Series
        Shape (n,), n >= 1, finite and > 0.
    positions : np.ndarray or pd.Series
        Shape (n,), finite, in [-1, 1]; the target at each bar's close.
    commission_bps, slippage_bps : float, default 0.0
        Finite, >= 0; charged per unit of |position change| (see module docstring).
    index : pd.DatetimeIndex, optional
        Shape (n,); copied to the result and used for trade timestamps.

    Returns
    -------
    BacktestResult
        Returns, equity, positions and trades; see the module docstring for timing.

    Raises
    ------
    ValueError
        On a length mismatch, an empty or non-1-D input, a non-positive or
        non-finite close, a position outside [-1, 1] or non-finite, or a bad cost.
    """
    close = _as_vector("close", close)
    positions = _as_vector("positions", positions)
    _check_inputs(close, positions, index)
    cost_rate = (_cost("commission_bps", commission_bps)) + _cost(
        "slippage_bps", slippage_bps
    )

    # Gross: the position held over (t-1, t] times that period's price change.
    n = len(close)
    returns = np.empty(n)
    returns[0] = 0.0
    if n > 1:
        np.divide(close[1:], close[:-1], out=returns[1:])
        returns[1:] -= 1.0
        returns[1:] *= positions[:-1]

    # Costs of each change, charged to the period the new position is held for.
    if cost_rate > 0 and n > 1:
        turnover = np.abs(np.diff(positions[:-1], prepend=0.0))
        turnover *= cost_rate * BPS
        returns[1:] -= turnover

    equity = returns + 1.0
    np.cumprod(equity, out=equity)

    entries, exits, sides, is_open = find_trades(positions)
    return BacktestResult(
        returns=returns,
        equity=equity,
        positions=positions,
        trade_entries=entries,
        trade_exits=exits,
        trade_sides=sides,
        trade_returns=trade_returns(equity, entries, exits),
        trade_open=is_open,
        index=index,
        commission_bps=float(commission_bps),
        slippage_bps=float(slippage_bps),
    )


def find_trades(
    positions: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Locate runs of non-zero positions of the same sign.

    Parameters
    ----------
    positions : np.ndarray
        Shape (n,), float64.

    Returns
    -------
    entries, exits, sides, is_open : np.ndarray
        Each shape (m,): int64 entry bar, int64 exit bar (first bar of another sign,
        or n - 1 for a run still open at the end), int64 side (+1 / -1), and bool
        open flag.
    """
    n = len(positions)
    side = np.sign(positions)
    changes = np.flatnonzero(side[1:] != side[:-1])
    changes += 1
    if side[0] != 0:
        changes = np.concatenate(([0], changes))
    starts = np.flatnonzero(side[changes] != 0)

    entries = changes[starts]
    next_change = np.append(changes, n)[starts + 1]
    is_open = next_change >= n
    exits = np.minimum(next_change, n - 1)
    return entries, exits, side[entries].astype(np.int64), is_open


def trade_returns(
    equity: np.ndarray, entries: np.ndarray, exits: np.ndarray
) -> np.ndarray:
    """Compounded return between bars: ``equity[exit] / equity[entry] - 1``.

    Parameters
    ----------
    equity : np.ndarray
        Shape (n,).
    entries, exits : np.ndarray
        Shape (m,), bar positions with ``entries <= exits``.

    Returns
    -------
    np.ndarray
        Shape (m,); 0.0 where ``equity[entry]`` is 0 (the account was wiped out).
    """
    # Limitation: on a reversal the cost of closing the old trade and opening the
    # new one is one position change, charged in full to the new trade.
    start = equity[entries]
    out = np.zeros(len(entries))
    np.divide(equity[exits], start, out=out, where=start != 0)
    out -= 1.0
    out[start == 0] = 0.0
    return out


def _as_vector(name: str, values: np.ndarray | pd.Series) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(
            f"{name} must be a non-empty 1-D array, got shape {array.shape}"
        )
    return array


def _check_inputs(
    close: np.ndarray, positions: np.ndarray, index: pd.DatetimeIndex | None
) -> None:
    if len(positions) != len(close):
        raise ValueError(
            f"positions has length {len(positions)} but close has length "
            f"{len(close)}; they must be equal"
        )
    if index is not None and len(index) != len(close):
        raise ValueError(
            f"index has length {len(index)} but close has length {len(close)}; "
            "they must be equal"
        )

    # Two reductions each instead of boolean masks; NaN fails every comparison.
    if not (close.min() > 0 and close.max() < math.inf):
        bad = int(np.flatnonzero(~(np.isfinite(close) & (close > 0)))[0])
        raise ValueError(
            f"close must be finite and > 0, got {float(close[bad])!r} at bar {bad}"
        )
    if not (positions.min() >= -1 and positions.max() <= 1):
        bad = int(np.flatnonzero(~(np.abs(positions) <= 1))[0])
        raise ValueError(
            f"positions must be finite and in [-1, 1], got {float(positions[bad])!r} "
            f"at bar {bad}"
        )


def _cost(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.number):
        raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be finite and >= 0, got {value!r}")
    return float(value)
