"""Train / test splits of a bar series for out-of-sample validation.

Splitters check their arguments when created and yield ``(train_idx, test_idx)``
pairs of sorted int64 bar positions from ``split(n)``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np


def _int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_n(n: Any) -> int:
    return _int("n", n, 1)


class WalkForward:
    """Consecutive test windows, each trained on the bars before it.

    Split i tests bars ``[s, s + test_size)`` with ``s = train_size + i * step``.
    Its train window is ``[s - train_size, s - purge)``, or ``[0, s - purge)`` when
    expanding, so the last ``purge`` bars before the test window are left out.
    A final test window shorter than ``test_size`` is not produced.

    Parameters
    ----------
    train_size : int
        Bars in the (first) train window, > purge.
    test_size : int
        Bars in each test window, >= 1.
    step : int, optional
        Bars between test window starts, >= 1; defaults to ``test_size``.
    expanding : bool, default False
        Train on all bars from 0 instead of a rolling window.
    purge : int, default 0
        Bars dropped from the end of each train window, >= 0.
    """

    name: ClassVar[str] = "walk_forward"

    def __init__(
        self,
        train_size: int,
        test_size: int,
        step: int | None = None,
        expanding: bool = False,
        purge: int = 0,
    ) -> None:
        self.train_size = _int("train_size", train_size, 1)
        self.test_size = _int("test_size", test_size, 1)
        self.step = self.test_size if step is None else _int("step", step, 1)
        if not isinstance(expanding, bool):
            raise ValueError(f"expanding must be a bool, got {expanding!r}")
        self.expanding = expanding
        self.purge = _int("purge", purge, 0)
        if self.purge >= self.train_size:
            raise ValueError(
                f"purge must be < train_size ({self.train_size}), got {purge!r}"
            )

    def get_n_splits(self, n: int) -> int:
        """Number of splits of ``n`` bars; raises ``ValueError`` if there are none."""
        n = _check_n(n)
        needed = self.train_size + self.test_size
        if n < needed:
            raise ValueError(
                f"n must be >= train_size + test_size ({needed}) for {self!r}, got {n}"
            )
        return (n - needed) // self.step + 1

    def split(self, n: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(train_idx, test_idx)`` int64 arrays for ``n`` bars."""
        for i in range(self.get_n_splits(n)):
            test_start = self.train_size + i * self.step
            train_start = 0 if self.expanding else test_start - self.train_size
            yield (
                np.arange(train_start, test_start - self.purge, dtype=np.int64),
                np.arange(test_start, test_start + self.test_size, dtype=np.int64),
            )

    def to_dict(self) -> dict[str, Any]:
        """The configuration, JSON-serialisable, for recording with a run."""
        return {
            "name": self.name,
            "train_size": self.train_size,
            "test_size": self.test_size,
            "step": self.step,
            "expanding": self.expanding,
            "purge": self.purge,
        }

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items() if k != "name")
        return f"WalkForward({args})"


class CombinatorialPurgedCV:
    """Combinatorial purged cross-validation (Lopez de Prado).

    The n bars are cut into ``n_groups`` contiguous groups (sizes differ by at most
    one, larger groups first). Each combination of ``n_test_groups`` groups, in
    lexicographic order, is one split's test set. Its train set is every other bar
    except the ``purge`` bars before each test group and the ``embargo`` bars
    after it.

    Parameters
    ----------
    n_groups : int
        Number of groups N, >= 2.
    n_test_groups : int
        Test groups per split k, 1 <= k < N.
    purge : int, default 0
        Bars removed from train before each test group, >= 0.
    embargo : int, default 0
        Bars removed from train after each test group, >= 0.
    """

    name: ClassVar[str] = "cpcv"

    def __init__(
        self, n_groups: int, n_test_groups: int, purge: int = 0, embargo: int = 0
    ) -> None:
        self.n_groups = _int("n_groups", n_groups, 2)
        self.n_test_groups = _int("n_test_groups", n_test_groups, 1)
        if self.n_test_groups >= self.n_groups:
            raise ValueError(
                f"n_test_groups must be < n_groups ({self.n_groups}), "
                f"got {n_test_groups!r}"
            )
        self.purge = _int("purge", purge, 0)
        self.embargo = _int("embargo", embargo, 0)

    @property
    def n_paths(self) -> int:
        """Number of backtest paths, ``k * C(N, k) / N``."""
        return math.comb(self.n_groups - 1, self.n_test_groups - 1)

    def _combinations(self) -> list[tuple[int, ...]]:
        return list(itertools.combinations(range(self.n_groups), self.n_test_groups))

    def _bounds(self, n: int) -> np.ndarray:
        """Start of each group plus n, shape (N + 1,)."""
        n = _check_n(n)
        # Each train set must keep at least one bar after purging and embargo.
        needed = self.n_groups + self.purge + self.embargo
        if n < needed:
            raise ValueError(
                f"n must be >= n_groups + purge + embargo ({needed}) for {self!r}, "
                f"got {n}"
            )
        sizes = np.full(self.n_groups, n // self.n_groups)
        sizes[: n % self.n_groups] += 1
        return np.concatenate(([0], np.cumsum(sizes)))

    def get_n_splits(self, n: int) -> int:
        """Number of splits, ``C(N, k)``; raises ``ValueError`` if n is too small."""
        return len(self._splits(n))

    def split(self, n: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(train_idx, test_idx)`` int64 arrays for ``n`` bars."""
        yield from self._splits(n)

    def _splits(self, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
        # Built up front so a bad n raises before the first split is used.
        bounds = self._bounds(n)
        splits = []
        for groups in self._combinations():
            is_test = np.zeros(n, dtype=bool)
            is_train = np.ones(n, dtype=bool)
            for g in groups:
                start, end = bounds[g], bounds[g + 1]
                is_test[start:end] = True
                is_train[max(start - self.purge, 0) : end + self.embargo] = False

            train = np.flatnonzero(is_train)
            if train.size == 0:
                raise ValueError(
                    f"n={n} leaves no train bars for test groups {groups} with "
                    f"{self!r}; use more bars or less purge / embargo"
                )
            splits.append((train, np.flatnonzero(is_test)))
        return splits

    def paths(self, n: int) -> list[list[tuple[int, int]]]:
        """Assemble the test groups of all splits into ``n_paths`` full paths.

        Path j takes, for each group g in order, the j-th split (in split order)
        that tests g.

        Returns
        -------
        list of list of (int, int)
            ``n_paths`` lists of N ``(split_index, group)`` pairs.
        """
        self._bounds(n)
        by_group: list[list[int]] = [[] for _ in range(self.n_groups)]
        for split_index, groups in enumerate(self._combinations()):
            for g in groups:
                by_group[g].append(split_index)
        return [
            [(by_group[g][j], g) for g in range(self.n_groups)]
            for j in range(self.n_paths)
        ]

    def to_dict(self) -> dict[str, Any]:
        """The configuration, JSON-serialisable, for recording with a run."""
        return {
            "name": self.name,
            "n_groups": self.n_groups,
            "n_test_groups": self.n_test_groups,
            "purge": self.purge,
            "embargo": self.embargo,
        }

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items() if k != "name")
        return f"CombinatorialPurgedCV({args})"
