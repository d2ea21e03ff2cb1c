"""A real strategy manager service in a uvicorn subprocess, for end-to-end tests.

The ``live_server`` fixture (session scope) is available to every test, because
``tests/conftest.py`` loads this module as a plugin. To start one by hand (the
benchmark does)::

    with running_server(data_dir) as server: ...
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.processes import free_port, stop_process

API_KEY = "live-test-key"
APP = "backtest_data_module.strategy_manager.main:app"
STARTUP_TIMEOUT = 30.0


@dataclass(frozen=True)
class LiveServer:
    """Where a running service listens and how to authenticate to it."""

    url: str
    api_key: str
    data_dir: Path


@contextlib.contextmanager
def running_server(
    data_dir: Path, api_key: str = API_KEY, port: int | None = None
) -> Iterator[LiveServer]:
    """Start uvicorn on a free port, wait for /healthz, stop it on exit."""
    port = port or free_port()
    env = {
        **os.environ,
        "STRATEGY_MANAGER_API_KEY": api_key,
        "STRATEGY_MANAGER_DATA_DIR": str(data_dir),
    }
    command = [
        sys.executable, "-m", "uvicorn", APP,
        "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
    ]  # fmt: skip
    log_path = data_dir / "uvicorn.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, process, log_path)
        yield LiveServer(url=url, api_key=api_key, data_dir=data_dir)
    finally:
        stop_process(process)


def _wait_healthy(url: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"uvicorn exited with code {process.returncode}:\n"
                f"{log_path.read_text(errors='replace')}"
            )
        try:
            if httpx.get(f"{url}/healthz", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError(
        f"uvicorn at {url} not healthy after {STARTUP_TIMEOUT}s:\n"
        f"{log_path.read_text(errors='replace')}"
    )


@pytest.fixture(scope="session")
def live_server() -> Iterator[LiveServer]:
    """One service for the whole test session, with its own temporary data dir."""
    with (
        tempfile.TemporaryDirectory(prefix="strategy-manager-") as data_dir,
        running_server(Path(data_dir)) as server,
    ):
        yield server
