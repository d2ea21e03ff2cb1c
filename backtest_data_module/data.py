"""Loading, validating and generating OHLCV bars.

Every function here returns bars in one shape: a ``pd.DataFrame`` with a sorted,
unique ``DatetimeIndex`` and float64 columns ``open, high, low, close, volume``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import cast

import numpy as np
import pandas as pd

OHLCV_COLUMNS: tuple[str, ...] = ("open", "high", "low", "close", "volume")
PRICE_COLUMNS: tuple[str, ...] = ("open", "high", "low", "close")
TIMESTAMP_NAMES: tuple[str, ...] = ("timestamp", "date", "datetime", "time")


def load_bars(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read OHLCV bars from a CSV or Parquet file and validate them.

    Parameters
    ----------
    path : str or os.PathLike
        A ``.csv`` file, or a ``.parquet`` / ``.pq`` file. Column names are matched
        case-insensitively. In a CSV the timestamps come from the column named
        timestamp, date, datetime or time, else from the first column. In Parquet
        they come from a ``DatetimeIndex`` if the file stored one, else from a column
        with one of those names.

    Returns
    -------
    pd.DataFrame
        Shape (n, 5): float64 columns ``open, high, low, close, volume`` on a sorted,
        unique ``DatetimeIndex``; other columns are dropped.

    Raises
    ------
    ValueError
        If the extension is not supported, or the bars fail :func:`validate_bars`.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        raw = pd.read_csv(path)
    elif suffix in (".parquet", ".pq"):
        raw = pd.read_parquet(path)
    else:
        raise ValueError(
            f"path {str(path)!r} has extension {suffix!r}; "
            "expected .csv, .parquet or .pq"
        )
    return validate_bars(_with_time_index(raw, first_column_fallback=suffix == ".csv"))


def _with_time_index(raw: pd.DataFrame, *, first_column_fallback: bool) -> pd.DataFrame:
    """Move the timestamp column of a freshly read file into the index."""
    if isinstance(raw.index, pd.DatetimeIndex):
        return raw

    lowered = {str(c).lower(): c for c in raw.columns}
    name = next((lowered[n] for n in TIMESTAMP_NAMES if n in lowered), None)
    if name is None and first_column_fallback and len(raw.columns) > 0:
        name = raw.columns[0]
    if name is None:
        raise ValueError(
            "bars have no timestamp column; expected a DatetimeIndex or a column "
            f"named one of {list(TIMESTAMP_NAMES)}, got columns {list(raw.columns)}"
        )

    try:
        times = pd.to_datetime(raw[name])
    except (ValueError, TypeError) as exc:
        raise ValueError(
            f"timestamp column {str(name)!r} could not be parsed as dates: {exc}"
        ) from exc
    return raw.drop(columns=[name]).set_index(pd.DatetimeIndex(times, name="timestamp"))


def validate_bars(df: pd.DataFrame) -> pd.DataFrame:
    """Check in-memory bars and return them in the canonical shape.

    Parameters
    ----------
    df : pd.DataFrame
        Shape (n, m) with a ``DatetimeIndex`` and at least the columns ``open, high,
        low, close, volume`` (matched case-insensitively). Extra columns are dropped.

    Returns
    -------
    pd.DataFrame
        Shape (n, 5), a new frame with float64 OHLCV columns in that order.

    Raises
    ------
    ValueError
        If the index is not a ``DatetimeIndex``, a column is missing or not numeric,
        a timestamp repeats or goes backwards, a row holds NaN, a price is zero or
        negative, or a volume is negative. The message names the first offending
        row by timestamp and position.
    """
    if not isinstance(df, pd.DataFrame):
        raise ValueError(f"bars must be a pandas DataFrame, got {type(df).__name__}")
    if not isinstance(df.index, pd.DatetimeIndex):
        raise ValueError(
            f"bars must have a DatetimeIndex, got {type(df.index).__name__}"
        )

    bars = _select_ohlcv(df)
    _check_index(cast(pd.DatetimeIndex, bars.index))
    _check_values(bars)
    return bars


def _select_ohlcv(df: pd.DataFrame) -> pd.DataFrame:
    lowered = {str(c).lower(): c for c in df.columns}
    missing = [c for c in OHLCV_COLUMNS if c not in lowered]
    if missing:
        raise ValueError(
            f"bars are missing columns {missing}; required columns are "
            f"{list(OHLCV_COLUMNS)} (any case), got {list(df.columns)}"
        )

    columns = {}
    for name in OHLCV_COLUMNS:
        try:
            columns[name] = df[lowered[name]].to_numpy(dtype=np.float64, copy=True)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"bars column {name!r} is not numeric: {exc}") from exc
    return pd.DataFrame(columns, index=df.index.copy())


def _row(index: pd.Index, position: int) -> str:
    return f"row {position} (timestamp {index[position]})"


def _check_index(index: pd.DatetimeIndex) -> None:
    if index.hasnans:
        bad = int(np.flatnonzero(index.isna())[0])
        raise ValueError(f"bars have a missing timestamp at row {bad}")
    if len(index) < 2:
        return

    steps = np.diff(index.asi8)
    repeated = np.flatnonzero(steps == 0)
    if repeated.size:
        raise ValueError(
            f"bars have a duplicate timestamp at {_row(index, int(repeated[0]) + 1)}; "
            "timestamps must be unique"
        )
    backwards = np.flatnonzero(steps < 0)
    if backwards.size:
        raise ValueError(
            f"bars are not sorted: {_row(index, int(backwards[0]) + 1)} comes before "
            "the timestamp of the row above it; timestamps must increase"
        )


def _check_values(bars: pd.DataFrame) -> None:
    values = bars.to_numpy()
    nan_rows = np.flatnonzero(np.isnan(values).any(axis=1))
    if nan_rows.size:
        raise ValueError(
            f"bars have NaN at {_row(bars.index, int(nan_rows[0]))}; "
            "every OHLCV value must be a number"
        )

    prices = values[:, : len(PRICE_COLUMNS)]
    bad_rows = np.flatnonzero((prices <= 0).any(axis=1))
    if bad_rows.size:
        position = int(bad_rows[0])
        column = int(np.argmax(prices[position] <= 0))
        value = float(prices[position, column])
        raise ValueError(
            f"bars have a non-positive {PRICE_COLUMNS[column]} price {value!r} at "
            f"{_row(bars.index, position)}; prices must be > 0"
        )

    negative_volume = np.flatnonzero(values[:, -1] < 0)
    if negative_volume.size:
        position = int(negative_volume[0])
        raise ValueError(
            f"bars have a negative volume {float(values[position, -1])!r} at "
            f"{_row(bars.index, position)}; volume must be >= 0"
        )
    # Limitation: OHLC consistency (low <= open, close <= high) is not enforced,
    # because vendor data often breaks it by a tick and rejecting it helps nobody.


def synthetic_bars(
    n: int, seed: int = 0, start: str = "2020-01-01", freq: str = "1D"
) -> pd.DataFrame:
    """Generate reproducible bars from a geometric random walk.

    Close follows ``100 * exp(cumsum(N(0.0002, 0.01)))``; each open is the previous
    close moved by a small gap, and high / low extend the open-close range by a
    half-normal amount, so ``0 < low <= min(open, close) <= max(open, close) <= high``.

    Parameters
    ----------
    n : int
        Number of bars, at least 2.
    seed : int, default 0
        Seed of ``numpy.random.default_rng``; the same seed gives the same bars.
    start : str, default "2020-01-01"
        First timestamp.
    freq : str, default "1D"
        Pandas frequency string of the index.

    Returns
    -------
    pd.DataFrame
        Shape (n, 5), float64 OHLCV on a ``DatetimeIndex`` named ``timestamp``.

    Raises
    ------
    ValueError
        If ``n`` is not an integer of at least 2.
    """
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 2:
        raise ValueError(f"n must be an integer >= 2, got {n!r}")

    rng = np.random.default_rng(seed)
    log_close = np.log(100.0) + np.cumsum(rng.normal(0.0002, 0.01, n))
    close = np.exp(log_close)
    open_ = np.empty(n)
    open_[0] = 100.0
    open_[1:] = close[:-1] * np.exp(rng.normal(0.0, 0.002, n - 1))

    wick = np.exp(np.abs(rng.normal(0.0, 0.004, (2, n))))
    high = np.maximum(open_, close) * wick[0]
    low = np.minimum(open_, close) / wick[1]
    volume = rng.lognormal(mean=10.0, sigma=0.5, size=n)

    index = pd.date_range(start=start, periods=n, freq=freq, name="timestamp")
    data = {"open": open_, "high": high, "low": low, "close": close, "volume": volume}
    return pd.DataFrame(data, index=index)


def bars_fingerprint(df: pd.DataFrame) -> str:
    """Return a stable sha256 hex digest of the bars' timestamps and OHLCV values.

    Timestamps are hashed as int64 microseconds since the epoch (with the time
    zone name), which reaches far past the year 2262 where nanoseconds overflow;
    values as little-endian float64 in ``open, high, low, close, volume`` order, so
    the digest does not depend on the index resolution or column order.

    Parameters
    ----------
    df : pd.DataFrame
        Bars with a ``DatetimeIndex`` and the five OHLCV columns.

    Returns
    -------
    str
        64 hexadecimal characters.
    """
    bars = _select_ohlcv(df)
    if not isinstance(bars.index, pd.DatetimeIndex):
        raise ValueError(
            f"bars must have a DatetimeIndex, got {type(bars.index).__name__}"
        )

    digest = hashlib.sha256()
    digest.update(str(bars.index.tz).encode())
    # Limitation: timestamps finer than a microsecond are hashed rounded down.
    digest.update(bars.index.as_unit("us").asi8.astype("<i8").tobytes())
    digest.update(np.ascontiguousarray(bars.to_numpy(), dtype="<f8").tobytes())
    return digest.hexdigest()
