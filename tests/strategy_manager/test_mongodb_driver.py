"""The real driver path: PyMongo's async client against the nx-27017 server."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import httpx
import pymongo
import pytest

from tests.conftest import app_client, nx_settings, start_nx_27017, stop
from tests.processes import free_port

NEW_RUN = {
    "strategy_name": "sma_crossover",
    "strategy_version": "1.2.0",
    "hyperparameters": {"fast": 10, "slow": 50.0, "grid": {"on": True, "w": [1, 2]}},
    "orchestrator_type": "cpcv",
}


@pytest.fixture
async def mongo_api(nx_server: str, tmp_path: Path):
    settings = nx_settings(tmp_path, nx_server, database=f"t{uuid.uuid4().hex}")
    async with app_client(settings) as client:
        yield client


async def test_contract_on_the_real_driver(mongo_api: httpx.AsyncClient):
    created = await mongo_api.post("/runs", json=NEW_RUN)
    run_id = created.json()["run_id"]
    running = await mongo_api.put(f"/runs/{run_id}", json={"status": "running"})
    done = await mongo_api.put(
        f"/runs/{run_id}",
        json={"status": "COMPLETED", "metrics_uri": "file:///r", "metrics": {"s": 1.5}},
    )
    fetched = await mongo_api.get(f"/runs/{run_id}")
    listed = await mongo_api.get("/runs", params={"hp.grid.on": "true"})

    assert created.status_code == 201
    assert running.json()["status"] == "RUNNING"
    assert done.json()["metrics"] == {"s": 1.5}
    assert fetched.json() == done.json()
    assert fetched.json()["hyperparameters"] == NEW_RUN["hyperparameters"]
    assert isinstance(fetched.json()["hyperparameters"]["slow"], float)
    assert [r["run_id"] for r in listed.json()] == [run_id]
    assert (await mongo_api.get("/readyz")).status_code == 200


async def test_idempotent_create_on_the_real_driver(mongo_api: httpx.AsyncClient):
    body = {**NEW_RUN, "run_id": str(uuid.uuid4())}

    first = await mongo_api.post("/runs", json=body)
    retry = await mongo_api.post("/runs", json=body)
    clash = await mongo_api.post("/runs", json={**body, "strategy_version": "2"})

    assert [first.status_code, retry.status_code, clash.status_code] == [201, 200, 409]


async def test_paging_and_metric_sort_on_the_real_driver(mongo_api: httpx.AsyncClient):
    runs = [(await mongo_api.post("/runs", json=NEW_RUN)).json() for _ in range(7)]
    for i, run in enumerate(runs[:4]):
        await mongo_api.put(f"/runs/{run['run_id']}", json={"metrics": {"sharpe": i}})

    seen = []
    for skip in range(0, 7, 3):
        params = {"sort": "-metrics.sharpe", "skip": skip, "limit": 3}
        seen += (await mongo_api.get("/runs", params=params)).json()

    assert [r["metrics"].get("sharpe") for r in seen] == [3, 2, 1, 0, None, None, None]
    assert len({r["run_id"] for r in seen}) == 7


@pytest.mark.parametrize(
    "targets", [("COMPLETED", "FAILED"), ("COMPLETED", "COMPLETED")]
)
async def test_of_two_concurrent_finishers_exactly_one_wins(
    mongo_api: httpx.AsyncClient, targets: tuple[str, str]
):
    for _ in range(10):
        run_id = (await mongo_api.post("/runs", json=NEW_RUN)).json()["run_id"]
        await mongo_api.put(f"/runs/{run_id}", json={"status": "RUNNING"})

        answers = await asyncio.gather(
            *(
                mongo_api.put(
                    f"/runs/{run_id}", json={"status": t, "error_message": f"by {i}"}
                )
                for i, t in enumerate(targets)
            )
        )

        codes = sorted(a.status_code for a in answers)
        assert codes == [200, 409]
        winner = next(a for a in answers if a.status_code == 200).json()
        stored = (await mongo_api.get(f"/runs/{run_id}")).json()
        assert stored["status"] == winner["status"]
        assert stored["error_message"] == winner["error_message"]


async def test_unreachable_database_is_503_and_recovers(tmp_path: Path):
    port = free_port()
    process, _ = start_nx_27017(tmp_path, port=port)
    settings = nx_settings(
        tmp_path, f"mongodb://127.0.0.1:{port}", database="recovery", db_timeout_ms=500
    )
    async with app_client(settings) as api:
        assert (await api.post("/runs", json=NEW_RUN)).status_code == 201
        stop(process)

        down = await api.get("/runs")
        not_ready = await api.get("/readyz")

        process, _ = start_nx_27017(tmp_path, port=port)
        try:
            back = await api.post("/runs", json=NEW_RUN)
        finally:
            stop(process)

    assert down.status_code == not_ready.status_code == 503
    assert down.json()["detail"] == "The database is unreachable; retry shortly."
    assert back.status_code == 201


async def test_start_up_creates_the_listing_indexes(nx_server: str, tmp_path: Path):
    database = f"t{uuid.uuid4().hex}"
    settings = nx_settings(tmp_path, nx_server, database=database)
    async with app_client(settings):
        client = pymongo.AsyncMongoClient(nx_server)
        try:
            indexes = await client[database]["runs"].index_information()
        finally:
            await client.close()

    keys = {tuple(field for field, _ in index["key"]) for index in indexes.values()}
    assert {
        ("timestamp",),
        ("strategy_name", "timestamp"),
        ("strategy_version", "timestamp"),
        ("orchestrator_type", "timestamp"),
        ("status", "timestamp"),
        ("status", "heartbeat_at"),
        ("updated_at",),
    } <= keys
