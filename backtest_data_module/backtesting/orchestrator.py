"""Orchestrator: run a strategy over validation slices, record the run, summarise it.

Example::

    orchestrator = Orchestrator(
        strategy=SmaCrossover,
        hyperparameters={"fast": 10, "slow": 50},
        validation=WalkForward(train_size=1000, test_size=500),
        register_api="http://localhost:8000",
        metrics_dir="runs",
    )
    result = orchestrator.run(synthetic_bars(4000, seed=7))

Each slice runs the strategy on every bar up to the end of its test window (never a
bar after it), and metrics are computed on the test window only. The summary JSON
and the test-window equity curves go to ``<metrics_dir>/<run_id>/``. Tracking on the
strategy manager service runs in the background (see :mod:`.tracking`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import json
import logging
import math
import multiprocessing
import os
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar, cast

import fsspec
import numpy as np
import pandas as pd
from fsspec.implementations.local import LocalFileSystem

from backtest_data_module.backtesting.engine import run_backtest
from backtest_data_module.backtesting.metrics import PERIODS_PER_YEAR, compute_metrics
from backtest_data_module.backtesting.strategies import Strategy, get_strategy
from backtest_data_module.backtesting.tracking import (
    RunTracker,
    TrackingReport,
    TrackingSession,
    TrackingWarning,
)
from backtest_data_module.data import bars_fingerprint, validate_bars

__all__ = [
    "EXECUTORS",
    "Orchestrator",
    "RunResult",
    "SliceResult",
    "TrackingWarning",
]

logger = logging.getLogger(__name__)

ExecutorName = Literal["local", "process", "ray"]
EXECUTORS: tuple[str, ...] = ("local", "process", "ray")
DEFAULT_TRACKING_RETRY_FOR = 10.0
DEFAULT_TRACKING_TIMEOUT = 15.0
DEFAULT_HEARTBEAT_INTERVAL = 60.0

T = TypeVar("T")


class Splitter(Protocol):
    """What the orchestrator needs of a validation scheme."""

    name: str

    def split(self, n: int) -> Iterator[tuple[np.ndarray, np.ndarray]]: ...

    def get_n_splits(self, n: int) -> int: ...

    def to_dict(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class SliceTask:
    """Everything a worker needs to run one slice; picklable."""

    index: int
    strategy: type[Strategy]
    params: dict[str, Any]
    train_idx: np.ndarray
    test_idx: np.ndarray
    commission_bps: float
    slippage_bps: float
    periods_per_year: float


@dataclass(frozen=True, eq=False)
class SliceResult:
    """One validation slice: where it trained and tested, and its test metrics.

    ``returns`` and ``positions`` hold the test window only, indexed by timestamp;
    ``positions[t]`` is the target decided at bar t's close.
    """

    index: int
    train_idx: np.ndarray = field(repr=False)
    test_idx: np.ndarray = field(repr=False)
    metrics: dict[str, float] = field(repr=False)
    returns: pd.Series = field(repr=False)
    positions: pd.Series = field(repr=False)

    @property
    def equity(self) -> pd.Series:
        """Growth of 1.0 over the test window."""
        return (1.0 + self.returns).cumprod()


@dataclass(frozen=True, eq=False)
class RunResult:
    """Outcome of one tracked run.

    ``metrics`` is the flat summary sent to the service: the metrics of the joined
    out-of-sample returns under their own names, plus ``<name>_mean`` and
    ``<name>_std`` across slices. ``summary`` is the full JSON document written to
    ``metrics_uri``.
    """

    run_id: str
    status: str
    metrics: dict[str, float] = field(repr=False)
    slices: list[SliceResult] = field(repr=False)
    metrics_uri: str | None
    strategy_name: str
    strategy_version: str
    hyperparameters: dict[str, Any]
    validation: dict[str, Any]
    summary: dict[str, Any] = field(default_factory=dict, repr=False)
    error: str | None = None
    duration_s: float = 0.0
    tracking: TrackingReport | None = None


class Orchestrator:
    """Run a strategy over the slices of a validation scheme and record the run.

    Parameters
    ----------
    strategy:
        A ``Strategy`` subclass or a registered strategy name.
    hyperparameters:
        Keyword arguments of the strategy; checked now (``ValueError``).
    validation:
        A splitter such as ``WalkForward`` or ``CombinatorialPurgedCV``.
    register_api:
        Base URL of the strategy manager service; ``None`` records nothing remotely.
    metrics_dir:
        Local directory or fsspec URL (``"memory://runs"``, ``"s3://b/runs"``) for
        summaries, equity curves and the tracking outbox.
    api_key:
        Overrides the ``STRATEGY_MANAGER_API_KEY`` variable.
    executor:
        ``"local"`` (a worker thread), ``"process"`` (a process pool) or ``"ray"``.
    max_workers:
        Size of the process pool; ``None`` lets Python choose.
    commission_bps, slippage_bps:
        Costs per unit of position change, in basis points.
    periods_per_year:
        Bars per year, for annualised metrics.
    tracking_retry_for:
        Seconds a tracking call is retried before it goes to the outbox.
    tracking_timeout:
        Seconds a finished run waits for its tracking calls before saving the rest.
    heartbeat_interval:
        Seconds between heartbeats while slices run.
    progress:
        Called as ``progress(finished, total)`` after each slice, from whichever
        thread finished it; the command line draws its progress bar with it.
    """

    def __init__(
        self,
        strategy: type[Strategy] | str,
        hyperparameters: Mapping[str, Any] | None = None,
        validation: Splitter | None = None,
        register_api: str | None = None,
        metrics_dir: str | os.PathLike[str] = "runs",
        *,
        api_key: str | None = None,
        executor: ExecutorName = "local",
        max_workers: int | None = None,
        commission_bps: float = 0.0,
        slippage_bps: float = 0.0,
        periods_per_year: float = PERIODS_PER_YEAR,
        tracking_retry_for: float = DEFAULT_TRACKING_RETRY_FOR,
        tracking_timeout: float = DEFAULT_TRACKING_TIMEOUT,
        heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL,
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        if validation is None:
            raise ValueError("validation must be a splitter such as WalkForward")
        if executor not in EXECUTORS:
            raise ValueError(
                f"executor must be one of {list(EXECUTORS)}, got {executor!r}"
            )
        for name, value in (
            ("commission_bps", commission_bps),
            ("slippage_bps", slippage_bps),
            ("tracking_retry_for", tracking_retry_for),
            ("tracking_timeout", tracking_timeout),
            ("heartbeat_interval", heartbeat_interval),
        ):
            if not (isinstance(value, int | float) and 0 <= value < math.inf):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")

        self.strategy_class = get_strategy(strategy)
        self.strategy = self.strategy_class(**dict(hyperparameters or {}))
        self.validation = validation
        self.register_api = register_api
        self.metrics_dir = os.fspath(metrics_dir).rstrip("/")
        self.api_key = api_key
        self.executor = executor
        self.max_workers = max_workers
        self.commission_bps = commission_bps
        self.slippage_bps = slippage_bps
        self.periods_per_year = periods_per_year
        self.tracking_retry_for = tracking_retry_for
        self.tracking_timeout = tracking_timeout
        self.heartbeat_interval = heartbeat_interval
        self.progress = progress

    @property
    def hyperparameters(self) -> dict[str, Any]:
        """The strategy's parameters, defaults filled in, as recorded with a run."""
        return self.strategy.params

    def run(self, bars: pd.DataFrame) -> RunResult:
        """Run the backtest and block until it is recorded; see :meth:`arun`.

        Works from plain code and from inside a running event loop (a notebook):
        there the run gets its own loop on a worker thread.
        """
        return _run_blocking(lambda: self.arun(bars))

    async def arun(self, bars: pd.DataFrame) -> RunResult:
        """Run the backtest; raises what the strategy raised, after recording it."""
        async with self._session() as (session, executor):
            return await self._run_one(bars, session, executor)

    def sweep(
        self, bars: pd.DataFrame, grid: Mapping[str, list[Any]]
    ) -> list[RunResult]:
        """Run one tracked run per combination of the grid; see :meth:`asweep`."""
        return _run_blocking(lambda: self.asweep(bars, grid))

    async def asweep(
        self, bars: pd.DataFrame, grid: Mapping[str, list[Any]]
    ) -> list[RunResult]:
        """Run one tracked run per combination of ``grid`` over the base parameters.

        Combinations the strategy refuses (e.g. fast >= slow) are skipped with one
        ``UserWarning`` listing them; they never become runs. A run that fails is
        recorded as FAILED and returned with ``status="FAILED"`` and ``error`` set,
        so one bad member does not lose the others. Members run one after another
        with the local executor and all at once with "process" and "ray", where
        their slices share the pool or the cluster.
        """
        members = self._sweep_members(grid)
        async with self._session() as (session, executor):
            jobs = [
                member._run_one(bars, session, executor, raise_errors=False)
                for member in members
            ]
            if self.executor == "local":
                return [await job for job in jobs]
            return list(await asyncio.gather(*jobs))

    def _sweep_members(self, grid: Mapping[str, list[Any]]) -> list[Orchestrator]:
        names = list(grid)
        for name in names:
            if isinstance(grid[name], str) or not len(grid[name]):
                raise ValueError(
                    f"grid[{name!r}] must be a non-empty list, got {grid[name]!r}"
                )

        members, skipped = [], []
        for values in itertools.product(*(grid[name] for name in names)):
            params = {**self.strategy.params, **dict(zip(names, values, strict=True))}
            try:
                members.append(self._with_params(params))
            except ValueError as exc:
                skipped.append(f"{dict(zip(names, values, strict=True))} ({exc})")
        if skipped:
            warnings.warn(
                f"sweep skipped {len(skipped)} invalid combinations: "
                + "; ".join(skipped),
                UserWarning,
                stacklevel=3,
            )
        return members

    def _with_params(self, params: dict[str, Any]) -> Orchestrator:
        member = object.__new__(Orchestrator)
        member.__dict__.update(self.__dict__)
        member.strategy = self.strategy_class(**params)
        return member

    @contextlib.asynccontextmanager
    async def _session(self) -> AsyncIterator[tuple[TrackingSession, _Executor]]:
        session = TrackingSession(
            self.register_api,
            self.metrics_dir,
            api_key=self.api_key,
            retry_for=self.tracking_retry_for,
        )
        async with session, _make_executor(self.executor, self.max_workers) as pool:
            yield session, pool

    async def _run_one(
        self,
        bars: pd.DataFrame,
        session: TrackingSession,
        executor: _Executor,
        *,
        raise_errors: bool = True,
    ) -> RunResult:
        bars = validate_bars(bars)
        splits = list(self.validation.split(len(bars)))
        run_id = str(uuid.uuid4())
        started = time.perf_counter()
        tracker = session.track(run_id)
        tracker.create(
            strategy_name=self.strategy.name,
            strategy_version=self.strategy.version,
            hyperparameters=self.hyperparameters,
            orchestrator_type=self.validation.name,
        )
        tracker.update(status="RUNNING")
        logger.info(
            "run %s started: %s %s %s, %s with %d slices on %d bars, executor %s",
            run_id,
            self.strategy.name,
            self.strategy.version,
            self.hyperparameters,
            self.validation.name,
            len(splits),
            len(bars),
            self.executor,
        )

        try:
            with _heartbeats(tracker, self.heartbeat_interval):
                done = _progress_counter(self.progress, len(splits))
                slices = await executor.run(self._tasks(splits), bars, done)
            summary, metrics = self._summarise(run_id, bars, slices, started)
            metrics_uri = await asyncio.to_thread(
                _write_outputs, self.metrics_dir, run_id, summary, slices
            )
        # Limitation: a cancelled run (Ctrl-C, task.cancel()) is not reported as
        # CANCELLED; it stays RUNNING on the server until its heartbeat goes stale.
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            tracker.update(status="FAILED", error_message=error)
            report = await tracker.close(self.tracking_timeout)
            duration = time.perf_counter() - started
            logger.info("run %s FAILED in %.3fs: %s", run_id, duration, error)
            if raise_errors:
                exc.add_note(f"run {run_id} recorded as FAILED")
                raise
            return self._result(
                run_id,
                "FAILED",
                {},
                [],
                None,
                {},
                error=error,
                duration_s=duration,
                tracking=report,
            )

        tracker.update(status="COMPLETED", metrics_uri=metrics_uri, metrics=metrics)
        report = await tracker.close(self.tracking_timeout)
        duration = time.perf_counter() - started
        logger.info(
            "run %s COMPLETED in %.3fs (waited %.3fs for tracking): %s",
            run_id,
            duration,
            report.wait_s,
            metrics_uri,
        )
        return self._result(
            run_id,
            "COMPLETED",
            metrics,
            slices,
            metrics_uri,
            summary,
            duration_s=duration,
            tracking=report,
        )

    def _result(
        self,
        run_id: str,
        status: str,
        metrics: dict[str, float],
        slices: list[SliceResult],
        metrics_uri: str | None,
        summary: dict[str, Any],
        **extra: Any,
    ) -> RunResult:
        return RunResult(
            run_id=run_id,
            status=status,
            metrics=metrics,
            slices=slices,
            metrics_uri=metrics_uri,
            strategy_name=self.strategy.name,
            strategy_version=self.strategy.version,
            hyperparameters=self.hyperparameters,
            validation=self.validation.to_dict(),
            summary=summary,
            **extra,
        )

    def _tasks(self, splits: list[tuple[np.ndarray, np.ndarray]]) -> list[SliceTask]:
        return [
            SliceTask(
                index=index,
                strategy=self.strategy_class,
                params=self.hyperparameters,
                train_idx=np.asarray(train, dtype=np.int64),
                test_idx=np.asarray(test, dtype=np.int64),
                commission_bps=self.commission_bps,
                slippage_bps=self.slippage_bps,
                periods_per_year=self.periods_per_year,
            )
            for index, (train, test) in enumerate(splits)
        ]

    def _summarise(
        self,
        run_id: str,
        bars: pd.DataFrame,
        slices: list[SliceResult],
        started: float,
    ) -> tuple[dict[str, Any], dict[str, float]]:
        aggregate = _aggregate(slices, self.periods_per_year)
        paths = self._path_metrics(len(bars), slices)
        if paths is not None:
            aggregate["paths"] = paths
            aggregate["across_paths"] = _spread([p["metrics"] for p in paths])

        summary = {
            "run_id": run_id,
            "status": "COMPLETED",
            "finished_at": datetime.now(UTC).isoformat(),
            "duration_s": time.perf_counter() - started,
            "config": self._config(),
            "data": _describe_bars(bars),
            "slices": [
                _describe_slice(s, cast(pd.DatetimeIndex, bars.index)) for s in slices
            ],
            "aggregate": aggregate,
        }
        return summary, _flat_metrics(aggregate, len(slices))

    def _config(self) -> dict[str, Any]:
        cls = self.strategy_class
        return {
            "strategy": {
                "name": self.strategy.name,
                "version": self.strategy.version,
                "class": f"{cls.__module__}.{cls.__qualname__}",
            },
            "hyperparameters": self.hyperparameters,
            "validation": self.validation.to_dict(),
            "costs": {
                "commission_bps": self.commission_bps,
                "slippage_bps": self.slippage_bps,
            },
            "periods_per_year": self.periods_per_year,
            "executor": self.executor,
        }

    def _path_metrics(
        self, n: int, slices: list[SliceResult]
    ) -> list[dict[str, Any]] | None:
        """Metrics of each backtest path, if the splitter defines paths (CPCV)."""
        paths = getattr(self.validation, "paths", None)
        n_groups = getattr(self.validation, "n_groups", None)
        if paths is None or n_groups is None:
            return None

        # CPCV groups: contiguous, sizes differ by at most one, larger ones first.
        groups = np.array_split(np.arange(n), n_groups)
        described = []
        for number, path in enumerate(paths(n)):
            pieces = [
                slices[split].returns.iloc[
                    np.searchsorted(slices[split].test_idx, groups[group])
                ]
                for split, group in path
            ]
            returns = pd.concat(pieces)
            metrics = compute_metrics(
                returns.to_numpy(), periods_per_year=self.periods_per_year
            )
            described.append(
                {"path": number, "splits": [s for s, _ in path], "metrics": metrics}
            )
        return described


