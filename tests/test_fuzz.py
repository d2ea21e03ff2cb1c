"""Property-based fuzzing of the live service against its committed OpenAPI document.

Schemathesis generates valid and invalid requests for every operation in
openapi.json and checks each answer: never a 5xx, and status code, content type,
headers and body as the document declares them. A separate test asserts that no
/runs operation answers a request without the key.
"""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from scripts.export_openapi import OPENAPI_PATH
from tests.live_server import LiveServer

# Bounded so the whole module stays well under a minute on two cores.
MAX_EXAMPLES = 30

CONFIG = schemathesis.Config.from_dict(
    {"generation": {"max-examples": MAX_EXAMPLES, "mode": "all"}}
)
schema = schemathesis.openapi.from_path(OPENAPI_PATH, config=CONFIG)

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_every_answer_conforms_to_the_spec(
    case: schemathesis.Case,
    live_server: LiveServer,
) -> None:
    case.call_and_validate(
        base_url=live_server.url,
        headers={"X-API-KEY": live_server.api_key},
        checks=CHECKS,
    )


ANY_RUN_ID = "00000000-0000-4000-8000-000000000000"
RUN_OPERATIONS = [
    (method.upper(), path)
    for path, item in schema.raw_schema["paths"].items()
    for method in item
    if path.startswith("/runs")
]


@pytest.mark.parametrize(("method", "path"), RUN_OPERATIONS)
@pytest.mark.parametrize("key", [None, "", "wrong-key"], ids=["none", "empty", "wrong"])
def test_runs_routes_refuse_a_missing_or_wrong_key(
    live_server: LiveServer,
    method: str,
    path: str,
    key: str | None,
) -> None:
    url = live_server.url + path.replace("{run_id}", ANY_RUN_ID)
    headers = {} if key is None else {"X-API-KEY": key}
    body = {"strategy_name": "s", "strategy_version": "1", "orchestrator_type": "wf"}
    json = body if method == "POST" and path == "/runs" else None

    response = httpx.request(method, url, headers=headers, json=json, timeout=10)

    assert response.status_code == 401, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["detail"] == "Missing or invalid API key."


# Findings of the fuzzer, pinned so they stay fixed whatever examples it draws.
def test_update_with_null_metrics_changes_nothing(live_server: LiveServer) -> None:
    headers = {"X-API-KEY": live_server.api_key}
    body = {"strategy_name": "s", "strategy_version": "1", "orchestrator_type": "wf"}
    run = httpx.post(f"{live_server.url}/runs", json=body, headers=headers).json()

    response = httpx.put(
        f"{live_server.url}/runs/{run['run_id']}",
        json={"metrics": None, "status": None},
        headers=headers,
    )

    assert response.status_code == 200, response.text
    assert response.json()["metrics"] == {}


def test_body_that_is_not_utf8_is_a_declared_400(live_server: LiveServer) -> None:
    response = httpx.post(
        f"{live_server.url}/runs",
        content=b"\xff\x52\x19",
        headers={"X-API-KEY": live_server.api_key, "Content-Type": "application/json"},
    )

    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    declared = schema.raw_schema["paths"]["/runs"]["post"]["responses"]
    assert "400" in declared


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"sort": "nowhere"}, "query.sort"),
        ({"colour": "red"}, "query.colour"),
        ({"hp.fast": "ten"}, "query.hp.fast"),
    ],
)
def test_hand_checked_query_422_lists_the_field(
    live_server: LiveServer, params: dict, field: str
) -> None:
    response = httpx.get(
        f"{live_server.url}/runs",
        params=params,
        headers={"X-API-KEY": live_server.api_key},
    )

    assert response.status_code == 422
    assert [e["field"] for e in response.json()["errors"]] == [field]
    assert response.json()["detail"].startswith(f"Invalid input in {field}: ")
