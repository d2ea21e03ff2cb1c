"""The seed contract, route by route, on the embedded store."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime

import httpx
import pytest

from tests.conftest import app_client, make_settings

NEW_RUN = {
    "strategy_name": "sma_crossover",
    "strategy_version": "1.2.0",
    "hyperparameters": {"fast": 10, "slow": 50},
    "orchestrator_type": "walk_forward",
}


async def create(api: httpx.AsyncClient, **changes: object) -> dict:
    response = await api.post("/runs", json={**NEW_RUN, **changes})
    assert response.status_code == 201, response.text
    return response.json()


async def test_create_returns_the_whole_run_with_location(api: httpx.AsyncClient):
    response = await api.post("/runs", json=NEW_RUN)

    assert response.status_code == 201
    run = response.json()
    assert response.headers["location"] == f"/runs/{run['run_id']}"
    assert uuid.UUID(run["run_id"]).version == 4
    created = datetime.fromisoformat(run["timestamp"])
    assert created.utcoffset() is not None and created.utcoffset().total_seconds() == 0
    assert {k: run[k] for k in NEW_RUN} == NEW_RUN
    assert run["status"] == "PENDING"
    assert run["metrics_uri"] is None and run["error_message"] is None


async def test_get_returns_what_create_returned(api: httpx.AsyncClient):
    run = await create(api)

    response = await api.get(f"/runs/{run['run_id']}")

    assert response.status_code == 200
    assert response.json() == run


async def test_get_unknown_run_is_404(api: httpx.AsyncClient):
    response = await api.get(f"/runs/{uuid.uuid4()}")

    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["detail"].startswith("No run with id")


async def test_get_with_a_malformed_id_is_422(api: httpx.AsyncClient):
    response = await api.get("/runs/not-a-uuid")

    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "path.run_id"


async def test_list_is_newest_first(api: httpx.AsyncClient):
    ids = []
    for _ in range(3):
        ids.append((await create(api))["run_id"])
        await asyncio.sleep(0.002)  # timestamps have millisecond resolution

    response = await api.get("/runs")

    assert [r["run_id"] for r in response.json()] == ids[::-1]
    assert response.headers["x-total-count"] == "3"


async def test_paging_visits_every_run_exactly_once(api: httpx.AsyncClient):
    # Created concurrently, many runs share a millisecond: the tie-break matters.
    created = await asyncio.gather(*(create(api) for _ in range(57)))
    seen = []
    for skip in range(0, 60, 10):
        page = await api.get("/runs", params={"skip": skip, "limit": 10})
        seen += [r["run_id"] for r in page.json()]

    assert sorted(seen) == sorted(r["run_id"] for r in created)
    assert len(seen) == len(set(seen)) == 57


@pytest.mark.parametrize(
    "params",
    [{"skip": -1}, {"limit": 0}, {"limit": 1001}, {"limit": "ten"}],
)
async def test_list_refuses_bad_paging(api: httpx.AsyncClient, params: dict):
    response = await api.get("/runs", params=params)

    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == f"query.{next(iter(params))}"


async def test_update_changes_only_the_fields_sent(api: httpx.AsyncClient):
    run = await create(api)

    first = await api.put(f"/runs/{run['run_id']}", json={"metrics_uri": "file:///m"})
    second = await api.put(
        f"/runs/{run['run_id']}", json={"error_message": "slow data feed"}
    )

    assert first.status_code == second.status_code == 200
    updated = second.json()
    assert updated["metrics_uri"] == "file:///m"
    assert updated["error_message"] == "slow data feed"
    assert updated["status"] == "PENDING"
    assert updated["hyperparameters"] == run["hyperparameters"]


async def test_update_unknown_run_is_404(api: httpx.AsyncClient):
    response = await api.put(f"/runs/{uuid.uuid4()}", json={"status": "RUNNING"})

    assert response.status_code == 404


@pytest.mark.parametrize("spelling", ["running", "Running", "RUNNING"])
async def test_status_accepts_any_case_and_returns_upper(
    api: httpx.AsyncClient, spelling: str
):
    run = await create(api)

    response = await api.put(f"/runs/{run['run_id']}", json={"status": spelling})

    assert response.json()["status"] == "RUNNING"
    stored = await api.get(f"/runs/{run['run_id']}")
    assert stored.json()["status"] == "RUNNING"


async def test_unknown_status_is_422(api: httpx.AsyncClient):
    run = await create(api)

    response = await api.put(f"/runs/{run['run_id']}", json={"status": "DONE"})

    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "body.status"


async def test_two_hundred_concurrent_creates_are_all_stored(api: httpx.AsyncClient):
    runs = await asyncio.gather(
        *(create(api, strategy_version=str(i)) for i in range(200))
    )

    listed = await api.get("/runs", params={"limit": 1000})
    fetched = await asyncio.gather(*(api.get(f"/runs/{r['run_id']}") for r in runs))

    assert listed.headers["x-total-count"] == "200"
    assert all(f.status_code == 200 for f in fetched)
    assert {f.json()["strategy_version"] for f in fetched} == {
        str(i) for i in range(200)
    }


# ------------------------------------------------------------------------------ auth
ROUTES = [
    ("POST", "/runs", NEW_RUN),
    ("GET", "/runs", None),
    ("GET", f"/runs/{uuid.uuid4()}", None),
    ("PUT", f"/runs/{uuid.uuid4()}", {"status": "RUNNING"}),
    ("DELETE", f"/runs/{uuid.uuid4()}", None),
    ("POST", f"/runs/{uuid.uuid4()}/heartbeat", None),
]


@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
@pytest.mark.parametrize("key", [None, "wrong-key", ""])
async def test_every_runs_route_needs_the_key(
    tmp_path, method: str, path: str, body: dict | None, key: str | None
):
    async with app_client(make_settings(tmp_path), api_key=key) as client:
        response = await client.request(method, path, json=body)

    assert response.status_code == 401
    assert response.json()["detail"] == "Missing or invalid API key."


async def test_refused_call_changes_nothing(tmp_path):
    settings = make_settings(tmp_path)
    async with app_client(settings, api_key="wrong") as intruder:
        await intruder.post("/runs", json=NEW_RUN)
    async with app_client(settings) as client:
        listed = await client.get("/runs")

    assert listed.json() == []


async def test_docs_and_openapi_need_no_key(tmp_path):
    async with app_client(make_settings(tmp_path), api_key=None) as client:
        docs = await client.get("/docs")
        spec = await client.get("/openapi.json")

    assert docs.status_code == spec.status_code == 200
    schemes = spec.json()["components"]["securitySchemes"]
    assert schemes == {
        "APIKeyHeader": {
            "type": "apiKey",
            "in": "header",
            "name": "X-API-KEY",
            "description": "The key set in STRATEGY_MANAGER_API_KEY on the server.",
        }
    }
    create_op = spec.json()["paths"]["/runs"]["post"]
    assert create_op["security"] == [{"APIKeyHeader": []}]
    assert create_op["operationId"] == "create_run"
