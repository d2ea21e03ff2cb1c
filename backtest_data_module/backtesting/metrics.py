"""Performance metrics as pure functions of per-bar simple returns.

Conventions follow empyrical-reloaded: ``periods_per_year`` defaults to 252, sample
standard deviations use ddof=1, the risk-free rate and required return are 0, and
drawdowns are measured from a starting equity of 1.0. Where empyrical returns NaN
or inf (empty input, zero dispersion, no drawdown), these functions return a
documented finite value instead, so every metric is always a finite float.
Inputs are assumed finite (the engine guarantees it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from backtest_data_module.backtesting.engine import Trade, find_trades, trade_returns

PERIODS_PER_YEAR = 252

# Largest growth exponent kept finite; exp(700) is about 1e304.
_MAX_LOG_GROWTH = 700.0

TradesLike = Sequence[Trade] | np.ndarray


def _array(returns: np.ndarray | Sequence[float]) -> np.ndarray:
    return np.asarray(returns, dtype=np.float64)


def _check_periods(periods_per_year: float) -> float:
    if not (
        isinstance(periods_per_year, int | float | np.number)
        and not isinstance(periods_per_year, bool)
        and math.isfinite(periods_per_year)
        and periods_per_year > 0
    ):
        raise ValueError(
            f"periods_per_year must be a finite number > 0, got {periods_per_year!r}"
        )
    return float(periods_per_year)


def _equity(r: np.ndarray) -> np.ndarray:
    """Equity ``cumprod(1 + r)`` of shape (n,); the start value 1.0 is implicit."""
    equity = r + 1.0
    np.cumprod(equity, out=equity)
    return equity


def _cagr_from_total(total: float, n: int, ppy: float) -> float:
    if n == 0:
        return 0.0
    ending = total + 1.0
    if ending <= 0:
        return -1.0
    # Limitation: growth beyond exp(700) a year is capped so the result stays finite.
    return math.expm1(min(math.log(ending) * ppy / n, _MAX_LOG_GROWTH))


_BLOCK = 4096


def _drawdown_from_equity(equity: np.ndarray) -> float:
    """Maximum drawdown of an equity curve whose peak starts at 1.0.

    A running maximum over a million bars is one of the slowest passes here, so
    it is run only on the blocks that can hold the deepest drawdown: per block,
    ``min / peak_before`` bounds the block's worst ratio from above and
    ``min / max(peak_before, block_max)`` from below.
    """
    n_blocks = equity.size // _BLOCK
    if n_blocks < 4:
        return _exact_drawdown(equity, 1.0)

    blocks = equity[: n_blocks * _BLOCK].reshape(n_blocks, _BLOCK)
    block_max = blocks.max(axis=1)
    block_min = blocks.min(axis=1)
    peak_before = np.empty(n_blocks)
    peak_before[0] = 1.0
    np.maximum.accumulate(block_max[:-1], out=peak_before[1:])
    np.maximum(peak_before, 1.0, out=peak_before)

    # A block whose lower bound is not below the best upper bound cannot win.
    worst = float((block_min / peak_before).min())
    lower = block_min / np.maximum(peak_before, block_max)
    for j in np.flatnonzero(lower < worst):
        worst = min(worst, _exact_drawdown(blocks[j], peak_before[j]) + 1.0)

    tail_peak = max(float(peak_before[-1]), float(block_max[-1]))
    worst = min(worst, _exact_drawdown(equity[n_blocks * _BLOCK :], tail_peak) + 1.0)
    return min(worst - 1.0, 0.0)


def _exact_drawdown(equity: np.ndarray, peak_before: float) -> float:
    if equity.size == 0:
        return 0.0
    peak = np.maximum.accumulate(equity)
    np.maximum(peak, peak_before, out=peak)
    np.divide(equity, peak, out=peak)
    return min(float(peak.min()) - 1.0, 0.0)


def _std(r: np.ndarray, mean: float, buffer: np.ndarray | None = None) -> float:
    """Sample std (ddof=1); exactly 0.0 when every value is equal."""
    # One pass, sum(r^2) - n * mean^2, is accurate while the mean is small next
    # to the spread, as for returns; otherwise fall back to centring first.
    square_sum = float(r @ r)
    centred_sum = square_sum - r.size * mean * mean
    if centred_sum <= 1e-6 * square_sum:
        deviation = np.subtract(r, mean, out=buffer)
        centred_sum = float(deviation @ deviation)
    std = math.sqrt(centred_sum / (r.size - 1))

    # Identical values can leave a rounding residue of ~1e-18 around their mean.
    if std < 1e-12 and r.max() == r.min():
        return 0.0
    return std


def _downside_risk(
    r: np.ndarray, ppy: float, buffer: np.ndarray | None = None
) -> float:
    downside = np.minimum(r, 0.0, out=buffer)
    return math.sqrt(float(downside @ downside) / r.size * ppy)


def total_return(returns: np.ndarray) -> float:
    """Compounded return ``prod(1 + r) - 1``.

    Parameters
    ----------
    returns : np.ndarray
        Shape (n,), simple per-bar returns.

    Returns
    -------
    float
        0.0 for empty input.
    """
    r = _array(returns)
    if r.size == 0:
        return 0.0
    return float(np.prod(r + 1.0) - 1.0)


def cagr(returns: np.ndarray, periods_per_year: float = PERIODS_PER_YEAR) -> float:
    """Compound annual growth rate ``(1 + total_return) ** (ppy / n) - 1``.

    Parameters
    ----------
    returns : np.ndarray
        Shape (n,).
    periods_per_year : float, default 252

    Returns
    -------
    float
        0.0 for empty input; -1.0 when equity ends at or below zero.
    """
    ppy = _check_periods(periods_per_year)
    r = _array(returns)
    return _cagr_from_total(total_return(r), r.size, ppy)


def annual_volatility(
    returns: np.ndarray, periods_per_year: float = PERIODS_PER_YEAR
) -> float:
    """Sample standard deviation (ddof=1) times ``sqrt(periods_per_year)``.

    Returns
    -------
    float
        0.0 for fewer than two returns.
    """
    ppy = _check_periods(periods_per_year)
    r = _array(returns)
    if r.size < 2:
        return 0.0
    return _std(r, float(r.mean())) * math.sqrt(ppy)


def sharpe_ratio(
    returns: np.ndarray, periods_per_year: float = PERIODS_PER_YEAR
) -> float:
    """Annualised Sharpe ratio ``mean / std(ddof=1) * sqrt(ppy)``, risk-free 0.

    Returns
    -------
    float
        0.0 for fewer than two returns or zero standard deviation.
    """
    ppy = _check_periods(periods_per_year)
    r = _array(returns)
    if r.size < 2:
        return 0.0
    mean = float(r.mean())
    std = _std(r, mean)
    return 0.0 if std == 0.0 else mean / std * math.sqrt(ppy)


def sortino_ratio(
    returns: np.ndarray, periods_per_year: float = PERIODS_PER_YEAR
) -> float:
    """Annualised Sortino ratio, required return 0.

    ``mean(r) * ppy / (sqrt(mean(min(r, 0) ** 2)) * sqrt(ppy))``; the downside
    deviation averages over all n bars, as empyrical does.

    Returns
    -------
    float
        0.0 for fewer than two returns or when no return is below zero.
    """
    ppy = _check_periods(periods_per_year)
    r = _array(returns)
    if r.size < 2:
        return 0.0
    risk = _downside_risk(r, ppy)
    return 0.0 if risk == 0.0 else float(r.mean()) * ppy / risk


def max_drawdown(returns: np.ndarray) -> float:
    """Largest fall of equity from its running peak, as a fraction.

    Equity is ``cumprod(1 + r)`` anchored at a starting value of 1.0, which counts
    as a peak.

    Returns
    -------
    float
        <= 0; -1.0 if equity reaches zero (below -1 if it turns negative); 0.0 for
        empty input or equity that never falls.
    """
    r = _array(returns)
    if r.size == 0:
        return 0.0
    return _drawdown_from_equity(_equity(r))


def calmar_ratio(
    returns: np.ndarray, periods_per_year: float = PERIODS_PER_YEAR
) -> float:
    """CAGR divided by the absolute maximum drawdown.

    Returns
    -------
    float
        0.0 when there is no drawdown (including empty input).
    """
    drawdown = max_drawdown(returns)
    if drawdown >= 0:
        return 0.0
    return cagr(returns, periods_per_year) / -drawdown


def _trade_returns(trades: TradesLike) -> np.ndarray:
    if isinstance(trades, np.ndarray):
        return trades.astype(np.float64, copy=False)
    return np.array([t.return_ for t in trades], dtype=np.float64)


def win_rate(trades: TradesLike) -> float:
    """Fraction of trades whose return is > 0.

    Parameters
    ----------
    trades : sequence of Trade or np.ndarray
        Trades, or their returns as an array of shape (m,).

    Returns
    -------
    float
        In [0, 1]; 0.0 with no trades.
    """
    rets = _trade_returns(trades)
    if rets.size == 0:
        return 0.0
    return float(np.count_nonzero(rets > 0) / rets.size)


def num_trades(trades: TradesLike) -> float:
    """Number of trades, as a float so it fits the metrics dict."""
    return float(len(trades))


def exposure(positions: np.ndarray) -> float:
    """Fraction of bars with a non-zero position.

    Parameters
    ----------
    positions : np.ndarray
        Shape (n,).

    Returns
    -------
    float
        In [0, 1]; 0.0 for empty input.
    """
    p = _array(positions)
    if p.size == 0:
        return 0.0
    return float(np.count_nonzero(p) / p.size)


def compute_metrics(
    returns: np.ndarray,
    positions: np.ndarray | None = None,
    trades: TradesLike | None = None,
    periods_per_year: float = PERIODS_PER_YEAR,
    *,
    equity: np.ndarray | None = None,
) -> dict[str, float]:
    """Compute every metric of this module.

    Parameters
    ----------
    returns : np.ndarray
        Shape (n,), per-bar net returns (``BacktestResult.returns``).
    positions : np.ndarray, optional
        Shape (n,). Needed for ``exposure``; without it exposure is 0.0.
    trades : sequence of Trade or np.ndarray, optional
        Trades or their returns (``BacktestResult.trade_returns`` is fastest). If
        omitted but ``positions`` is given, trades are derived from the positions
        and returns as the engine does; with neither, trade metrics are 0.0.
    periods_per_year : float, default 252
        Bars per year, e.g. 252 * 390 for one-minute US equity bars.
    equity : np.ndarray, optional
        Shape (n,), ``cumprod(1 + returns)`` if already known
        (``BacktestResult.equity``); saves recomputing it.

    Returns
    -------
    dict[str, float]
        ``total_return, cagr, annual_volatility, sharpe_ratio, sortino_ratio,
        max_drawdown, calmar_ratio, win_rate, num_trades, exposure``; all finite.
    """
    ppy = _check_periods(periods_per_year)
    r = _array(returns)
    if positions is not None:
        positions = _array(positions)
        if positions.shape != r.shape:
            raise ValueError(
                f"positions has shape {positions.shape} but returns has shape "
                f"{r.shape}; they must be equal"
            )
    if trades is None:
        trades = _derive_trades(r, positions)

    if equity is not None:
        equity = _array(equity)
        if equity.shape != r.shape:
            raise ValueError(
                f"equity has shape {equity.shape} but returns has shape {r.shape}; "
                "they must be equal"
            )
    return {**_return_metrics(r, ppy, equity), **_trade_metrics(trades, positions)}


def _return_metrics(
    r: np.ndarray, ppy: float, equity: np.ndarray | None
) -> dict[str, float]:
    """The return-based metrics, sharing one equity curve, mean and deviation."""
    if r.size == 0:
        names: tuple[str, ...] = ("total_return", "cagr", "annual_volatility")
        names += ("sharpe_ratio", "sortino_ratio", "max_drawdown", "calmar_ratio")
        return dict.fromkeys(names, 0.0)

    if equity is None:
        equity = _equity(r)
    total = float(equity[-1]) - 1.0
    growth = _cagr_from_total(total, r.size, ppy)
    drawdown = _drawdown_from_equity(equity)

    mean = float(r.mean())
    buffer = np.empty_like(r)
    std = _std(r, mean, buffer) if r.size > 1 else 0.0
    risk = _downside_risk(r, ppy, buffer) if r.size > 1 else 0.0
    return {
        "total_return": total,
        "cagr": growth,
        "annual_volatility": std * math.sqrt(ppy),
        "sharpe_ratio": 0.0 if std == 0.0 else mean / std * math.sqrt(ppy),
        "sortino_ratio": 0.0 if risk == 0.0 else mean * ppy / risk,
        "max_drawdown": drawdown,
        "calmar_ratio": 0.0 if drawdown >= 0 else growth / -drawdown,
    }


def _trade_metrics(
    trades: TradesLike, positions: np.ndarray | None
) -> dict[str, float]:
    return {
        "win_rate": win_rate(trades),
        "num_trades": num_trades(trades),
        "exposure": 0.0 if positions is None else exposure(positions),
    }


def _derive_trades(r: np.ndarray, positions: np.ndarray | None) -> np.ndarray:
    if positions is None or positions.size == 0:
        return np.empty(0)
    entries, exits, _, _ = find_trades(positions)
    return trade_returns(_equity(r), entries, exits)
