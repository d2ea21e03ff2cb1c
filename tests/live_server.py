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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.processes import free_port, stop_process, wait_until_answering

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
        wait_until_answering(
            process,
            f"{url}/healthz",
            STARTUP_TIMEOUT,
            lambda: log_path.read_text(errors="replace"),
        )
        yield LiveServer(url=url, api_key=api_key, data_dir=data_dir)
    finally:
        stop_process(process)


@pytest.fixture(scope="session")
def live_server() -> Iterator[LiveServer]:
    """One service for the whole test session, with its own temporary data dir."""
    with (
        tempfile.TemporaryDirectory(prefix="strategy-manager-") as data_dir,
        running_server(Path(data_dir)) as server,
    ):
        yield server