def run_slice(task: SliceTask, bars: pd.DataFrame) -> SliceResult:
    """Run one slice: the strategy on bars up to the end of the test window.

    Module level so process pools and Ray can ship it to workers.
    """
    # Limitation: Strategy has no fit step, so train_idx is recorded but not used,
    # and every slice recomputes positions from bar 0 (O(slices x bars)); that is
    # what guarantees no look-ahead even for a strategy that is not causal.
    visible = bars.iloc[: int(task.test_idx[-1]) + 1]
    strategy = task.strategy(**task.params)
    positions = np.asarray(strategy.target_positions(visible), dtype=np.float64)
    result = run_backtest(
        visible["close"].to_numpy(),
        positions,
        commission_bps=task.commission_bps,
        slippage_bps=task.slippage_bps,
    )

    test = task.test_idx
    returns = result.returns[test]
    test_positions = result.positions[test]
    metrics = compute_metrics(
        returns, positions=test_positions, periods_per_year=task.periods_per_year
    )
    index = visible.index[test]
    return SliceResult(
        index=task.index,
        train_idx=task.train_idx,
        test_idx=test,
        metrics=metrics,
        returns=pd.Series(returns, index=index, name="returns"),
        positions=pd.Series(test_positions, index=index, name="positions"),
    )


