"""The backtest-data-module command line, through typer's CliRunner."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from backtest_data_module import cli
from backtest_data_module.cli import app
from tests.live_server import LiveServer
from tests.processes import free_port

runner = CliRunner()
BARS = ["--synthetic", "400"]


def invoke(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args), env=env, catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def assert_one_line_error(code: int, stderr: str, expected: str) -> None:
    assert code != 0
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ")
    assert expected in lines[0]


def test_backtest_on_synthetic_bars_prints_the_result_table(tmp_path: Path) -> None:
    code, out, err = invoke(
        "backtest", "sma_crossover", "--synthetic", "600", "--seed", "3",
        "--param", "fast=5", "--param", "slow=20",
        "--train-size", "200", "--test-size", "100",
        "--metrics-dir", str(tmp_path),
    )  # fmt: skip

    assert code == 0, err
    (run_dir,) = tmp_path.iterdir()
    assert (run_dir / "summary.json").is_file()
    assert f"run {run_dir.name}" in out
    assert "COMPLETED" in out
    for text in ("sharpe_ratio", "max_drawdown", "out of sample", '"fast": 5'):
        assert text in out
    assert "slices" in out and "│ 4 " in out


def test_backtest_with_cpcv_runs_every_split(tmp_path: Path) -> None:
    code, out, err = invoke(
        "backtest", "mean_reversion", "--synthetic", "400", "--cpcv",
        "--groups", "4", "--test-groups", "2", "--embargo", "2",
        "--commission-bps", "1", "--metrics-dir", str(tmp_path),
    )  # fmt: skip

    assert code == 0, err
    assert "│ 6 " in out  # C(4, 2) splits


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--param", "fast", *BARS], "--param expects name=value, got 'fast'"),
        (["--param", "fast=[1, 2]", *BARS], "--param fast must be a JSON scalar"),
        (["--param", "speed=3", *BARS], "unknown parameter 'speed'"),
        (["--param", "fast=50", "--param", "slow=10", *BARS], "fast"),
        (["--bars", "no/such/bars.csv"], "No such file or directory"),
        ([], "give exactly one of --bars FILE or --synthetic N"),
        (["--synthetic", "50"], "n must be >= train_size + test_size"),
    ],
    ids=[
        "no-equals", "not-scalar", "unknown-param", "fast-not-below-slow",
        "missing-file", "no-bars", "too-few-bars",
    ],
)  # fmt: skip
def test_backtest_refusals_are_one_line(
    tmp_path: Path, args: list[str], expected: str
) -> None:
    code, _, err = invoke(
        "backtest", "sma_crossover", *args, "--metrics-dir", str(tmp_path)
    )

    assert_one_line_error(code, err, expected)


def test_unknown_strategy_is_one_line(tmp_path: Path) -> None:
    code, _, err = invoke(
        "backtest", "no_such_strategy", "--synthetic", "400",
        "--metrics-dir", str(tmp_path),
    )  # fmt: skip

    assert_one_line_error(code, err, "unknown strategy 'no_such_strategy'")


@dataclass(frozen=True)
class Seeded:
    strategy: str
    run_ids: list[str]


@pytest.fixture
def seeded(live_server: LiveServer) -> Seeded:
    """Runs with fast=5 (PENDING), 10 (RUNNING), 20 (FAILED) of a fresh strategy."""
    name = f"cli-{uuid.uuid4().hex[:8]}"
    headers = {"X-API-KEY": live_server.api_key}
    run_ids = []
    for fast, status in ((5, None), (10, "RUNNING"), (20, "FAILED")):
        body = {
            "strategy_name": name,
            "strategy_version": "2.1",
            "orchestrator_type": "walk_forward",
            "hyperparameters": {"fast": fast, "kind": "sma"},
        }
        run = httpx.post(f"{live_server.url}/runs", json=body, headers=headers)
        run.raise_for_status()
        run_ids.append(run.json()["run_id"])
        if status:
            update = {"status": status, "metrics": {"sharpe_ratio": fast / 10}}
            url = f"{live_server.url}/runs/{run.json()['run_id']}"
            httpx.put(url, json=update, headers=headers).raise_for_status()
    return Seeded(name, run_ids)


def api_env(server: LiveServer) -> dict[str, str]:
    return {
        "STRATEGY_MANAGER_URL": server.url,
        "STRATEGY_MANAGER_API_KEY": server.api_key,
    }


def test_runs_list_filters_sorts_and_counts(
    live_server: LiveServer,
    seeded: Seeded,
) -> None:
    code, out, err = invoke(
        "runs", "list", "--strategy-name", seeded.strategy,
        "--status", "RUNNING", "--status", "FAILED",
        "--sort", "-metrics.sharpe_ratio", "--limit", "1",
        env=api_env(live_server),
    )  # fmt: skip

    assert code == 0, err
    assert "1 of 2" in out
    # The best Sharpe among RUNNING and FAILED is the FAILED run's 2.0.
    assert f"│ {seeded.run_ids[2]} │" in out
    assert seeded.run_ids[1] not in out


def test_runs_list_filters_on_hyperparameters(
    live_server: LiveServer,
    seeded: Seeded,
) -> None:
    code, out, err = invoke(
        "runs", "list", "--strategy-name", seeded.strategy,
        "--hp", "fast=10", "--hp", "kind=sma",
        "--api-url", live_server.url, "--api-key", live_server.api_key,
    )  # fmt: skip

    assert code == 0, err
    assert "1 of 1" in out
    assert f"│ {seeded.run_ids[1]} │" in out


def test_runs_show_prints_every_field(
    live_server: LiveServer,
    seeded: Seeded,
) -> None:
    run_id = seeded.run_ids[2]

    code, out, err = invoke("runs", "show", run_id, env=api_env(live_server))

    assert code == 0, err
    for text in (
        run_id,
        seeded.strategy,
        "FAILED",
        "walk_forward",
        "'sharpe_ratio': 2.0",
    ):
        assert text in out
    for field in ("timestamp", "finished_at", "hyperparameters", "metrics_uri"):
        assert field in out


def test_runs_show_of_an_unknown_run_is_one_line(live_server: LiveServer) -> None:
    run_id = str(uuid.uuid4())
    code, _, err = invoke("runs", "show", run_id, env=api_env(live_server))

    assert_one_line_error(code, err, f"404: No run with id {run_id}.")


def test_wrong_api_key_is_one_line(live_server: LiveServer) -> None:
    env = {**api_env(live_server), "STRATEGY_MANAGER_API_KEY": "wrong"}
    code, _, err = invoke("runs", "list", env=env)

    assert_one_line_error(code, err, "401: Missing or invalid API key.")


def test_unreachable_api_is_one_line() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    code, _, err = invoke("runs", "list", "--api-url", url, "--api-key", "k")

    assert_one_line_error(code, err, f"cannot reach the strategy manager at {url}")


def test_serve_help_lists_its_options() -> None:
    code, out, _ = invoke("serve", "--help")

    assert code == 0
    for option in (
        "--host", "--port", "--workers", "--api-key", "--mongodb-url",
        "--data-dir", "--database", "STRATEGY_MANAGER_API_KEY",
    ):  # fmt: skip
        assert option in out


def test_serve_without_a_key_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STRATEGY_MANAGER_API_KEY", raising=False)
    code, _, err = invoke("serve", env={"STRATEGY_MANAGER_API_KEY": ""})

    assert_one_line_error(code, err, "STRATEGY_MANAGER_API_KEY")


def test_serve_refuses_several_workers_on_the_embedded_store(tmp_path: Path) -> None:
    code, _, err = invoke(
        "serve", "--workers", "2", "--api-key", "k", "--data-dir", str(tmp_path)
    )

    assert_one_line_error(code, err, "--workers 2 needs --mongodb-url")


@pytest.mark.parametrize(
    ("sort", "shown"),
    [
        ([], "sharpe_ratio"),
        (["-timestamp"], "sharpe_ratio"),
        (["status,-metrics.max_drawdown"], "max_drawdown"),
        (["metrics.cagr", "-metrics.sortino_ratio"], "cagr"),
    ],
)
def test_runs_list_shows_the_metric_it_is_sorted_by(sort: list[str], shown: str):
    assert cli._shown_metric(sort) == shown
