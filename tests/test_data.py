"""Tests of loading, validating, generating and fingerprinting bars."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from backtest_data_module.data import (
    OHLCV_COLUMNS,
    bars_fingerprint,
    load_bars,
    synthetic_bars,
    validate_bars,
)


@pytest.fixture
def bars() -> pd.DataFrame:
    return synthetic_bars(10, seed=3)


def write_csv(frame: pd.DataFrame, path: Path) -> Path:
    frame.to_csv(path, index_label="Date")
    return path


def test_csv_round_trip_keeps_values_and_drops_extra_columns(bars, tmp_path):
    frame = bars.rename(columns=str.upper).assign(symbol="X")
    loaded = load_bars(write_csv(frame, tmp_path / "bars.csv"))

    assert list(loaded.columns) == list(OHLCV_COLUMNS)
    assert isinstance(loaded.index, pd.DatetimeIndex)
    assert all(loaded[c].dtype == np.float64 for c in OHLCV_COLUMNS)
    np.testing.assert_allclose(loaded.to_numpy(), bars.to_numpy(), rtol=1e-12)
    assert (loaded.index == bars.index).all()


def test_csv_timestamp_may_be_first_unnamed_column(bars, tmp_path):
    path = tmp_path / "bars.csv"
    bars.to_csv(path, index_label="when")
    assert (load_bars(path).index == bars.index).all()


def test_parquet_round_trip(bars, tmp_path):
    path = tmp_path / "bars.parquet"
    bars.to_parquet(path)
    loaded = load_bars(path)
    np.testing.assert_array_equal(loaded.to_numpy(), bars.to_numpy())


def test_parquet_with_timestamp_column(bars, tmp_path):
    path = tmp_path / "bars.pq"
    bars.reset_index().rename(columns={"timestamp": "Datetime"}).to_parquet(path)
    assert (load_bars(path).index == bars.index).all()


def test_unknown_extension_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"\.txt"):
        load_bars(tmp_path / "bars.txt")


def test_missing_column_is_named(bars):
    with pytest.raises(ValueError, match=r"missing columns \['volume'\]"):
        validate_bars(bars.drop(columns="volume"))


def test_duplicate_timestamp_names_row(bars):
    index = bars.index.to_list()
    index[4] = index[3]
    with pytest.raises(ValueError, match=r"duplicate timestamp at row 4 \(timestamp "):
        validate_bars(bars.set_axis(pd.DatetimeIndex(index)))


def test_unsorted_timestamps_name_row(bars):
    index = bars.index.to_list()
    index[5], index[6] = index[6], index[5]
    with pytest.raises(ValueError, match=r"not sorted: row 6 \(timestamp 2020-01-06"):
        validate_bars(bars.set_axis(pd.DatetimeIndex(index)))


def test_nan_row_is_named(bars):
    broken = bars.copy()
    broken.iloc[7, 2] = np.nan
    with pytest.raises(ValueError, match=r"NaN at row 7 \(timestamp 2020-01-08"):
        validate_bars(broken)


def test_non_positive_price_is_named(bars):
    broken = bars.copy()
    broken.loc[broken.index[2], "low"] = 0.0
    with pytest.raises(ValueError, match=r"non-positive low price 0\.0 at row 2"):
        validate_bars(broken)


def test_csv_errors_come_from_the_same_checks(bars, tmp_path):
    broken = bars.copy()
    broken.iloc[1, 3] = -5.0
    with pytest.raises(ValueError, match=r"non-positive close price -5\.0 at row 1"):
        load_bars(write_csv(broken, tmp_path / "bars.csv"))


def test_non_datetime_index_is_refused(bars):
    with pytest.raises(ValueError, match="DatetimeIndex"):
        validate_bars(bars.reset_index(drop=True))


def test_synthetic_bars_are_reproducible_and_consistent():
    first = synthetic_bars(5000, seed=7)
    assert first.equals(synthetic_bars(5000, seed=7))
    assert not first.equals(synthetic_bars(5000, seed=8))

    body_low = np.minimum(first["open"], first["close"])
    body_high = np.maximum(first["open"], first["close"])
    assert (first["low"] > 0).all()
    assert (first["low"] <= body_low).all()
    assert (body_high <= first["high"]).all()
    assert (first["volume"] > 0).all()
    assert validate_bars(first).equals(first)


def test_synthetic_bars_index_follows_start_and_freq():
    frame = synthetic_bars(3, start="2021-06-01 09:30", freq="1min")
    expected = pd.date_range("2021-06-01 09:30", periods=3, freq="1min")
    assert (frame.index == expected).all()


@pytest.mark.parametrize("n", [0, 1, -5, 2.5, True, "10"])
def test_synthetic_bars_refuses_bad_n(n):
    with pytest.raises(ValueError, match=r"n must be an integer >= 2"):
        synthetic_bars(n)


def test_million_synthetic_bars_are_fast():
    start = time.perf_counter()
    frame = synthetic_bars(1_000_000)
    assert len(frame) == 1_000_000
    assert time.perf_counter() - start < 2.0


def test_fingerprint_takes_bars_beyond_the_nanosecond_range():
    far = synthetic_bars(105_000, seed=1)  # daily bars from 2020 run to 2307

    assert far.index[-1].year == 2307
    assert len(bars_fingerprint(far)) == 64


def test_fingerprint_is_stable_and_sensitive(bars):
    digest = bars_fingerprint(bars)
    assert len(digest) == 64
    assert digest == bars_fingerprint(bars.copy())
    assert digest == bars_fingerprint(bars[list(reversed(bars.columns))])
    assert digest == bars_fingerprint(bars.set_axis(bars.index.as_unit("s")))

    changed = bars.copy()
    changed.iloc[3, 0] += 1e-9
    assert bars_fingerprint(changed) != digest
    shifted = bars.set_axis(bars.index + pd.Timedelta("1s"))
    assert bars_fingerprint(shifted) != digest