def _progress_counter(
    report: Callable[[int, int], None] | None, total: int
) -> Callable[[], None]:
    """A callable each finished slice calls once; it tells ``report`` the count."""
    finished = itertools.count(1)

    def done() -> None:
        count = next(finished)
        if report is not None:
            report(count, total)

    return done


def _run_slices(
    tasks: list[SliceTask], bars: pd.DataFrame, done: Callable[[], None]
) -> list[SliceResult]:
    results = []
    for task in tasks:
        results.append(run_slice(task, bars))
        done()
    return results


class _Executor(Protocol):
    async def run(
        self, tasks: list[SliceTask], bars: pd.DataFrame, done: Callable[[], None]
    ) -> list[SliceResult]: ...


class _LocalExecutor:
    """Slices one after another on a worker thread, so the event loop stays free."""

    async def run(
        self, tasks: list[SliceTask], bars: pd.DataFrame, done: Callable[[], None]
    ) -> list[SliceResult]:
        return await asyncio.to_thread(_run_slices, tasks, bars, done)


class _ProcessExecutor:
    """Slices on a process pool; each worker receives only the bars it may see."""

    def __init__(self, pool: concurrent.futures.ProcessPoolExecutor) -> None:
        self.pool = pool

    async def run(
        self, tasks: list[SliceTask], bars: pd.DataFrame, done: Callable[[], None]
    ) -> list[SliceResult]:
        loop = asyncio.get_running_loop()
        futures = [
            loop.run_in_executor(
                self.pool, run_slice, task, bars.iloc[: int(task.test_idx[-1]) + 1]
            )
            for task in tasks
        ]
        for future in futures:
            future.add_done_callback(lambda _: done())
        return list(await asyncio.gather(*futures))


