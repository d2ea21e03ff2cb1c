"""How fast the Strategy Manager answers, next to a bare ASGI ceiling and MLflow.

Run from the repository root (about three minutes):

    python benchmarks/api.py

It starts, one after the other on 127.0.0.1 and under the same uvicorn settings:
(1) a bare ASGI app answering a constant JSON body, the ceiling; (2) the service on
the embedded store in an empty data directory; (3) an MLflow tracking server when
``mlflow`` is installed. Each gets the same load for "create" and "get by id" at 16
and 64 connections: wrk when it is on the PATH, otherwise the small load generator
below in a separate process. Then it fills a store with 100,000 runs and times a
filtered, sorted page of 100. Every process it starts is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
# The process helpers live with the tests, at the repository root.
sys.path.insert(0, str(ROOT))

from tests.processes import free_port, stop_process, wait_until_answering  # noqa: E402

API_KEY = "benchmark-key"
UVICORN_FLAGS = ["--host", "127.0.0.1", "--log-level", "warning", "--no-access-log"]
NEW_RUN = {
    "strategy_name": "sma_crossover",
    "strategy_version": "1.2.0",
    "hyperparameters": {"fast": 10, "slow": 50, "window": {"days": 5}},
    "orchestrator_type": "walk_forward",
}
CONSTANT_BODY = json.dumps({**NEW_RUN, "run_id": str(uuid.uuid4())}).encode()


async def ceiling_app(scope, receive, send) -> None:
    """The fastest thing uvicorn can serve: read the body, answer constant JSON."""
    if scope["type"] != "http":
        return
    more = True
    while more:
        more = (await receive()).get("more_body", False)
    headers = [(b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": CONSTANT_BODY})


# ----------------------------------------------------------------------- servers
@dataclass
class Target:
    """One server under test and how to create and read a run on it."""

    name: str
    url: str
    create_path: str
    create_body: bytes
    headers: dict[str, str]
    get_path: str = ""
    # A route with no auth and no store: what the web framework alone costs.
    framework_path: str | None = None

    def operations(self) -> list[tuple[str, str, str]]:
        # Reads first: a server still working off a backlog of creates (MLflow at
        # 64 connections) would otherwise fail the reads that follow.
        measured = [("get", "GET", self.get_path), ("create", "POST", self.create_path)]
        if self.framework_path:
            measured.append(("healthz", "GET", self.framework_path))
        return measured


@contextlib.contextmanager
def serving(command: list[str], env: dict[str, str], health_url: str) -> Iterator[None]:
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            command, env={**os.environ, **env}, stdout=log, stderr=log, cwd=ROOT
        )
        try:
            wait_until_answering(process, health_url, 120, lambda: _log_text(log))
            yield
        finally:
            stop_process(process, timeout=20)


def _log_text(log) -> str:
    log.seek(0)
    return log.read().decode(errors="replace")


def uvicorn(app: str, port: int) -> list[str]:
    return [sys.executable, "-m", "uvicorn", app, "--port", str(port), *UVICORN_FLAGS]


@contextlib.contextmanager
def ceiling() -> Iterator[Target]:
    port = free_port()
    command = [*uvicorn("api:ceiling_app", port), "--app-dir", str(ROOT / "benchmarks")]
    url = f"http://127.0.0.1:{port}"
    with serving(command, {}, url):
        yield Target("ceiling", url, "/", CONSTANT_BODY, {}, get_path="/")


@contextlib.contextmanager
def strategy_manager(data_dir: Path) -> Iterator[Target]:
    port = free_port()
    env = {
        "STRATEGY_MANAGER_API_KEY": API_KEY,
        "STRATEGY_MANAGER_DATA_DIR": str(data_dir),
    }
    command = uvicorn("backtest_data_module.strategy_manager.main:app", port)
    url = f"http://127.0.0.1:{port}"
    with serving(command, env, f"{url}/healthz"):
        headers = {"X-API-KEY": API_KEY, "Content-Type": "application/json"}
        target = Target(
            "strategy_manager", url, "/runs", json.dumps(NEW_RUN).encode(), headers
        )
        run = httpx.post(f"{url}/runs", json=NEW_RUN, headers=headers).json()
        target.get_path = f"/runs/{run['run_id']}"
        target.framework_path = "/healthz"
        yield target


@contextlib.contextmanager
def mlflow_server(workdir: Path) -> Iterator[Target | None]:
    if shutil.which("mlflow") is None:
        yield None
        return
    port = free_port()
    command = [
        "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
        "--backend-store-uri", f"sqlite:///{workdir / 'mlflow.db'}",
        "--default-artifact-root", str(workdir / "artifacts"), "--workers", "1",
    ]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    with serving(command, {}, f"{url}/health"):
        body = {"experiment_id": "0", "run_name": "bench", "start_time": 0}
        headers = {"Content-Type": "application/json"}
        create = "/api/2.0/mlflow/runs/create"
        run = httpx.post(f"{url}{create}", json=body, headers=headers).json()
        target = Target("mlflow", url, create, json.dumps(body).encode(), headers)
        target.get_path = (
            f"/api/2.0/mlflow/runs/get?run_id={run['run']['info']['run_id']}"
        )
        yield target


# -------------------------------------------------------------------------- load
@dataclass
class Load:
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int


def drive(
    url: str, method: str, body: bytes, headers: dict, connections: int, seconds: float
) -> Load:
    if shutil.which("wrk"):
        return _wrk(url, method, body, headers, connections, seconds)
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(
            _python_load, (url, method, body, headers, connections, seconds)
        )


def _wrk(
    url: str, method: str, body: bytes, headers: dict, connections: int, seconds: float
) -> Load:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(f"wrk.method = {json.dumps(method)}\n")
        if body and method == "POST":
            script.write(f"wrk.body = {json.dumps(body.decode())}\n")
        for name, value in headers.items():
            script.write(f"wrk.headers[{json.dumps(name)}] = {json.dumps(value)}\n")
    try:
        command = [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{seconds}s",
            "--latency",
            "-s",
            script.name,
            url,
        ]
        output = subprocess.run(
            command, capture_output=True, text=True, check=True
        ).stdout
    finally:
        os.unlink(script.name)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    socket_errors = re.search(r"Socket errors: .*", output)
    if socket_errors:
        print(f"    wrk: {socket_errors.group(0)}")
    return Load(
        requests_per_s=float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)),
        p50_ms=_wrk_ms(re.search(r"50%\s+([\d.]+\w+)", output).group(1)),
        p99_ms=_wrk_ms(re.search(r"99%\s+([\d.]+\w+)", output).group(1)),
        errors=int(errors.group(1)) if errors else 0,
    )


def _wrk_ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(\w+)", text).groups()
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit]


def _python_load(
    url: str, method: str, body: bytes, headers: dict, connections: int, seconds: float
) -> Load:
    """Fallback load generator: ``connections`` keep-alive clients for ``seconds``."""

    async def run() -> Load:
        latencies: list[float] = []
        errors = 0
        limits = httpx.Limits(max_connections=connections)
        async with httpx.AsyncClient(limits=limits, headers=headers) as client:
            stop_at = time.perf_counter() + seconds

            async def worker() -> None:
                nonlocal errors
                while time.perf_counter() < stop_at:
                    start = time.perf_counter()
                    response = await client.request(method, url, content=body or None)
                    latencies.append(time.perf_counter() - start)
                    errors += response.status_code >= 400

            await asyncio.gather(*(worker() for _ in range(connections)))
        cuts = statistics.quantiles(latencies, n=100)
        return Load(len(latencies) / seconds, cuts[49] * 1e3, cuts[98] * 1e3, errors)

    return asyncio.run(run())


# ------------------------------------------------------------------ 100k listing
def fill_store(data_dir: Path, count: int) -> None:
    """Write ``count`` varied runs straight into an embedded store."""
    from backtest_data_module.strategy_manager.main import RunCreate, new_document
    from backtest_data_module.strategy_manager.store import EmbeddedRunStore

    async def fill() -> None:
        store = EmbeddedRunStore.open(data_dir, "strategy_manager")
        await store.ensure_indexes()
        rng = random.Random(7)
        start = datetime(2026, 1, 1, tzinfo=UTC)
        statuses = ["COMPLETED", "COMPLETED", "FAILED", "RUNNING", "PENDING"]
        for i in range(count):
            body = RunCreate(
                strategy_name=f"strategy_{i % 20}",
                strategy_version=f"1.{i % 3}.0",
                hyperparameters={
                    "fast": rng.randint(2, 50),
                    "slow": rng.randint(51, 300),
                },
                orchestrator_type="cpcv" if i % 2 else "walk_forward",
            )
            document = new_document(body, start + timedelta(seconds=i))
            document["status"] = rng.choice(statuses)
            if document["status"] == "COMPLETED":
                document["metrics"] = {"sharpe": round(rng.gauss(0.5, 1.0), 4)}
            await store.insert(document)
        await store.close()

    asyncio.run(fill())


def time_listing(
    target: Target, params: dict, repeats: int = 20
) -> tuple[float, float, int]:
    """Median and best wall time of one listing request, and the total it reports."""
    times = []
    with httpx.Client(base_url=target.url, headers=target.headers) as client:
        client.get("/runs", params=params).raise_for_status()  # warm caches
        for _ in range(repeats):
            start = time.perf_counter()
            response = client.get("/runs", params=params)
            times.append(time.perf_counter() - start)
        response.raise_for_status()
    return (
        statistics.median(times) * 1e3,
        min(times) * 1e3,
        int(response.headers["x-total-count"]),
    )


# -------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=8, help="load per measurement")
    parser.add_argument(
        "--runs", type=int, default=100_000, help="runs for the listing"
    )
    args = parser.parse_args()
    generator = "wrk" if shutil.which("wrk") else "python (httpx), client-bound"
    print(f"load generator: {generator}")
    print(f"{os.cpu_count()} cores; {args.seconds:g} s per measurement\n")

    results: dict[tuple[str, str, int], Load] = {}
    with tempfile.TemporaryDirectory(prefix="bench-api-") as workdir:
        work = Path(workdir)
        servers = [
            ceiling,
            lambda: strategy_manager(work / "store"),
            lambda: mlflow_server(work),
        ]
        for start in servers:
            with start() as target:
                if target is None:
                    print(
                        "mlflow: not installed, skipped (pip install mlflow to compare)"
                    )
                    continue
                for operation, method, path in target.operations():
                    for connections in (16, 64):
                        load = drive(
                            target.url + path,
                            method,
                            target.create_body,
                            target.headers,
                            connections,
                            args.seconds,
                        )
                        results[(target.name, operation, connections)] = load
                        print(
                            f"{target.name:>16} {operation:>7} c={connections:<3} "
                            f"{load.requests_per_s:9.0f} req/s  "
                            f"p50 {load.p50_ms:7.2f} ms  p99 {load.p99_ms:7.2f} ms  "
                            f"errors {load.errors}"
                        )
        _print_ratios(results)

        print(f"\nfilling an embedded store with {args.runs:,} runs ...")
        start = time.perf_counter()
        fill_store(work / "big", args.runs)
        print(f"  {time.perf_counter() - start:.1f} s")
        with strategy_manager(work / "big") as target:
            for params in (
                {
                    "strategy_name": "strategy_3",
                    "status": "COMPLETED",
                    "sort": "-metrics.sharpe",
                    "limit": 100,
                },
                {
                    "strategy_name": "strategy_3",
                    "hp.fast": 10,
                    "sort": "-timestamp",
                    "limit": 100,
                },
                {"status": "COMPLETED", "sort": "-metrics.sharpe", "limit": 100},
                {"limit": 100},
            ):
                median, best, total = time_listing(target, params)
                query = "&".join(f"{k}={v}" for k, v in params.items())
                print(
                    f"  GET /runs?{query}: median {median:.1f} ms, "
                    f"best {best:.1f} ms ({total:,} match)"
                )


def _print_ratios(results: dict[tuple[str, str, int], Load]) -> None:
    print()
    for (name, operation, connections), load in results.items():
        if name != "strategy_manager":
            continue
        ceiling_operation = "get" if operation == "healthz" else operation
        ceiling_rate = results[
            ("ceiling", ceiling_operation, connections)
        ].requests_per_s
        share = load.requests_per_s / ceiling_rate
        line = f"{name} {operation:>6} c={connections:<3} {share:5.2f} of the ceiling"
        mlflow = results.get(("mlflow", operation, connections))
        if mlflow and mlflow.requests_per_s >= 1:
            line += f", {load.requests_per_s / mlflow.requests_per_s:6.1f}x MLflow"
        elif mlflow:
            line += ", MLflow all but stopped answering (under 1 request/s)"
        print(line)


if __name__ == "__main__":
    main()
