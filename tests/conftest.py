"""Fixtures shared by the whole suite."""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from backtest_data_module.strategy_manager.main import Settings, create_app, lifespan
from tests.processes import stop_process

API_KEY = "test-key"

# The live uvicorn server fixture, shared by the tests that cross the network.
pytest_plugins = ["tests.live_server"]


def make_settings(data_dir: Path, **overrides: object) -> Settings:
    return Settings(api_key=API_KEY, data_dir=data_dir, **overrides)


def nx_settings(data_dir: Path, url: str, **overrides: object) -> Settings:
    """Settings for the real driver on nx-27017, which wants no `_id` in indexes."""
    return make_settings(
        data_dir, mongodb_url=url, **{"index_id_tiebreak": False, **overrides}
    )


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    """The app on the embedded store in a fresh directory, called in-process."""
    async with app_client(make_settings(tmp_path / "store")) as client:
        yield client


@contextlib.asynccontextmanager
async def app_client(
    settings: Settings, api_key: str | None = API_KEY
) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its lifespan running, and a client that calls it in-process."""
    app = create_app(settings)
    headers = {"X-API-KEY": api_key} if api_key else {}
    async with lifespan(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://test", headers=headers
        ) as client:
            yield client


def start_nx_27017(log_dir: Path, port: int = 0) -> tuple[subprocess.Popen[str], int]:
    """Start the nx-27017 wire-protocol server; return it and the port it took."""
    command = [
        str(Path(sys.executable).with_name("nx-27017")), "--data-dir", "memory",
        "--host", "127.0.0.1", "-p", str(port),
        "--log-file", str(log_dir / "nx.log"), "--pid-file", str(log_dir / "nx.pid"),
    ]  # fmt: skip
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert process.stdout is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        match = re.search(r"Listening on 127\.0\.0\.1:(\d+)", line)
        if match:
            return process, int(match.group(1))
        if not line and process.poll() is not None:
            break
    process.kill()
    raise RuntimeError("nx-27017 did not start; see its log in " + str(log_dir))


def stop(process: subprocess.Popen[str]) -> None:
    stop_process(process)
    if process.stdout:
        process.stdout.close()


@pytest.fixture
def nx_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A MongoDB URL served by a fresh nx-27017 for one test.

    Not shared across tests: nx-27017 0.8.1 stops answering after about 140
    ``count_documents`` calls (its aggregation fallback leaks), and the suite
    makes more than that.
    """
    process, port = start_nx_27017(tmp_path_factory.mktemp("nx"))
    yield f"mongodb://127.0.0.1:{port}"
    stop(process)
