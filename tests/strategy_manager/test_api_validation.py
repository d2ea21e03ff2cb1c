"""Input the service must refuse cleanly, and input it must keep exactly."""

from __future__ import annotations

import json

import httpx
import pytest

from backtest_data_module.strategy_manager.main import MAX_BODY_BYTES, MAX_NESTING_DEPTH

NEW_RUN = {
    "strategy_name": "sma_crossover",
    "strategy_version": "1.2.0",
    "hyperparameters": {"fast": 10},
    "orchestrator_type": "walk_forward",
}


def nested(depth: int) -> dict:
    value: dict = {"leaf": 1}
    for _ in range(depth - 1):
        value = {"n": value}
    return value


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"strategy_name": None}, "body.strategy_name"),
        ({"strategy_name": ""}, "body.strategy_name"),
        ({"strategy_version": "   "}, "body.strategy_version"),
        ({"orchestrator_type": ""}, "body.orchestrator_type"),
        ({"strategy_name": 12}, "body.strategy_name"),
        ({"hyperparameters": [1, 2]}, "body.hyperparameters"),
        ({"hyperparameters": '{"fast": 10}'}, "body.hyperparameters"),
        ({"run_id": "not-a-uuid"}, "body.run_id"),
        ({"colour": "red"}, "body.colour"),
    ],
)
async def test_bad_fields_are_422_naming_the_field(
    api: httpx.AsyncClient, changes: dict, field: str
):
    body = {k: v for k, v in {**NEW_RUN, **changes}.items() if v is not None}

    response = await api.post("/runs", json=body)

    assert response.status_code == 422
    problem = response.json()
    assert response.headers["content-type"] == "application/problem+json"
    assert field in [e["field"] for e in problem["errors"]]
    assert field in problem["detail"]


async def test_malformed_json_is_422(api: httpx.AsyncClient):
    response = await api.post(
        "/runs",
        content=b'{"strategy_name": ',
        headers={"content-type": "application/json"},
    )

    assert response.status_code == 422
    assert response.json()["errors"][0]["type"] == "json_invalid"


@pytest.mark.parametrize(
    ("hyperparameters", "path"),
    [
        ({"$where": 1}, "'$where' at hyperparameters"),
        ({"a": {"b.c": 1}}, "'b.c' at hyperparameters.a"),
        ({"a": [{"x\u0000y": 1}]}, "at hyperparameters.a[0]"),
        ({"a": {"$set": {"b": 1}}}, "'$set' at hyperparameters.a"),
        ({"": 1}, "hyperparameters has an empty key"),
    ],
)
async def test_keys_mongodb_would_mangle_are_refused(
    api: httpx.AsyncClient, hyperparameters: dict, path: str
):
    response = await api.post(
        "/runs", json={**NEW_RUN, "hyperparameters": hyperparameters}
    )

    assert response.status_code == 422
    assert path in response.json()["errors"][0]["message"]


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
async def test_non_finite_numbers_are_refused(api: httpx.AsyncClient, literal: str):
    body = json.dumps({**NEW_RUN, "hyperparameters": {"a": [1, "__X__"]}})
    body = body.replace('"__X__"', literal)

    response = await api.post(
        "/runs", content=body, headers={"content-type": "application/json"}
    )

    assert response.status_code == 422
    assert "hyperparameters.a[1]" in response.json()["errors"][0]["message"]


async def test_integers_beyond_64_bits_are_refused(api: httpx.AsyncClient):
    hyperparameters = {"seed": 2**64}

    response = await api.post(
        "/runs", json={**NEW_RUN, "hyperparameters": hyperparameters}
    )

    assert response.status_code == 422
    assert "hyperparameters.seed" in response.json()["errors"][0]["message"]


async def test_nesting_up_to_the_bound_is_kept(api: httpx.AsyncClient):
    deep = nested(MAX_NESTING_DEPTH - 1)

    response = await api.post("/runs", json={**NEW_RUN, "hyperparameters": deep})

    assert response.status_code == 201
    assert response.json()["hyperparameters"] == deep


async def test_nesting_past_the_bound_is_refused(api: httpx.AsyncClient):
    too_deep = nested(MAX_NESTING_DEPTH + 1)

    response = await api.post("/runs", json={**NEW_RUN, "hyperparameters": too_deep})

    assert response.status_code == 422
    assert f"deeper than {MAX_NESTING_DEPTH}" in response.json()["errors"][0]["message"]


async def test_body_over_the_size_bound_is_413(api: httpx.AsyncClient):
    padding = "x" * MAX_BODY_BYTES
    body = {**NEW_RUN, "hyperparameters": {"padding": padding}}

    response = await api.post("/runs", json=body)

    assert response.status_code == 413
    assert str(MAX_BODY_BYTES) in response.json()["detail"]
    assert (await api.get("/runs")).json() == []


async def test_streamed_body_over_the_bound_is_413(api: httpx.AsyncClient):
    async def chunks():
        yield b'{"strategy_name": "'
        for _ in range(MAX_BODY_BYTES // 65536 + 1):
            yield b"x" * 65536
        yield b'"}'

    response = await api.post(
        "/runs", content=chunks(), headers={"content-type": "application/json"}
    )

    assert response.status_code == 413


async def test_hyperparameters_round_trip_exactly(api: httpx.AsyncClient):
    hyperparameters = {
        "int": 10,
        "negative": -3,
        "big": 2**62,
        "float": 0.1,
        "whole_float": 50.0,
        "tiny": 1e-300,
        "true": True,
        "false": False,
        "none": None,
        "text": "fast ✓ \u0000 inside a value is fine",
        "list": [1, 2.5, "three", None, [True]],
        "nested": {"window": {"days": 5, "weights": [0.25, 0.75]}},
        "empty": {},
    }

    created = await api.post(
        "/runs", json={**NEW_RUN, "hyperparameters": hyperparameters}
    )
    fetched = await api.get(f"/runs/{created.json()['run_id']}")

    # Compare JSON text: Python's == would take 50.0 for 50 and True for 1.
    expected = json.dumps(hyperparameters, sort_keys=True)
    assert json.dumps(fetched.json()["hyperparameters"], sort_keys=True) == expected
    assert json.dumps(created.json()["hyperparameters"], sort_keys=True) == expected


@pytest.mark.parametrize(
    "update",
    [
        {"metrics": {"sharpe": "high"}},
        {"metrics": {"sharpe.oos": 1.0}},
        {"metrics": {"$sharpe": 1.0}},
        {"metrics": {"sharpe": [1.0]}},
        {"metrics_uri": 5},
        {"owner": "me"},
    ],
)
async def test_bad_updates_are_422(api: httpx.AsyncClient, update: dict):
    run = (await api.post("/runs", json=NEW_RUN)).json()

    response = await api.put(f"/runs/{run['run_id']}", json=update)

    assert response.status_code == 422
    assert response.json()["errors"]