class _RayExecutor:
    """Slices as Ray tasks on whatever cluster ``ray.init`` reaches."""

    def __init__(self) -> None:
        import ray

        if not ray.is_initialized():
            ray.init(ignore_reinit_error=True)
        self.ray = ray
        self.remote_slice = ray.remote(run_slice)

    async def run(
        self, tasks: list[SliceTask], bars: pd.DataFrame, done: Callable[[], None]
    ) -> list[SliceResult]:
        bars_ref = self.ray.put(bars)
        refs = [self.remote_slice.remote(task, bars_ref) for task in tasks]
        futures = [asyncio.wrap_future(ref.future()) for ref in refs]
        for future in futures:
            future.add_done_callback(lambda _: done())
        try:
            return list(await asyncio.gather(*futures))
        except self.ray.exceptions.RayTaskError as exc:
            for ref in refs:
                self.ray.cancel(ref)
            # Surface the strategy's own exception, as the other executors do.
            if isinstance(exc.cause, Exception):
                raise exc.cause from exc
            raise


@contextlib.asynccontextmanager
async def _make_executor(
    name: str, max_workers: int | None
) -> AsyncIterator[_Executor]:
    if name == "local":
        yield _LocalExecutor()
    elif name == "process":
        # spawn: forking a process that runs an event loop and threads is unsafe.
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(max_workers, context) as pool:
            yield _ProcessExecutor(pool)
    else:
        yield _RayExecutor()


