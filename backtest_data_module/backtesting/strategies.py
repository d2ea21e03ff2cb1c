"""Strategies turn bars into target positions, one per bar.

A strategy is configured by keyword hyperparameters, checked when it is created.
``target_positions`` is causal: the position at bar t uses only ``bars[: t + 1]``,
and it is decided at that bar's close (the engine applies it from t to t + 1).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, TypeVar

import numpy as np
import pandas as pd

ParamValue = int | float | bool | str


class Strategy:
    """Base class: hyperparameters, validation, registry metadata.

    Subclasses set ``name``, ``version`` and ``defaults`` (parameter name -> default
    value; the default's type is the parameter's type, and an int is accepted for a
    float parameter), implement ``warmup`` and ``target_positions``, and may
    override ``_check`` for constraints between parameters.
    """

    name: ClassVar[str] = "strategy"
    version: ClassVar[str] = "0.0.0"
    defaults: ClassVar[dict[str, ParamValue]] = {}

    def __init__(self, **params: Any) -> None:
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            name = unknown[0]
            raise ValueError(
                f"{type(self).__name__} got unknown parameter {name!r}="
                f"{params[name]!r}; allowed parameters are {sorted(self.defaults)}"
            )
        values = {**self.defaults, **params}
        self._params = {k: _coerce(k, v, self.defaults[k]) for k, v in values.items()}
        self._check()

    def _check(self) -> None:
        """Raise ``ValueError`` if the parameters do not fit together."""

    @property
    def params(self) -> dict[str, ParamValue]:
        """The hyperparameters with defaults filled in (a JSON-serialisable copy)."""
        return dict(self._params)

    @property
    def warmup(self) -> int:
        """Number of leading bars whose position is 0 because the signal is not valid.

        The position at bar ``warmup`` is the first that may be non-zero; it needs
        ``warmup + 1`` bars of history including the current one.
        """
        raise NotImplementedError

    def target_positions(self, bars: pd.DataFrame) -> np.ndarray:
        """Return the target position at each bar's close.

        Parameters
        ----------
        bars : pd.DataFrame
            Shape (n, k) with at least a ``close`` column.

        Returns
        -------
        np.ndarray
            Shape (n,), float64 in [-1, 1]; 0 for the first ``warmup`` bars.
        """
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._params.items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self._params == other._params  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self), tuple(sorted(self._params.items()))))


def _coerce(name: str, value: Any, default: ParamValue) -> ParamValue:
    """Check one parameter value against the type of its default."""
    expected = type(default)
    if expected is float and isinstance(value, int | float | np.number):
        ok = not isinstance(value, bool | np.bool_) and math.isfinite(float(value))
        if ok:
            return float(value)
    elif expected is int and isinstance(value, int | np.integer):
        if not isinstance(value, bool | np.bool_):
            return int(value)
    elif isinstance(value, expected):
        return value
    raise ValueError(
        f"parameter {name!r} must be a finite {expected.__name__}, got {value!r}"
    )


def _close(bars: pd.DataFrame) -> np.ndarray:
    if not isinstance(bars, pd.DataFrame) or "close" not in bars.columns:
        raise ValueError("bars must be a DataFrame with a 'close' column")
    return bars["close"].to_numpy(dtype=np.float64)


def rolling_mean(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over ``window`` values, computed with one cumulative sum.

    Parameters
    ----------
    values : np.ndarray
        Shape (n,), float64.
    window : int
        At least 1.

    Returns
    -------
    np.ndarray
        Shape (n,); NaN for the first ``window - 1`` entries.
    """
    csum = np.empty(len(values) + 1)
    csum[0] = 0.0
    np.cumsum(values, out=csum[1:])
    out = np.full(len(values), np.nan)
    out[window - 1 :] = csum[window:] - csum[:-window]
    out[window - 1 :] /= window
    return out


StrategyT = TypeVar("StrategyT", bound=type[Strategy])

STRATEGIES: dict[str, type[Strategy]] = {}


def register_strategy(cls: StrategyT) -> StrategyT:
    """Class decorator adding a strategy to ``STRATEGIES`` under its ``name``."""
    if not (isinstance(cls, type) and issubclass(cls, Strategy)):
        raise ValueError(f"register_strategy expects a Strategy subclass, got {cls!r}")
    known = STRATEGIES.get(cls.name)
    if known is not None and known is not cls:
        raise ValueError(
            f"strategy name {cls.name!r} is already registered to {known.__name__}"
        )
    STRATEGIES[cls.name] = cls
    return cls


def get_strategy(name_or_class: str | type[Strategy]) -> type[Strategy]:
    """Look a strategy class up by registered name, or pass a subclass through.

    Raises
    ------
    ValueError
        If the name is not registered (the message lists the known names) or the
        argument is neither a string nor a ``Strategy`` subclass.
    """
    if isinstance(name_or_class, type) and issubclass(name_or_class, Strategy):
        return name_or_class
    if isinstance(name_or_class, str) and name_or_class in STRATEGIES:
        return STRATEGIES[name_or_class]
    raise ValueError(
        f"unknown strategy {name_or_class!r}; known strategies are "
        f"{sorted(STRATEGIES)} or a Strategy subclass"
    )


