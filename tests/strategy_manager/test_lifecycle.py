"""Lifecycle rules, idempotent create, ETags, metrics, queries, errors and health."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from tests.conftest import app_client, make_settings, nx_settings

NEW_RUN = {
    "strategy_name": "sma_crossover",
    "strategy_version": "1.2.0",
    "hyperparameters": {"fast": 10, "slow": 50},
    "orchestrator_type": "walk_forward",
}
FINAL = ["COMPLETED", "FAILED", "CANCELLED"]


async def create(api: httpx.AsyncClient, **changes: object) -> dict:
    response = await api.post("/runs", json={**NEW_RUN, **changes})
    assert response.status_code == 201, response.text
    return response.json()


async def move(api: httpx.AsyncClient, run_id: str, status: str) -> httpx.Response:
    return await api.put(f"/runs/{run_id}", json={"status": status})


# ------------------------------------------------------------------------- lifecycle
@pytest.mark.parametrize("target", ["RUNNING", *FINAL])
async def test_pending_may_move_anywhere(api: httpx.AsyncClient, target: str):
    run = await create(api)

    response = await move(api, run["run_id"], target)

    assert response.status_code == 200
    assert response.json()["status"] == target


@pytest.mark.parametrize("target", FINAL)
async def test_running_may_finish(api: httpx.AsyncClient, target: str):
    run = await create(api)
    await move(api, run["run_id"], "RUNNING")

    response = await move(api, run["run_id"], target)

    assert response.status_code == 200
    assert response.json()["finished_at"] is not None


async def test_running_cannot_go_back_to_pending(api: httpx.AsyncClient):
    run = await create(api)
    await move(api, run["run_id"], "RUNNING")

    response = await move(api, run["run_id"], "PENDING")

    assert response.status_code == 409
    assert response.json()["detail"] == "A RUNNING run cannot move to PENDING."


@pytest.mark.parametrize("final", FINAL)
@pytest.mark.parametrize("target", ["PENDING", "RUNNING", *FINAL])
async def test_update_of_finished_run_is_409(
    api: httpx.AsyncClient, final: str, target: str
):
    run = await create(api)
    await move(api, run["run_id"], final)

    response = await move(api, run["run_id"], target)

    if target == final:
        assert response.status_code == 200  # setting the status it has: a no-op
        return
    assert response.status_code == 409
    assert final in response.json()["detail"] and target in response.json()["detail"]
    assert (await api.get(f"/runs/{run['run_id']}")).json()["status"] == final


async def test_timestamps_follow_the_lifecycle(api: httpx.AsyncClient):
    run = await create(api)
    assert run["started_at"] is None and run["finished_at"] is None

    running = (await move(api, run["run_id"], "RUNNING")).json()
    again = (await move(api, run["run_id"], "RUNNING")).json()
    done = (await move(api, run["run_id"], "COMPLETED")).json()

    assert running["started_at"] is not None
    assert again["started_at"] == running["started_at"]
    assert running["heartbeat_at"] is not None
    assert done["finished_at"] >= done["started_at"]
    assert done["updated_at"] == done["finished_at"]


async def test_heartbeat_refreshes_a_running_run(api: httpx.AsyncClient):
    run = await create(api)
    first = (await move(api, run["run_id"], "RUNNING")).json()
    await asyncio.sleep(0.01)

    beat = await api.post(f"/runs/{run['run_id']}/heartbeat")

    assert beat.status_code == 200
    assert beat.json()["heartbeat_at"] > first["heartbeat_at"]


async def test_heartbeat_of_a_pending_run_is_409(api: httpx.AsyncClient):
    run = await create(api)

    response = await api.post(f"/runs/{run['run_id']}/heartbeat")

    assert response.status_code == 409
    assert "PENDING" in response.json()["detail"]


async def test_run_without_recent_heartbeat_is_reported_stale(tmp_path):
    settings = make_settings(tmp_path, stale_after_seconds=0.5)
    async with app_client(settings) as api:
        stale = await create(api)
        await move(api, stale["run_id"], "RUNNING")
        await asyncio.sleep(0.6)
        fresh = await create(api)
        await move(api, fresh["run_id"], "RUNNING")
        idle = await create(api)

        shown = (await api.get(f"/runs/{stale['run_id']}")).json()
        only_stale = await api.get("/runs", params={"stale": "true"})
        not_stale = await api.get("/runs", params={"stale": "false"})

    assert shown["stale"] is True and shown["status"] == "RUNNING"
    assert [r["run_id"] for r in only_stale.json()] == [stale["run_id"]]
    assert {r["run_id"] for r in not_stale.json()} == {fresh["run_id"], idle["run_id"]}


# ----------------------------------------------------------------- idempotent create
async def test_create_with_new_client_id_is_201(api: httpx.AsyncClient):
    run_id = str(uuid.uuid4())

    response = await api.post("/runs", json={**NEW_RUN, "run_id": run_id})

    assert response.status_code == 201
    assert response.json()["run_id"] == run_id


async def test_retried_create_returns_the_stored_run(api: httpx.AsyncClient):
    body = {**NEW_RUN, "run_id": str(uuid.uuid4())}
    first = await api.post("/runs", json=body)
    await move(api, body["run_id"], "RUNNING")

    retry = await api.post("/runs", json=body)

    assert retry.status_code == 200
    assert retry.json()["timestamp"] == first.json()["timestamp"]
    assert retry.json()["status"] == "RUNNING"
    assert (await api.get("/runs")).headers["x-total-count"] == "1"


@pytest.mark.parametrize(
    "changes",
    [
        {"strategy_version": "9.9"},
        {"hyperparameters": {"fast": 10.0, "slow": 50}},
        {"hyperparameters": {"fast": 10}},
    ],
)
async def test_create_with_known_id_and_other_content_is_409(
    api: httpx.AsyncClient, changes: dict
):
    run_id = str(uuid.uuid4())
    await api.post("/runs", json={**NEW_RUN, "run_id": run_id})

    response = await api.post("/runs", json={**NEW_RUN, **changes, "run_id": run_id})

    assert response.status_code == 409
    stored = (await api.get(f"/runs/{run_id}")).json()
    assert stored["hyperparameters"] == NEW_RUN["hyperparameters"]


# ------------------------------------------------------------------------ etags
async def test_etag_changes_with_every_change(api: httpx.AsyncClient):
    created = await api.post("/runs", json=NEW_RUN)
    run_id = created.json()["run_id"]
    tags = [created.headers["etag"]]

    tags.append((await api.get(f"/runs/{run_id}")).headers["etag"])
    tags.append(
        (await api.put(f"/runs/{run_id}", json={"metrics_uri": "a"})).headers["etag"]
    )
    tags.append(
        (await api.put(f"/runs/{run_id}", json={"metrics_uri": "b"})).headers["etag"]
    )

    assert tags[0] == tags[1]
    assert len(set(tags)) == 3


async def test_put_with_stale_if_match_is_412_and_changes_nothing(
    api: httpx.AsyncClient,
):
    created = await api.post("/runs", json=NEW_RUN)
    run_id, old_tag = created.json()["run_id"], created.headers["etag"]
    await api.put(f"/runs/{run_id}", json={"metrics_uri": "first"})

    response = await api.put(
        f"/runs/{run_id}", json={"metrics_uri": "second"}, headers={"If-Match": old_tag}
    )

    assert response.status_code == 412
    assert (await api.get(f"/runs/{run_id}")).json()["metrics_uri"] == "first"


async def test_put_with_current_if_match_succeeds(api: httpx.AsyncClient):
    created = await api.post("/runs", json=NEW_RUN)

    response = await api.put(
        f"/runs/{created.json()['run_id']}",
        json={"status": "running"},
        headers={"If-Match": created.headers["etag"]},
    )

    assert response.status_code == 200


# ------------------------------------------------------------------------- metrics
async def test_metrics_are_merged_into_the_run(api: httpx.AsyncClient):
    run = await create(api)
    url = f"/runs/{run['run_id']}"

    await api.put(url, json={"metrics": {"sharpe": 1.5, "max_drawdown": -0.2}})
    response = await api.put(url, json={"metrics": {"sharpe": 1.7, "trades": 12}})

    assert response.json()["metrics"] == {
        "sharpe": 1.7,
        "max_drawdown": -0.2,
        "trades": 12.0,
    }


# -------------------------------------------------------------------------- queries
@pytest.fixture(params=["embedded", "mongodb"])
async def any_store(request, tmp_path) -> AsyncIterator[httpx.AsyncClient]:
    """The app on the embedded store, then on the real driver (nx-27017)."""
    settings = make_settings(tmp_path)
    if request.param == "mongodb":
        url = request.getfixturevalue("nx_server")
        settings = nx_settings(tmp_path, url, database=f"t{uuid.uuid4().hex}")
    async with app_client(settings) as client:
        yield client


@pytest.fixture
async def catalogue(any_store: httpx.AsyncClient) -> dict[str, str]:
    """Five runs with different names, statuses, hyperparameters and metrics."""
    specs = {
        "sma_fast": (
            "sma_crossover",
            "1.2.0",
            {"fast": 10, "slow": 120},
            1.1,
            "COMPLETED",
        ),
        "sma_slow": (
            "sma_crossover",
            "1.2.0",
            {"fast": 20, "slow": 80},
            2.2,
            "COMPLETED",
        ),
        "sma_old": (
            "sma_crossover",
            "1.1.0",
            {"fast": 10, "slow": 150},
            None,
            "FAILED",
        ),
        "mr_a": (
            "mean_reversion",
            "0.3.0",
            {"mode": "fast", "lookback": 20},
            0.5,
            "RUNNING",
        ),
        "mr_b": (
            "mean_reversion",
            "0.3.0",
            {"mode": "slow", "lookback": 10.0},
            None,
            "PENDING",
        ),
    }
    ids = {}
    for label, (name, version, hp, sharpe, status) in specs.items():
        run = await create(
            any_store, strategy_name=name, strategy_version=version, hyperparameters=hp,
            orchestrator_type="cpcv" if label.startswith("mr") else "walk_forward",
        )  # fmt: skip
        update: dict = {"status": status}
        if sharpe is not None:
            update["metrics"] = {"sharpe": sharpe}
        await any_store.put(f"/runs/{run['run_id']}", json=update)
        ids[run["run_id"]] = label
        await asyncio.sleep(0.002)  # distinct creation milliseconds, a known order
    return ids


async def labels(api: httpx.AsyncClient, catalogue: dict, params) -> list[str]:
    response = await api.get("/runs", params=params)
    assert response.status_code == 200, response.text
    found = [catalogue[r["run_id"]] for r in response.json()]
    assert int(response.headers["x-total-count"]) == len(found)
    return found


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"strategy_name": "sma_crossover"}, ["sma_old", "sma_slow", "sma_fast"]),
        ({"strategy_version": "1.1.0"}, ["sma_old"]),
        ({"orchestrator_type": "cpcv"}, ["mr_b", "mr_a"]),
        (
            [("status", "completed"), ("status", "FAILED")],
            ["sma_old", "sma_slow", "sma_fast"],
        ),
        ({"hp.fast": "10"}, ["sma_old", "sma_fast"]),
        ({"hp.mode": '"fast"'}, ["mr_a"]),
        ({"hp.lookback": "10"}, ["mr_b"]),
        ({"strategy_name": "sma_crossover", "hp.slow": "80"}, ["sma_slow"]),
        ({"hp.missing": "1"}, []),
    ],
)
async def test_filters(any_store, catalogue, params, expected):
    assert await labels(any_store, catalogue, params) == expected


async def test_hyperparameter_filter_tells_booleans_from_numbers(any_store, request):
    if request.node.callspec.params["any_store"] == "mongodb":
        # MongoDB keeps true and 1 apart; the stand-in server does not.
        reason = "nx-27017 stores booleans as SQLite integers, so true matches 1"
        request.applymarker(pytest.mark.xfail(strict=True, reason=reason))
    flag = await create(any_store, hyperparameters={"flag": True})
    one = await create(any_store, hyperparameters={"flag": 1})
    whole = await create(any_store, hyperparameters={"flag": 1.0})

    true_runs = await any_store.get("/runs", params={"hp.flag": "true"})
    one_runs = await any_store.get("/runs", params={"hp.flag": "1"})

    assert [r["run_id"] for r in true_runs.json()] == [flag["run_id"]]
    assert {r["run_id"] for r in one_runs.json()} == {one["run_id"], whole["run_id"]}


async def test_hyperparameter_filter_matches_inside_lists(any_store):
    tagged = await create(any_store, hyperparameters={"tags": ["fast", "fx"]})
    await create(any_store, hyperparameters={"tags": ["slow"]})

    found = await any_store.get("/runs", params={"hp.tags": '"fx"'})

    assert [r["run_id"] for r in found.json()] == [tagged["run_id"]]


@pytest.mark.parametrize(
    ("sort", "expected"),
    [
        ("-metrics.sharpe", ["sma_slow", "sma_fast", "mr_a", "mr_b", "sma_old"]),
        ("metrics.sharpe", ["mr_a", "sma_fast", "sma_slow", "mr_b", "sma_old"]),
        (
            "strategy_name,-timestamp",
            ["mr_b", "mr_a", "sma_old", "sma_slow", "sma_fast"],
        ),
        ("timestamp", ["sma_fast", "sma_slow", "sma_old", "mr_a", "mr_b"]),
        ("-strategy_name", ["sma_old", "sma_slow", "sma_fast", "mr_b", "mr_a"]),
        ("status", ["sma_slow", "sma_fast", "sma_old", "mr_b", "mr_a"]),
        ("-status,timestamp", ["mr_a", "mr_b", "sma_old", "sma_fast", "sma_slow"]),
    ],
)
async def test_sort_puts_runs_missing_the_metric_last(
    any_store, catalogue, sort, expected
):
    assert await labels(any_store, catalogue, {"sort": sort}) == expected


async def test_metric_sort_pages_across_runs_with_and_without_it(any_store, catalogue):
    seen = []
    for skip in (0, 2, 4):
        params = {"sort": "-metrics.sharpe", "skip": skip, "limit": 2}
        page = await any_store.get("/runs", params=params)
        assert page.headers["x-total-count"] == "5"
        seen += [catalogue[r["run_id"]] for r in page.json()]

    assert seen == ["sma_slow", "sma_fast", "mr_a", "mr_b", "sma_old"]


async def test_created_range_filters(api: httpx.AsyncClient):
    before = await create(api)
    await asyncio.sleep(0.01)
    middle = datetime.now(UTC)
    await asyncio.sleep(0.01)
    after = await create(api)

    newer = await api.get("/runs", params={"created_after": middle.isoformat()})
    older = await api.get("/runs", params={"created_before": middle.isoformat()})

    assert [r["run_id"] for r in newer.json()] == [after["run_id"]]
    assert [r["run_id"] for r in older.json()] == [before["run_id"]]


@pytest.mark.parametrize(
    ("params", "names"),
    [
        ({"colour": "red"}, "colour"),
        ({"hp.fast": "ten"}, "hp.fast"),
        ({"hp.fast": "[1]"}, "hp.fast"),
        ({"hp.$where": "1"}, "hp.$where"),
        ({"sort": "-owner"}, "owner"),
        ({"sort": "metrics."}, "metrics."),
        ({"status": "DONE"}, "query.status"),
        ({"created_after": "yesterday"}, "query.created_after"),
    ],
)
async def test_bad_queries_are_422(api: httpx.AsyncClient, params: dict, names: str):
    response = await api.get("/runs", params=params)

    assert response.status_code == 422
    assert names in response.text


# --------------------------------------------------------------------------- delete
async def test_delete_is_204_then_404(api: httpx.AsyncClient):
    run = await create(api)

    first = await api.delete(f"/runs/{run['run_id']}")
    second = await api.delete(f"/runs/{run['run_id']}")

    assert first.status_code == 204 and first.content == b""
    assert second.status_code == 404
    assert (await api.get(f"/runs/{run['run_id']}")).status_code == 404


# ----------------------------------------------------------------- errors and health
async def test_health_and_readiness_need_no_key(tmp_path):
    async with app_client(make_settings(tmp_path), api_key=None) as client:
        health = await client.get("/healthz")
        ready = await client.get("/readyz")

    assert health.json() == ready.json() == {"status": "ok"}


async def test_unknown_route_is_a_problem_document(api: httpx.AsyncClient):
    response = await api.get("/nowhere")

    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    assert set(response.json()) == {"type", "title", "status", "detail"}


async def test_openapi_declares_problem_responses(api: httpx.AsyncClient):
    spec = (await api.get("/openapi.json")).json()

    update = spec["paths"]["/runs/{run_id}"]["put"]["responses"]
    assert {"401", "404", "409", "412", "422", "503"} <= set(update)
    assert "application/problem+json" in update["409"]["content"]
    assert update["422"]["content"]["application/problem+json"]["schema"] == {
        "$ref": "#/components/schemas/ValidationProblem"
    }
    operations = {
        op["operationId"] for path in spec["paths"].values() for op in path.values()
    }
    assert operations == {
        "create_run", "list_runs", "get_run", "update_run", "delete_run",
        "heartbeat_run", "healthz", "readyz",
    }  # fmt: skip


async def test_timestamps_are_recent_utc(api: httpx.AsyncClient):
    run = await create(api)

    created = datetime.fromisoformat(run["timestamp"])

    assert abs(created - datetime.now(UTC)) < timedelta(seconds=5)


async def test_repeated_final_status_with_same_fields_is_a_no_op(
    api: httpx.AsyncClient,
):
    run = await create(api)
    body = {"status": "COMPLETED", "metrics_uri": "file:///a", "metrics": {"s": 1.0}}
    first = await api.put(f"/runs/{run['run_id']}", json=body)

    retry = await api.put(f"/runs/{run['run_id']}", json=body)

    assert retry.status_code == 200
    assert retry.json()["finished_at"] == first.json()["finished_at"]


async def test_repeated_final_status_with_other_fields_is_409(api: httpx.AsyncClient):
    run = await create(api)
    await api.put(
        f"/runs/{run['run_id']}", json={"status": "FAILED", "error_message": "a"}
    )

    response = await api.put(
        f"/runs/{run['run_id']}", json={"status": "FAILED", "error_message": "b"}
    )

    assert response.status_code == 409
    assert "error_message" in response.json()["detail"]
