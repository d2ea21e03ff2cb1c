"""Tests of the walk-forward and combinatorial purged CV splitters."""

from __future__ import annotations

import json

import numpy as np
import pytest

from backtest_data_module.backtesting.validation import (
    CombinatorialPurgedCV,
    WalkForward,
)


def as_tuples(splitter, n):
    return [(tuple(train), tuple(test)) for train, test in splitter.split(n)]


def test_walk_forward_rolling():
    assert as_tuples(WalkForward(train_size=4, test_size=2), 10) == [
        ((0, 1, 2, 3), (4, 5)),
        ((2, 3, 4, 5), (6, 7)),
        ((4, 5, 6, 7), (8, 9)),
    ]


def test_walk_forward_expanding_with_purge():
    splitter = WalkForward(train_size=4, test_size=2, expanding=True, purge=1)
    assert as_tuples(splitter, 10) == [
        ((0, 1, 2), (4, 5)),
        ((0, 1, 2, 3, 4), (6, 7)),
        ((0, 1, 2, 3, 4, 5, 6), (8, 9)),
    ]


def test_walk_forward_step_drops_a_short_last_window():
    splitter = WalkForward(train_size=4, test_size=2, step=3)
    assert as_tuples(splitter, 10) == [
        ((0, 1, 2, 3), (4, 5)),
        ((3, 4, 5, 6), (7, 8)),
    ]
    assert splitter.get_n_splits(10) == 2


def test_walk_forward_yields_int_arrays():
    train, test = next(WalkForward(3, 1).split(4))
    assert train.dtype == np.int64
    assert test.dtype == np.int64


def test_walk_forward_config_and_repr():
    splitter = WalkForward(train_size=4, test_size=2)
    assert splitter.to_dict() == {
        "name": "walk_forward",
        "train_size": 4,
        "test_size": 2,
        "step": 2,
        "expanding": False,
        "purge": 0,
    }
    assert json.loads(json.dumps(splitter.to_dict())) == splitter.to_dict()
    assert repr(splitter) == (
        "WalkForward(train_size=4, test_size=2, step=2, expanding=False, purge=0)"
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"train_size": 0, "test_size": 1},
            r"train_size must be an integer >= 1, got 0",
        ),
        ({"train_size": 2.0, "test_size": 1}, r"train_size must be an integer"),
        ({"train_size": 5, "test_size": -1}, r"test_size must be an integer >= 1"),
        ({"train_size": 5, "test_size": 1, "step": 0}, r"step must be an integer"),
        ({"train_size": 5, "test_size": 1, "purge": -1}, r"purge must be an integer"),
        ({"train_size": 5, "test_size": 1, "purge": 5}, r"purge must be < train_size"),
        ({"train_size": 5, "test_size": 1, "expanding": 1}, r"expanding must be a"),
    ],
)
def test_walk_forward_refuses_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        WalkForward(**kwargs)


def test_walk_forward_refuses_too_few_bars():
    with pytest.raises(ValueError, match=r"n must be >= train_size \+ test_size \(6\)"):
        list(WalkForward(4, 2).split(5))


def test_cpcv_three_groups_two_test_groups():
    assert as_tuples(CombinatorialPurgedCV(3, 2), 12) == [
        ((8, 9, 10, 11), (0, 1, 2, 3, 4, 5, 6, 7)),
        ((4, 5, 6, 7), (0, 1, 2, 3, 8, 9, 10, 11)),
        ((0, 1, 2, 3), (4, 5, 6, 7, 8, 9, 10, 11)),
    ]


def test_cpcv_purge_and_embargo():
    splitter = CombinatorialPurgedCV(3, 2, purge=1, embargo=1)
    assert as_tuples(splitter, 12) == [
        ((9, 10, 11), (0, 1, 2, 3, 4, 5, 6, 7)),
        ((5, 6), (0, 1, 2, 3, 8, 9, 10, 11)),
        ((0, 1, 2), (4, 5, 6, 7, 8, 9, 10, 11)),
    ]


def test_cpcv_single_test_group_with_purge_only():
    splitter = CombinatorialPurgedCV(3, 1, purge=2)
    assert as_tuples(splitter, 9) == [
        ((3, 4, 5, 6, 7, 8), (0, 1, 2)),
        ((0, 6, 7, 8), (3, 4, 5)),
        ((0, 1, 2, 3), (6, 7, 8)),
    ]


def test_cpcv_paths_for_three_groups():
    splitter = CombinatorialPurgedCV(3, 2)
    assert splitter.n_paths == 2
    assert splitter.paths(12) == [
        [(0, 0), (0, 1), (1, 2)],
        [(1, 0), (2, 1), (2, 2)],
    ]


def test_cpcv_counts_for_ten_groups():
    splitter = CombinatorialPurgedCV(10, 2)
    assert splitter.get_n_splits(100) == 45
    assert len(list(splitter.split(100))) == 45
    assert splitter.n_paths == 9

    paths = splitter.paths(100)
    assert len(paths) == 9
    splits = list(splitter.split(100))
    for path in paths:
        assert [group for _, group in path] == list(range(10))
        tests = np.concatenate(
            [splits[s][1][(splits[s][1] // 10) == g] for s, g in path]
        )
        np.testing.assert_array_equal(tests, np.arange(100))
    used = sorted((s, g) for path in paths for s, g in path)
    assert len(used) == len(set(used)) == 90


def test_cpcv_uneven_groups_put_extra_bars_first():
    _, test = next(CombinatorialPurgedCV(3, 1).split(11))
    assert tuple(test) == (0, 1, 2, 3)


def test_cpcv_config_and_repr():
    splitter = CombinatorialPurgedCV(6, 2, purge=3, embargo=1)
    assert splitter.to_dict() == {
        "name": "cpcv",
        "n_groups": 6,
        "n_test_groups": 2,
        "purge": 3,
        "embargo": 1,
    }
    assert repr(splitter) == (
        "CombinatorialPurgedCV(n_groups=6, n_test_groups=2, purge=3, embargo=1)"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((1, 1), r"n_groups must be an integer >= 2, got 1"),
        ((3, 0), r"n_test_groups must be an integer >= 1, got 0"),
        ((3, 3), r"n_test_groups must be < n_groups \(3\), got 3"),
        ((3.0, 1), r"n_groups must be an integer"),
        ((3, 1, -1), r"purge must be an integer >= 0, got -1"),
        ((3, 1, 0, -2), r"embargo must be an integer >= 0, got -2"),
    ],
)
def test_cpcv_refuses_bad_arguments(args, message):
    with pytest.raises(ValueError, match=message):
        CombinatorialPurgedCV(*args)


def test_cpcv_refuses_too_few_bars():
    with pytest.raises(ValueError, match=r"n must be >= n_groups \+ purge \+ embargo"):
        CombinatorialPurgedCV(10, 2).get_n_splits(5)
    with pytest.raises(ValueError, match="leaves no train bars"):
        list(CombinatorialPurgedCV(3, 2, purge=2, embargo=2).split(9))
