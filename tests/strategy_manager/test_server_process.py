"""The service as a real uvicorn process: start-up checks and a persistent store."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from tests.processes import free_port, wait_until_answering

APP = "backtest_data_module.strategy_manager.main:app"
KEY = "process-test-key"
NEW_RUN = {
    "strategy_name": "sma_crossover",
    "strategy_version": "1.2.0",
    "hyperparameters": {"fast": 10, "slow": 50.5, "tags": ["a", None]},
    "orchestrator_type": "walk_forward",
}


def spawn(data_dir: Path, port: int, key: str | None = KEY) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRATEGY_MANAGER")}
    env["STRATEGY_MANAGER_DATA_DIR"] = str(data_dir)
    if key is not None:
        env["STRATEGY_MANAGER_API_KEY"] = key
    command = [sys.executable, "-m", "uvicorn", APP, "--port", str(port)]
    return subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def wait_until_up(process: subprocess.Popen[str], port: int) -> None:
    url = f"http://127.0.0.1:{port}/healthz"
    wait_until_answering(process, url, 30, lambda: process.communicate()[0])


def test_start_without_key_exits_with_one_line_naming_the_variable(tmp_path: Path):
    process = spawn(tmp_path, free_port(), key=None)

    output, _ = process.communicate(timeout=30)

    assert process.returncode != 0
    assert output.strip().splitlines() == [
        "error: STRATEGY_MANAGER_API_KEY is not set; set it to the key clients must "
        "send in the X-API-KEY header."
    ]


def test_runs_survive_a_restart_and_a_kill_9(tmp_path: Path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    headers = {"X-API-KEY": KEY}

    server = spawn(tmp_path, port)
    wait_until_up(server, port)
    first = httpx.post(f"{url}/runs", json=NEW_RUN, headers=headers).json()
    server.send_signal(signal.SIGINT)
    log = server.communicate(timeout=30)[0]

    server = spawn(tmp_path, port)
    wait_until_up(server, port)
    second = httpx.post(f"{url}/runs", json=NEW_RUN, headers=headers).json()
    httpx.put(
        f"{url}/runs/{second['run_id']}", json={"status": "RUNNING"}, headers=headers
    )
    server.kill()
    server.communicate(timeout=30)

    server = spawn(tmp_path, port)
    try:
        wait_until_up(server, port)
        listed = httpx.get(f"{url}/runs", headers=headers).json()
    finally:
        server.kill()
        server.communicate(timeout=30)

    assert [r["run_id"] for r in listed] == [second["run_id"], first["run_id"]]
    assert listed[0]["status"] == "RUNNING"
    assert listed[1] == first
    assert str(tmp_path.resolve()) in log
    assert "STRATEGY_MANAGER_MONGODB_URL" in log


def test_second_process_on_the_same_store_refuses_to_start(tmp_path: Path):
    port = free_port()
    owner = spawn(tmp_path, port)
    try:
        wait_until_up(owner, port)
        intruder = spawn(tmp_path, free_port())
        output, _ = intruder.communicate(timeout=30)
    finally:
        owner.kill()
        owner.communicate(timeout=30)

    assert intruder.returncode != 0
    assert "in use by another process" in output