@register_strategy
class SmaCrossover(Strategy):
    """Long (+1) while the fast SMA of close is above the slow SMA, short (-1) while
    it is below, flat (0) when they are equal and during warm-up.

    Parameters
    ----------
    fast : int, default 10
        Window of the fast simple moving average, >= 1.
    slow : int, default 50
        Window of the slow simple moving average, > fast.
    """

    name: ClassVar[str] = "sma_crossover"
    version: ClassVar[str] = "1.0.0"
    defaults: ClassVar[dict[str, ParamValue]] = {"fast": 10, "slow": 50}

    def _check(self) -> None:
        fast, slow = int(self._params["fast"]), int(self._params["slow"])
        if fast < 1:
            raise ValueError(f"parameter 'fast' must be >= 1, got {fast!r}")
        if fast >= slow:
            raise ValueError(
                f"parameter 'fast' must be < slow ({slow!r}), got fast={fast!r}"
            )

    @property
    def warmup(self) -> int:
        return int(self._params["slow"]) - 1

    def target_positions(self, bars: pd.DataFrame) -> np.ndarray:
        close = _close(bars)
        fast, slow = int(self._params["fast"]), int(self._params["slow"])
        if len(close) < slow:
            return np.zeros(len(close))
        positions = np.empty(len(close))
        positions[: slow - 1] = 0.0

        # Both SMAs from one cumulative sum; only bars from slow - 1 on are valid.
        # Limitation: a long cumulative sum loses a few digits, so SMAs that differ
        # by less than ~1e-10 relative may compare in the wrong order.
        csum = np.empty(len(close) + 1)
        csum[0] = 0.0
        np.cumsum(close, out=csum[1:])
        tail = csum[slow:]

        # sign(fast_sum * (slow / fast) - slow_sum) == sign(fast SMA - slow SMA),
        # written in place to keep the number of n-sized buffers low.
        signal = positions[slow - 1 :]
        np.subtract(tail, csum[slow - fast : len(csum) - fast], out=signal)
        signal *= slow / fast
        signal -= tail
        signal += csum[: len(csum) - slow]
        np.sign(signal, out=signal)
        return positions


@register_strategy
class MeanReversion(Strategy):
    """Fade large z-scores of close against its trailing mean, with hysteresis.

    z = (close - mean) / std over the trailing ``lookback`` bars (ddof=0, current
    bar included). Enter short when z > entry_z, long when z < -entry_z, and hold
    until |z| < exit_z (or the opposite entry fires). A zero std gives z = 0.

    Parameters
    ----------
    lookback : int, default 20
        Window of the trailing mean and std, >= 2.
    entry_z : float, default 2.0
        Entry threshold, > 0.
    exit_z : float, default 0.5
        Exit threshold, 0 <= exit_z < entry_z.
    """

    name: ClassVar[str] = "mean_reversion"
    version: ClassVar[str] = "1.0.0"
    defaults: ClassVar[dict[str, ParamValue]] = {
        "lookback": 20,
        "entry_z": 2.0,
        "exit_z": 0.5,
    }

    def _check(self) -> None:
        lookback = int(self._params["lookback"])
        entry_z, exit_z = float(self._params["entry_z"]), float(self._params["exit_z"])
        if lookback < 2:
            raise ValueError(f"parameter 'lookback' must be >= 2, got {lookback!r}")
        if entry_z <= 0:
            raise ValueError(f"parameter 'entry_z' must be > 0, got {entry_z!r}")
        if not 0 <= exit_z < entry_z:
            raise ValueError(
                f"parameter 'exit_z' must be in [0, entry_z={entry_z!r}), "
                f"got {exit_z!r}"
            )

    @property
    def warmup(self) -> int:
        return int(self._params["lookback"]) - 1

    def target_positions(self, bars: pd.DataFrame) -> np.ndarray:
        close = _close(bars)
        lookback = int(self._params["lookback"])
        positions = np.zeros(len(close))
        if len(close) < lookback:
            return positions

        z = self._zscore(close, lookback)

        # Events: +1 / -1 on an entry, 0 on an exit, NaN where nothing happens.
        # Forward-filling the last event gives the stateful position.
        entry_z, exit_z = float(self._params["entry_z"]), float(self._params["exit_z"])
        events = np.full(len(z), np.nan)
        events[np.abs(z) < exit_z] = 0.0
        events[z > entry_z] = -1.0
        events[z < -entry_z] = 1.0
        events[0] = np.nan_to_num(events[0])
        last = np.maximum.accumulate(np.where(np.isnan(events), 0, np.arange(len(z))))
        positions[lookback - 1 :] = events[last]
        return positions

    @staticmethod
    def _zscore(close: np.ndarray, lookback: int) -> np.ndarray:
        """Return z-scores for bars lookback - 1 .. n - 1, shape (n - lookback + 1,)."""
        # Centre on the first close so the sums of squares do not cancel badly.
        centred = close - close[0]
        mean = rolling_mean(centred, lookback)[lookback - 1 :]
        mean_sq = rolling_mean(centred * centred, lookback)[lookback - 1 :]
        var = np.maximum(mean_sq - mean * mean, 0.0)
        std = np.sqrt(var)
        deviation = centred[lookback - 1 :] - mean
        # Variance below rounding noise is treated as zero dispersion (z = 0).
        flat = std <= 1e-12 * (np.abs(mean) + np.abs(close[0]) + 1.0)
        return np.divide(deviation, std, out=np.zeros_like(std), where=~flat)