@contextlib.contextmanager
def _heartbeats(tracker: RunTracker, interval: float) -> Iterator[None]:
    async def beat() -> None:
        while True:
            await asyncio.sleep(interval)
            tracker.heartbeat()

    task = asyncio.create_task(beat()) if interval > 0 else None
    try:
        yield
    finally:
        if task is not None:
            task.cancel()


def _run_blocking(make: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to completion from synchronous code, even inside a loop."""

    results: list[T] = []

    async def main() -> None:
        # The result leaves through a list, not as the main task's result: on
        # Python 3.11 asyncio.run formats repr(main task) when it restores the
        # SIGINT handler, which would repr every slice's Series (~100 ms).
        results.append(await make())

    try:
        asyncio.get_running_loop()
        in_loop = True
    except RuntimeError:
        in_loop = False

    if in_loop:
        # Called from a running loop (a notebook cell): it cannot be re-entered, so
        # the run gets a fresh loop on its own thread while the caller blocks.
        with concurrent.futures.ThreadPoolExecutor(1, "orchestrator-run") as thread:
            thread.submit(lambda: asyncio.run(main())).result()
    else:
        asyncio.run(main())
    return results[0]


def _aggregate(slices: list[SliceResult], periods_per_year: float) -> dict[str, Any]:
    """Spread of each metric across slices, and metrics of the joined test returns.

    A bar tested by several slices (overlapping windows) counts once in the join.
    """
    joined = pd.concat([s.returns for s in slices])
    positions = pd.concat([s.positions for s in slices])
    first = ~joined.index.duplicated(keep="first")
    order = np.argsort(joined.index[first], kind="stable")
    oos = compute_metrics(
        joined[first].to_numpy()[order],
        positions=positions[first].to_numpy()[order],
        periods_per_year=periods_per_year,
    )
    return {
        "n_slices": len(slices),
        "across_slices": _spread([s.metrics for s in slices]),
        "out_of_sample": oos,
        "out_of_sample_bars": int(first.sum()),
    }


def _spread(rows: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    frame = pd.DataFrame(rows, dtype=np.float64)
    stats = {
        "mean": frame.mean(),
        "std": frame.std(ddof=1),
        "min": frame.min(),
        "median": frame.median(),
        "max": frame.max(),
    }
    return {
        name: {stat: float(values[name]) for stat, values in stats.items()}
        for name in frame.columns
    }


def _flat_metrics(aggregate: dict[str, Any], n_slices: int) -> dict[str, float]:
    """The summary sent to the service: finite floats only, flat names."""
    flat = dict(aggregate["out_of_sample"])
    for name, stats in aggregate["across_slices"].items():
        flat[f"{name}_mean"] = stats["mean"]
        flat[f"{name}_std"] = stats["std"]
    flat["n_slices"] = float(n_slices)
    return {k: float(v) for k, v in flat.items() if math.isfinite(v)}


def _describe_bars(bars: pd.DataFrame) -> dict[str, Any]:
    return {
        "fingerprint": bars_fingerprint(bars),
        "n_bars": len(bars),
        "start": bars.index[0].isoformat(),
        "end": bars.index[-1].isoformat(),
    }


def _describe_slice(result: SliceResult, index: pd.DatetimeIndex) -> dict[str, Any]:
    return {
        "index": result.index,
        "train": _describe_positions(result.train_idx, index),
        "test": _describe_positions(result.test_idx, index),
        "metrics": result.metrics,
    }


def _describe_positions(
    positions: np.ndarray, index: pd.DatetimeIndex
) -> dict[str, Any]:
    """Bar positions as half-open ``[start, stop)`` ranges plus their time span."""
    breaks = np.flatnonzero(np.diff(positions) != 1) + 1
    ranges = [[int(part[0]), int(part[-1]) + 1] for part in np.split(positions, breaks)]
    return {
        "n_bars": len(positions),
        "ranges": ranges,
        "start_time": index[positions[0]].isoformat(),
        "end_time": index[positions[-1]].isoformat(),
    }


def _json_safe(value: Any) -> Any:
    """Replace NaN and infinities by None, recursively, so the JSON stays strict."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return _json_safe(value.item())
    return value


def _write_outputs(
    metrics_dir: str, run_id: str, summary: dict[str, Any], slices: list[SliceResult]
) -> str:
    """Write summary.json and equity.parquet under the run; return the summary URI."""
    fs, root = fsspec.core.url_to_fs(metrics_dir)
    run_dir = f"{root}/{run_id}"
    fs.makedirs(run_dir, exist_ok=True)

    equity = pd.concat(
        [
            pd.DataFrame(
                {"slice": s.index, "returns": s.returns, "equity": s.equity}
            ).rename_axis("timestamp")
            for s in slices
        ]
    ).reset_index()
    with fs.open(f"{run_dir}/equity.parquet", "wb") as file:
        equity.to_parquet(file, index=False)

    text = json.dumps(_json_safe(summary), allow_nan=False, indent=2)
    path = f"{run_dir}/summary.json"
    if isinstance(fs, LocalFileSystem):
        # Write then rename, so a reader never sees half a summary.
        partial = f"{path}.partial"
        with open(partial, "w", encoding="utf-8") as file:
            file.write(text)
        os.replace(partial, path)
        return Path(path).resolve().as_uri()
    fs.pipe_file(path, text.encode())
    return fs.unstrip_protocol(path)
