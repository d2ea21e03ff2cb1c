"""Orchestrator: slices, summaries, executors, and tracking against a live service."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any, ClassVar

import fsspec
import httpx
import numpy as np
import pandas as pd
import pytest

from backtest_data_module.backtesting.orchestrator import Orchestrator, RunResult
from backtest_data_module.backtesting.strategies import SmaCrossover, Strategy
from backtest_data_module.backtesting.tracking import (
    Outbox,
    TrackingCall,
    TrackingWarning,
)
from backtest_data_module.backtesting.validation import (
    CombinatorialPurgedCV,
    WalkForward,
)
from backtest_data_module.data import bars_fingerprint, synthetic_bars
from tests.live_server import LiveServer
from tests.processes import free_port

WALK_FORWARD = WalkForward(train_size=1000, test_size=500)
TEST_RANGES = [[1000, 1500], [1500, 2000], [2000, 2500], [2500, 3000],
               [3000, 3500], [3500, 4000]]  # fmt: skip


class Exploding(Strategy):
    """Raises from target_positions, to test failure handling."""

    name: ClassVar[str] = "exploding"
    version: ClassVar[str] = "0.1.0"
    defaults: ClassVar[dict[str, Any]] = {"level": 1}

    @property
    def warmup(self) -> int:
        return 0

    def target_positions(self, bars: pd.DataFrame) -> np.ndarray:
        raise RuntimeError(f"strategy exploded at level {self.params['level']}")


class Slow(SmaCrossover):
    """SmaCrossover that takes 20 ms a slice, so heartbeats have time to fire."""

    def target_positions(self, bars: pd.DataFrame) -> np.ndarray:
        time.sleep(0.02)
        return super().target_positions(bars)


class Spy(SmaCrossover):
    """SmaCrossover that remembers how many bars each call saw (local executor)."""

    seen: ClassVar[list[int]] = []

    def target_positions(self, bars: pd.DataFrame) -> np.ndarray:
        Spy.seen.append(len(bars))
        return super().target_positions(bars)


@pytest.fixture(scope="module")
def bars() -> pd.DataFrame:
    return synthetic_bars(4000, seed=7)


def orchestrator(metrics_dir: Path | str, **overrides: Any) -> Orchestrator:
    options: dict[str, Any] = {
        "strategy": SmaCrossover,
        "hyperparameters": {"fast": 10, "slow": 50},
        "validation": WALK_FORWARD,
        "metrics_dir": str(metrics_dir),
        "commission_bps": 1.0,
    }
    return Orchestrator(**{**options, **overrides})


def unreachable(metrics_dir: Path | str, **overrides: Any) -> Orchestrator:
    """An orchestrator whose tracking service is a closed port on this machine."""
    down = f"http://127.0.0.1:{free_port()}"
    return orchestrator(metrics_dir, register_api=down, api_key="k", **overrides)


def tracked(
    server: LiveServer, metrics_dir: Path | str, **overrides: Any
) -> Orchestrator:
    return orchestrator(
        metrics_dir,
        register_api=server.url,
        api_key=server.api_key,
        tracking_retry_for=1.0,
        **overrides,
    )


def server_run(server: LiveServer, run_id: str) -> dict[str, Any]:
    response = httpx.get(
        f"{server.url}/runs/{run_id}", headers={"X-API-KEY": server.api_key}
    )
    assert response.status_code == 200, response.text
    return response.json()


def read_summary(result: RunResult) -> dict[str, Any]:
    def refuse(constant: str) -> None:
        raise AssertionError(f"summary holds {constant}")

    with fsspec.open(result.metrics_uri, "rt") as file:
        return json.loads(file.read(), parse_constant=refuse)


# --- tracking on the live service ---------------------------------------------------


def test_completed_run_is_recorded_with_metrics_and_uri(
    live_server: LiveServer,
    tmp_path: Path,
    bars: pd.DataFrame,
) -> None:
    result = tracked(live_server, tmp_path).run(bars)

    stored = server_run(live_server, result.run_id)
    assert result.status == "COMPLETED"
    assert stored["status"] == "COMPLETED"
    assert stored["metrics_uri"] == result.metrics_uri
    assert result.metrics_uri.startswith("file://")
    assert stored["metrics"] == pytest.approx(result.metrics)
    assert stored["metrics"]["sharpe_ratio"] == pytest.approx(
        result.metrics["sharpe_ratio"]
    )
    assert stored["hyperparameters"] == {"fast": 10, "slow": 50}
    assert stored["strategy_name"] == "sma_crossover"
    assert stored["strategy_version"] == "1.0.0"
    assert stored["orchestrator_type"] == "walk_forward"
    assert stored["started_at"] is not None
    assert result.tracking is not None
    assert result.tracking.delivered == 3
    assert result.tracking.saved == 0


def test_failing_strategy_is_recorded_failed_and_raises(
    live_server: LiveServer,
    tmp_path: Path,
    bars: pd.DataFrame,
) -> None:
    runner = tracked(live_server, tmp_path, strategy=Exploding, hyperparameters={})

    with pytest.raises(RuntimeError, match="strategy exploded at level 1") as caught:
        runner.run(bars)

    (note,) = caught.value.__notes__
    run_id = note.split()[1]
    stored = server_run(live_server, run_id)
    assert stored["status"] == "FAILED"
    assert stored["error_message"] == "RuntimeError: strategy exploded at level 1"
    assert stored["strategy_name"] == "exploding"


def test_api_down_for_a_run_is_delivered_by_the_next_one(
    live_server: LiveServer,
    tmp_path: Path,
    bars: pd.DataFrame,
) -> None:
    offline = unreachable(tmp_path, tracking_retry_for=0.2)

    with pytest.warns(TrackingWarning, match=r"unreachable, 3 calls .* saved to"):
        first = offline.run(bars)

    outbox = Outbox(str(tmp_path))
    assert [c.call for c in outbox.pending()] == ["create", "update", "update"]
    assert first.status == "COMPLETED"
    assert first.tracking is not None and first.tracking.saved == 3

    second = tracked(live_server, tmp_path).run(bars)

    assert server_run(live_server, first.run_id)["status"] == "COMPLETED"
    assert server_run(live_server, first.run_id)["metrics"] == pytest.approx(
        first.metrics
    )
    assert server_run(live_server, second.run_id)["status"] == "COMPLETED"
    assert outbox.pending() == []


def test_tracking_wait_is_bounded_by_tracking_timeout(
    tmp_path: Path, bars: pd.DataFrame
) -> None:
    runner = unreachable(tmp_path, tracking_retry_for=30.0, tracking_timeout=0.3)

    started = time.monotonic()
    with pytest.warns(TrackingWarning):
        result = runner.run(bars)

    assert time.monotonic() - started < 5.0
    assert result.tracking is not None and result.tracking.saved == 3
    assert [c.seq for c in Outbox(str(tmp_path)).pending()] == [0, 1, 2]


def test_a_run_does_not_wait_out_retries_while_the_service_is_down(
    tmp_path: Path, bars: pd.DataFrame
) -> None:
    runner = unreachable(tmp_path, tracking_retry_for=30.0, tracking_timeout=30.0)

    with pytest.warns(TrackingWarning):
        result = runner.run(bars)

    assert result.tracking is not None and result.tracking.saved == 3
    # The retry budget and the timeout are 30 s; an unreachable service cuts
    # the end-of-run wait to the short grace instead.
    assert result.tracking.wait_s < 5.0


def test_outbox_kept_in_order_while_the_server_stays_down(
    tmp_path: Path, bars: pd.DataFrame
) -> None:
    runner = unreachable(tmp_path, tracking_retry_for=0.1)

    with pytest.warns(TrackingWarning):
        first = runner.run(bars)
    with pytest.warns(TrackingWarning) as caught:
        second = runner.run(bars)

    assert len(caught) == 1
    pending = [(c.run_id, c.seq) for c in Outbox(str(tmp_path)).pending()]
    assert pending == [(first.run_id, n) for n in range(3)] + [
        (second.run_id, n) for n in range(3)
    ]


def test_heartbeats_are_sent_while_slices_run(
    live_server: LiveServer,
    tmp_path: Path,
    bars: pd.DataFrame,
) -> None:
    runner = tracked(live_server, tmp_path, strategy=Slow, heartbeat_interval=0.02)

    result = runner.run(bars)

    assert server_run(live_server, result.run_id)["heartbeat_at"] is not None


def test_replayed_calls_for_a_finished_run_are_dropped(
    live_server: LiveServer,
    tmp_path: Path,
    bars: pd.DataFrame,
) -> None:
    done = tracked(live_server, tmp_path).run(bars)
    Outbox(str(tmp_path)).append(
        [
            TrackingCall(done.run_id, "update", {"status": "RUNNING"}, seq=1),
            TrackingCall(done.run_id, "update", {"status": "COMPLETED"}, seq=2),
        ]
    )

    tracked(live_server, tmp_path).run(bars)

    assert Outbox(str(tmp_path)).pending() == []
    assert server_run(live_server, done.run_id)["status"] == "COMPLETED"


def test_api_key_argument_overrides_environment(
    live_server: LiveServer,
    tmp_path: Path,
    bars: pd.DataFrame,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STRATEGY_MANAGER_API_KEY", "wrong")

    result = tracked(live_server, tmp_path).run(bars)

    assert server_run(live_server, result.run_id)["status"] == "COMPLETED"


def test_wrong_api_key_keeps_calls_in_outbox_with_one_warning(
    live_server: LiveServer,
    tmp_path: Path,
    bars: pd.DataFrame,
) -> None:
    runner = orchestrator(tmp_path, register_api=live_server.url, api_key="wrong")

    with pytest.warns(TrackingWarning) as caught:
        runner.run(bars)

    assert len(caught) == 1
    assert len(Outbox(str(tmp_path)).pending()) == 3


def test_sweep_tracks_each_valid_combination_and_skips_invalid(
    live_server: LiveServer,
    tmp_path: Path,
    bars: pd.DataFrame,
) -> None:
    runner = tracked(live_server, tmp_path)

    with pytest.warns(UserWarning, match=r"skipped 1 invalid.*'fast': 60, 'slow': 50"):
        results = runner.sweep(bars, grid={"fast": [5, 60], "slow": [50, 100]})

    assert [r.hyperparameters for r in results] == [
        {"fast": 5, "slow": 50},
        {"fast": 5, "slow": 100},
        {"fast": 60, "slow": 100},
    ]
    assert len({r.run_id for r in results}) == 3
    for result in results:
        stored = server_run(live_server, result.run_id)
        assert stored["status"] == "COMPLETED"
        assert stored["hyperparameters"] == result.hyperparameters


def test_sweep_records_a_failing_member_and_continues(
    live_server: LiveServer,
    tmp_path: Path,
    bars: pd.DataFrame,
) -> None:
    runner = tracked(live_server, tmp_path, strategy=Exploding, hyperparameters={})

    results = runner.sweep(bars, grid={"level": [1, 2]})

    assert [r.status for r in results] == ["FAILED", "FAILED"]
    assert results[1].error == "RuntimeError: strategy exploded at level 2"
    stored = server_run(live_server, results[1].run_id)
    assert stored["error_message"] == results[1].error


# --- slices and summaries -----------------------------------------------------------


def test_each_slice_sees_bars_up_to_its_test_end_only(
    tmp_path: Path, bars: pd.DataFrame
) -> None:
    Spy.seen.clear()

    result = orchestrator(tmp_path, strategy=Spy).run(bars)

    assert Spy.seen == [stop for _, stop in TEST_RANGES]
    for piece, (start, stop) in zip(result.slices, TEST_RANGES, strict=True):
        assert piece.returns.index.equals(bars.index[start:stop])
        assert piece.metrics["total_return"] == pytest.approx(
            float(np.prod(1.0 + piece.returns.to_numpy()) - 1.0)
        )


def test_summary_json_holds_config_data_slices_and_aggregate(
    tmp_path: Path, bars: pd.DataFrame
) -> None:
    result = orchestrator(tmp_path).run(bars)

    summary = read_summary(result)
    assert result.metrics_uri == (tmp_path / result.run_id / "summary.json").as_uri()
    assert summary["run_id"] == result.run_id
    assert summary["config"]["hyperparameters"] == {"fast": 10, "slow": 50}
    assert summary["config"]["validation"] == WALK_FORWARD.to_dict()
    assert summary["config"]["costs"] == {"commission_bps": 1.0, "slippage_bps": 0.0}
    assert summary["data"]["fingerprint"] == bars_fingerprint(bars)
    assert [s["test"]["ranges"] for s in summary["slices"]] == [
        [r] for r in TEST_RANGES
    ]
    assert [s["train"]["ranges"] for s in summary["slices"]] == [
        [[start - 1000, start]] for start, _ in TEST_RANGES
    ]
    assert summary["slices"][0]["test"]["start_time"] == bars.index[1000].isoformat()
    assert summary["aggregate"]["out_of_sample_bars"] == 3000
    sharpe = summary["aggregate"]["across_slices"]["sharpe_ratio"]
    assert sharpe["mean"] == pytest.approx(
        np.mean([s.metrics["sharpe_ratio"] for s in result.slices])
    )
    assert result.metrics["sharpe_ratio"] == pytest.approx(
        summary["aggregate"]["out_of_sample"]["sharpe_ratio"]
    )

    equity = pd.read_parquet(tmp_path / result.run_id / "equity.parquet")
    assert len(equity) == 3000
    assert list(equity.columns) == ["timestamp", "slice", "returns", "equity"]


def test_single_slice_summary_has_no_nan(tmp_path: Path, bars: pd.DataFrame) -> None:
    one_slice = WalkForward(train_size=3000, test_size=1000)

    result = orchestrator(tmp_path, validation=one_slice).run(bars)

    summary = read_summary(result)
    assert summary["aggregate"]["across_slices"]["sharpe_ratio"]["std"] is None
    assert "sharpe_ratio_std" not in result.metrics


def test_memory_metrics_dir_gets_summary(bars: pd.DataFrame) -> None:
    metrics_dir = f"memory://runs-{uuid.uuid4().hex}"

    result = orchestrator(metrics_dir).run(bars)

    assert result.metrics_uri is not None
    assert result.metrics_uri.startswith("memory://")
    assert read_summary(result)["run_id"] == result.run_id
    fs, root = fsspec.core.url_to_fs(metrics_dir)
    assert fs.exists(f"{root}/{result.run_id}/equity.parquet")


def test_cpcv_reports_slices_and_paths(tmp_path: Path, bars: pd.DataFrame) -> None:
    cpcv = CombinatorialPurgedCV(n_groups=6, n_test_groups=2)

    result = orchestrator(tmp_path, validation=cpcv).run(bars)

    aggregate = result.summary["aggregate"]
    assert len(result.slices) == 15
    assert len(aggregate["paths"]) == cpcv.n_paths == 5
    # Causal strategy without fitting: every path is the same full series.
    assert aggregate["out_of_sample_bars"] == 4000
    assert aggregate["paths"][0]["metrics"]["total_return"] == pytest.approx(
        aggregate["out_of_sample"]["total_return"]
    )
    assert read_summary(result)["config"]["validation"]["name"] == "cpcv"


# --- how it runs --------------------------------------------------------------------


async def test_run_works_inside_a_running_event_loop(
    tmp_path: Path, bars: pd.DataFrame
) -> None:
    asyncio.get_running_loop()

    result = orchestrator(tmp_path).run(bars)

    assert result.status == "COMPLETED"


async def test_arun_is_the_async_form(tmp_path: Path, bars: pd.DataFrame) -> None:
    result = await orchestrator(tmp_path).arun(bars)

    assert len(result.slices) == 6


def test_process_executor_matches_local(tmp_path: Path, bars: pd.DataFrame) -> None:
    local = orchestrator(tmp_path).run(bars)

    pooled = orchestrator(tmp_path, executor="process", max_workers=2)
    single = pooled.run(bars)
    swept = pooled.sweep(bars, grid={"fast": [5, 10]})

    assert single.metrics == pytest.approx(local.metrics)
    assert [s.index for s in single.slices] == list(range(6))
    assert swept[1].metrics == pytest.approx(local.metrics)


def test_process_executor_reraises_strategy_error(
    tmp_path: Path, bars: pd.DataFrame
) -> None:
    runner = orchestrator(
        tmp_path, strategy=Exploding, hyperparameters={}, executor="process"
    )

    with pytest.raises(RuntimeError, match="exploded"):
        runner.run(bars)


@pytest.fixture(scope="module")
def ray_cluster() -> Any:
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_executor_runs_slices_and_sweeps(
    ray_cluster: Any, tmp_path: Path, bars: pd.DataFrame
) -> None:
    local = orchestrator(tmp_path).run(bars)

    on_ray = orchestrator(tmp_path, executor="ray").run(bars)
    swept = orchestrator(tmp_path, executor="ray").sweep(bars, grid={"fast": [5, 10]})

    assert on_ray.metrics == pytest.approx(local.metrics)
    assert [r.status for r in swept] == ["COMPLETED", "COMPLETED"]
    assert swept[1].metrics == pytest.approx(local.metrics)


def test_ray_executor_reraises_strategy_error(
    ray_cluster: Any, tmp_path: Path, bars: pd.DataFrame
) -> None:
    runner = orchestrator(
        tmp_path, strategy=Exploding, hyperparameters={}, executor="ray"
    )

    with pytest.raises(RuntimeError, match="strategy exploded at level 1"):
        runner.run(bars)


def test_bad_executor_name_is_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"executor must be one of .* got 'threads'"):
        orchestrator(tmp_path, executor="threads")


def test_negative_cost_is_value_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="slippage_bps must be a finite number >= 0"):
        orchestrator(tmp_path, slippage_bps=-1.0)


def test_invalid_hyperparameters_raise_before_any_run(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'fast' must be < slow"):
        orchestrator(tmp_path, hyperparameters={"fast": 50, "slow": 10})


def test_strategy_can_be_given_by_registered_name(tmp_path: Path) -> None:
    runner = orchestrator(tmp_path, strategy="sma_crossover")

    assert runner.strategy_class is SmaCrossover
    assert runner.hyperparameters == {"fast": 10, "slow": 50}


# --- outbox -------------------------------------------------------------------------


def test_outbox_skips_a_torn_last_line(tmp_path: Path) -> None:
    outbox = Outbox(str(tmp_path))
    outbox.append([TrackingCall("r1", "create", {"strategy_name": "s"})])
    with open(tmp_path / "outbox.jsonl", "a") as file:
        file.write('{"run_id": "r2", "call": "upd')

    assert outbox.pending() == [TrackingCall("r1", "create", {"strategy_name": "s"})]


def test_outbox_claim_moves_records_out_of_reach_of_other_sessions(
    tmp_path: Path,
) -> None:
    outbox = Outbox(str(tmp_path))
    outbox.append([TrackingCall("r1", "update", {"status": "RUNNING"})])

    claimed = outbox.claim()

    assert Outbox(str(tmp_path)).claim() == []
    assert [c.run_id for c in outbox.read(claimed)] == ["r1"]
    outbox.release(claimed)
    assert outbox.pending() == []


def test_outbox_replays_each_run_in_call_order_whatever_the_file_order(
    tmp_path: Path,
) -> None:
    outbox = Outbox(str(tmp_path))
    outbox.append([TrackingCall("a", "update", {"status": "RUNNING"}, seq=1)])
    outbox.append([TrackingCall("b", "create", {}, seq=0)])
    outbox.append([TrackingCall("a", "create", {}, seq=0)])

    calls = outbox.read(outbox.claim())

    assert [(c.run_id, c.seq) for c in calls] == [("a", 0), ("a", 1), ("b", 0)]


@pytest.mark.parametrize("executor", ["local", "process"])
def test_progress_is_reported_once_per_slice(
    tmp_path: Path, bars: pd.DataFrame, executor: str
) -> None:
    calls: list[tuple[int, int]] = []
    orchestrator = Orchestrator(
        SmaCrossover,
        {"fast": 10, "slow": 50},
        WALK_FORWARD,
        metrics_dir=tmp_path,
        executor=executor,  # type: ignore[arg-type]
        progress=lambda finished, total: calls.append((finished, total)),
    )

    orchestrator.run(bars)

    assert calls == [(i, 6) for i in range(1, 7)]
