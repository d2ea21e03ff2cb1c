"""The ``backtest-data-module`` command: serve the API, query runs, run a backtest.

Every expected failure (a bad option value, an unknown strategy, a missing file, an
unreachable or refusing service) ends the command with one red line on stderr and
exit code 1, never a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.pretty import Pretty
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from backtest_data_module.strategy_manager.client import (
    ApiError,
    Run,
    RunPage,
    ServiceUnavailable,
    StrategyManagerClient,
    StrategyManagerError,
)

APP_PATH = "backtest_data_module.strategy_manager.main:app"
DEFAULT_API_URL = "http://127.0.0.1:8000"
# One attempt per command: a person at a terminal would rather see the error now
# and run the command again than wait through the client's 30 s of retries.
CLI_RETRY_FOR = 0.0
CLI_TIMEOUT = 10.0

app = typer.Typer(
    name="backtest-data-module",
    help="Backtest trading strategies and keep a searchable record of every run.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
runs_app = typer.Typer(help="Query the runs the strategy manager has recorded.")
app.add_typer(runs_app, name="runs", no_args_is_help=True)

console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)


class CliError(Exception):
    """A failure to report as one line, e.g. a malformed ``name=value`` option."""


def fail(message: str) -> NoReturn:
    """Print ``message`` as one red line on stderr and exit with code 1."""
    err_console.print(f"[bold red]error:[/] {message}", markup=True, highlight=False)
    raise typer.Exit(1)


@contextlib.contextmanager
def one_line_errors(api_url: str | None = None) -> Iterator[None]:
    """Turn the errors a user can cause or fix into one line and exit code 1."""
    try:
        yield
    except ServiceUnavailable as exc:
        where = api_url or "the strategy manager"
        fail(f"cannot reach the strategy manager at {where}: {exc.detail}")
    except ApiError as exc:
        fail(f"the strategy manager answered {exc.status_code}: {exc.detail}")
    except (CliError, ValueError, StrategyManagerError) as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc))


def parse_assignments(option: str, items: list[str]) -> dict[str, Any]:
    """Parse ``name=value`` items; values are JSON scalars, else plain strings.

    ``fast=10`` gives an int, ``on=true`` a bool and ``kind=ema`` the string "ema";
    lists, objects, NaN and infinities are refused.
    """
    parsed: dict[str, Any] = {}
    for item in items:
        name, sep, raw = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise CliError(f"{option} expects name=value, got {item!r}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        not_finite = isinstance(value, float) and not math.isfinite(value)
        if isinstance(value, dict | list) or not_finite:
            raise CliError(
                f"{option} {name} must be a JSON scalar (number, true/false, null "
                f"or text), got {raw!r}"
            )
        parsed[name] = value
    return parsed


# ------------------------------------------------------------------------------ serve
@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port to listen on.")] = 8000,
    workers: Annotated[
        int, typer.Option(min=1, help="uvicorn worker processes; >1 needs MongoDB.")
    ] = 1,
    api_key: Annotated[
        str | None,
        typer.Option(
            envvar="STRATEGY_MANAGER_API_KEY",
            help="Key clients must send in X-API-KEY.",
            show_default=False,
        ),
    ] = None,
    mongodb_url: Annotated[
        str | None,
        typer.Option(
            envvar="STRATEGY_MANAGER_MONGODB_URL",
            help="mongodb:// URL; without it runs go to the embedded store.",
        ),
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            envvar="STRATEGY_MANAGER_DATA_DIR",
            help="Directory of the embedded store.",
        ),
    ] = None,
    database: Annotated[
        str | None,
        typer.Option(envvar="STRATEGY_MANAGER_DATABASE", help="Database name."),
    ] = None,
) -> None:
    """Run the strategy manager API with uvicorn."""
    import uvicorn

    from backtest_data_module.strategy_manager.main import load_settings

    for variable, value in (
        ("STRATEGY_MANAGER_API_KEY", api_key),
        ("STRATEGY_MANAGER_MONGODB_URL", mongodb_url),
        ("STRATEGY_MANAGER_DATA_DIR", data_dir),
        ("STRATEGY_MANAGER_DATABASE", database),
    ):
        if value is not None:
            os.environ[variable] = str(value)
    try:
        settings = load_settings()
    except SystemExit as exc:
        fail(str(exc.code).removeprefix("error: "))
    if workers > 1 and not settings.mongodb_url:
        fail(
            f"--workers {workers} needs --mongodb-url: the embedded store serves "
            "one process only"
        )
    uvicorn.run(APP_PATH, host=host, port=port, workers=workers)


# ------------------------------------------------------------------------------- runs
ApiUrl = Annotated[
    str,
    typer.Option(envvar="STRATEGY_MANAGER_URL", help="Root URL of the service."),
]
ApiKey = Annotated[
    str | None,
    typer.Option(
        envvar="STRATEGY_MANAGER_API_KEY",
        help="Key sent as X-API-KEY.",
        show_default=False,
    ),
]


def _client(api_url: str, api_key: str | None) -> StrategyManagerClient:
    return StrategyManagerClient(
        api_url, api_key or "", timeout=CLI_TIMEOUT, retry_for=CLI_RETRY_FOR
    )


@runs_app.command("list")
def list_runs(
    strategy_name: Annotated[str | None, typer.Option()] = None,
    strategy_version: Annotated[str | None, typer.Option()] = None,
    orchestrator_type: Annotated[str | None, typer.Option()] = None,
    status: Annotated[
        list[str] | None, typer.Option(help="Repeat for several statuses.")
    ] = None,
    hp: Annotated[
        list[str] | None,
        typer.Option(help="Hyperparameter filter name=value; repeatable."),
    ] = None,
    sort: Annotated[
        list[str] | None,
        typer.Option(help="e.g. -metrics.sharpe_ratio; repeatable."),
    ] = None,
    skip: Annotated[int, typer.Option(min=0)] = 0,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 20,
    stale: Annotated[
        bool | None,
        typer.Option(
            "--stale/--not-stale", help="Only runs that stopped sending heartbeats."
        ),
    ] = None,
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKey = None,
) -> None:
    """List runs as a table, newest first unless --sort says otherwise."""
    with one_line_errors(api_url):
        filters = parse_assignments("--hp", hp or [])

        async def fetch() -> RunPage:
            async with _client(api_url, api_key) as client:
                return await client.list_runs(
                    skip=skip,
                    limit=limit,
                    strategy_name=strategy_name,
                    strategy_version=strategy_version,
                    orchestrator_type=orchestrator_type,
                    status=status,
                    stale=stale,
                    sort=sort,
                    hyperparameters=filters,
                )

        page = asyncio.run(fetch())
    console.print(_runs_table(page.runs, _shown_metric(sort or [])))
    console.print(f"{len(page.runs)} of {page.total}")


def _shown_metric(sort: list[str]) -> str:
    """The metric a listing is sorted by, else the Sharpe ratio."""
    for spec in sort:
        for key in spec.split(","):
            name = key.strip().lstrip("+-")
            if name.startswith("metrics."):
                return name.removeprefix("metrics.")
    return "sharpe_ratio"


def _runs_table(runs: list[Run], metric: str) -> Table:
    table = Table()
    # The id is what `runs show` takes, so it is never wrapped or cut.
    table.add_column("run_id", no_wrap=True, min_width=36)
    for column in ("created (UTC)", "strategy", "version", "validation"):
        table.add_column(column)
    for column in ("hyperparameters", "status", metric):
        table.add_column(column)
    for run in runs:
        value = run.metrics.get(metric)
        table.add_row(
            run.run_id,
            run.timestamp.strftime("%Y-%m-%d %H:%M:%S"),
            run.strategy_name,
            run.strategy_version,
            run.orchestrator_type,
            " ".join(f"{k}={json.dumps(v)}" for k, v in run.hyperparameters.items()),
            run.status.value + (" (stale)" if run.stale else ""),
            "" if value is None else f"{value:.3f}",
        )
    return table


@runs_app.command("show")
def show_run(
    run_id: Annotated[str, typer.Argument(help="The run's id.")],
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKey = None,
) -> None:
    """Show every field of one run."""
    with one_line_errors(api_url):

        async def fetch() -> Run:
            async with _client(api_url, api_key) as client:
                return await client.get_run(run_id)

        run = asyncio.run(fetch())

    table = Table("field", "value", show_header=False)
    for name, value in run.model_dump(mode="json").items():
        shown = Pretty(value) if isinstance(value, dict) else str(value)
        table.add_row(name, shown)
    console.print(table)


# --------------------------------------------------------------------------- backtest
@app.command()
def backtest(
    strategy: Annotated[str, typer.Argument(help="A registered strategy name.")],
    param: Annotated[
        list[str] | None,
        typer.Option(help="Hyperparameter name=value (JSON scalar); repeatable."),
    ] = None,
    bars: Annotated[
        Path | None, typer.Option(help="OHLCV bars as .csv or .parquet.")
    ] = None,
    synthetic: Annotated[
        int | None, typer.Option(help="Use N synthetic bars instead of --bars.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic bars.")] = 0,
    train_size: Annotated[int, typer.Option(help="Walk-forward train bars.")] = 252,
    test_size: Annotated[int, typer.Option(help="Walk-forward test bars.")] = 63,
    step: Annotated[int | None, typer.Option(help="Bars between test windows.")] = None,
    expanding: Annotated[
        bool, typer.Option(help="Train on all bars from the start.")
    ] = False,
    purge: Annotated[int, typer.Option(help="Bars dropped before tests.")] = 0,
    cpcv: Annotated[
        bool, typer.Option(help="Combinatorial purged CV instead of walk-forward.")
    ] = False,
    groups: Annotated[int, typer.Option(help="CPCV groups N.")] = 6,
    test_groups: Annotated[int, typer.Option(help="CPCV test groups k.")] = 2,
    embargo: Annotated[int, typer.Option(help="CPCV bars after tests.")] = 0,
    commission_bps: Annotated[float, typer.Option(min=0.0)] = 0.0,
    slippage_bps: Annotated[float, typer.Option(min=0.0)] = 0.0,
    register_api: Annotated[
        str | None,
        typer.Option(help="Record the run on this strategy manager URL."),
    ] = None,
    api_key: ApiKey = None,
    metrics_dir: Annotated[
        str, typer.Option(help="Directory or fsspec URL for summaries.")
    ] = "runs",
) -> None:
    """Run a strategy over validation slices and print the aggregate metrics."""
    from backtest_data_module.backtesting.orchestrator import Orchestrator, RunResult
    from backtest_data_module.backtesting.validation import (
        CombinatorialPurgedCV,
        WalkForward,
    )
    from backtest_data_module.data import load_bars, synthetic_bars

    with one_line_errors(register_api):
        params = parse_assignments("--param", param or [])
        if (bars is None) == (synthetic is None):
            raise CliError("give exactly one of --bars FILE or --synthetic N")
        frame = load_bars(bars) if bars else synthetic_bars(synthetic or 0, seed=seed)
        splitter: Any = (
            CombinatorialPurgedCV(groups, test_groups, purge=purge, embargo=embargo)
            if cpcv
            else WalkForward(train_size, test_size, step, expanding, purge)
        )
        n_slices = splitter.get_n_splits(len(frame))
        progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err_console,
            transient=True,
        )
        task = progress.add_task(f"{splitter.name} slices", total=n_slices)
        orchestrator = Orchestrator(
            strategy,
            params,
            splitter,
            register_api=register_api,
            metrics_dir=metrics_dir,
            api_key=api_key,
            commission_bps=commission_bps,
            slippage_bps=slippage_bps,
            progress=lambda finished, _: progress.update(task, completed=finished),
        )
        progress.update(
            task,
            description=f"{orchestrator.strategy.name} on {len(frame)} bars, "
            f"{splitter.name} slices",
        )
        with warnings.catch_warnings(record=True) as caught, progress:
            warnings.simplefilter("always")
            result: RunResult = orchestrator.run(frame)

    for warning in caught:
        err_console.print(f"[yellow]warning:[/] {warning.message}", highlight=False)
    console.print(_result_table(result))


def _result_table(result: Any) -> Table:
    table = Table(
        "metric",
        "out of sample",
        "mean over slices",
        "std over slices",
        title=f"{result.strategy_name} {result.strategy_version} "
        f"{json.dumps(result.hyperparameters, sort_keys=True)}",
        caption=f"run {result.run_id}  {result.status}  "
        f"{result.duration_s:.2f}s\n{result.metrics_uri}",
    )
    metrics = result.metrics
    names = [
        n for n in metrics if not n.endswith(("_mean", "_std")) and n != "n_slices"
    ]
    for name in sorted(names):
        row = [
            metrics.get(name),
            metrics.get(f"{name}_mean"),
            metrics.get(f"{name}_std"),
        ]
        table.add_row(name, *("" if v is None else f"{v:.4f}" for v in row))
    table.add_row("slices", str(len(result.slices)), "", "")
    return table
