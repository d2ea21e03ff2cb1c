"""StrategyManagerClient: error mapping and retries on a mock transport, then every
endpoint against the real service in a uvicorn subprocess."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable

import httpx
import pytest

from backtest_data_module.strategy_manager.client import (
    ApiError,
    Conflict,
    NotFound,
    PreconditionFailed,
    Run,
    RunStatus,
    ServiceUnavailable,
    StrategyManagerClient,
    StrategyManagerError,
    Unauthorized,
    ValidationFailed,
)
from tests.live_server import LiveServer
from tests.processes import free_port

RUN_JSON = {
    "run_id": "3f1c8a52-5b8e-4a8e-9c57-0d6f1b1f2a10",
    "timestamp": "2026-01-02T03:04:05Z",
    "updated_at": "2026-01-02T03:04:05Z",
    "started_at": None,
    "finished_at": None,
    "heartbeat_at": None,
    "strategy_name": "sma_crossover",
    "strategy_version": "1.0.0",
    "hyperparameters": {"fast": 10, "slow": 50},
    "orchestrator_type": "walk_forward",
    "metrics_uri": None,
    "status": "PENDING",
    "error_message": None,
    "metrics": {},
    "stale": False,
}

Handler = Callable[[httpx.Request], httpx.Response]


def mock_client(handler: Handler, **kwargs: float) -> StrategyManagerClient:
    kwargs.setdefault("retry_for", 0.0)
    return StrategyManagerClient(
        "http://sm.test", api_key="k", transport=httpx.MockTransport(handler), **kwargs
    )


def problem(status: int, detail: str, **extra: object) -> httpx.Response:
    body = {"type": "about:blank", "title": "x", "status": status, "detail": detail}
    return httpx.Response(
        status,
        json={**body, **extra},
        headers={"content-type": "application/problem+json"},
    )


# --- mock transport -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error_class"),
    [
        (400, ValidationFailed),
        (401, Unauthorized),
        (403, Unauthorized),
        (404, NotFound),
        (409, Conflict),
        (412, PreconditionFailed),
        (422, ValidationFailed),
        (418, ApiError),
        (500, ApiError),
        (503, ServiceUnavailable),
    ],
)
async def test_error_status_maps_to_exception_class(
    status: int, error_class: type[ApiError]
) -> None:
    async with mock_client(lambda request: problem(status, "nope")) as client:
        with pytest.raises(error_class) as caught:
            await client.get_run("abc")

    assert type(caught.value) is error_class
    assert caught.value.status_code == status
    assert caught.value.detail == "nope"
    assert isinstance(caught.value, StrategyManagerError)


async def test_validation_failed_exposes_field_errors() -> None:
    errors = [{"loc": ["body", "strategy_name"], "msg": "Field required"}]

    def handler(request: httpx.Request) -> httpx.Response:
        return problem(422, "invalid body", errors=errors)

    async with mock_client(handler) as client:
        with pytest.raises(ValidationFailed) as caught:
            await client.create_run(
                strategy_name="s", strategy_version="1", orchestrator_type="o"
            )
    assert caught.value.errors == errors


async def test_non_json_error_body_becomes_detail() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(500, text="boom")

    async with mock_client(handler) as client:
        with pytest.raises(ApiError, match="boom"):
            await client.get_run("abc")


async def test_connect_error_is_service_unavailable() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    async with mock_client(handler) as client:
        with pytest.raises(ServiceUnavailable) as caught:
            await client.health()
    assert caught.value.status_code is None


async def test_client_says_whether_the_service_answered_last() -> None:
    answers: list[httpx.Response | Exception] = [
        httpx.ConnectError("refused"),
        httpx.Response(200, json=RUN_JSON),
    ]

    def handler(request: httpx.Request) -> httpx.Response:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    async with mock_client(handler, retry_for=0.0) as client:
        assert client.unreachable is False
        with pytest.raises(ServiceUnavailable):
            await client.get_run(RUN_JSON["run_id"])
        assert client.unreachable is True
        await client.get_run(RUN_JSON["run_id"])
        assert client.unreachable is False


async def test_transient_failures_are_retried_until_success() -> None:
    answers = [
        httpx.ConnectError("refused"),
        httpx.ReadTimeout("slow"),
        problem(502, "bad gateway"),
        problem(503, "starting"),
        httpx.Response(200, json=RUN_JSON),
    ]
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    client = mock_client(handler, retry_for=5.0, retry_initial_wait=0.001)
    async with client:
        run = await client.get_run(RUN_JSON["run_id"])

    assert run.run_id == RUN_JSON["run_id"]
    assert len(seen) == 5


async def test_retries_stop_after_retry_for_seconds() -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        raise httpx.ConnectError("refused", request=request)

    client = mock_client(handler, retry_for=0.3, retry_initial_wait=0.02)
    started = time.monotonic()
    async with client:
        with pytest.raises(ServiceUnavailable):
            await client.get_run("abc")

    assert 1 < calls < 30
    assert time.monotonic() - started < 1.5


async def test_client_errors_are_not_retried() -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return problem(404, "no run")

    async with mock_client(handler, retry_for=5.0) as client:
        with pytest.raises(NotFound):
            await client.get_run("abc")
    assert calls == 1


async def test_list_runs_sends_filters_as_query_parameters() -> None:
    captured: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        captured.append(request)
        return httpx.Response(200, json=[RUN_JSON], headers={"X-Total-Count": "7"})

    async with mock_client(handler) as client:
        page = await client.list_runs(
            skip=5,
            limit=1,
            strategy_name="sma_crossover",
            status=["COMPLETED", RunStatus.FAILED],
            stale=False,
            sort="-metrics.sharpe",
            hyperparameters={"slow": 100, "filter.kind": "ema", "on": True},
        )

    params = captured[0].url.params
    assert params["skip"] == "5"
    assert params["limit"] == "1"
    assert params["strategy_name"] == "sma_crossover"
    assert params.get_list("status") == ["COMPLETED", "FAILED"]
    assert params["stale"] == "false"
    assert params["sort"] == "-metrics.sharpe"
    assert params["hp.slow"] == "100"
    assert params["hp.filter.kind"] == '"ema"'
    assert params["hp.on"] == "true"
    assert page.total == 7
    assert [run.run_id for run in page.runs] == [RUN_JSON["run_id"]]


async def test_api_key_falls_back_to_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STRATEGY_MANAGER_API_KEY", "from-env")
    keys: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        keys.append(request.headers.get("X-API-KEY"))
        return httpx.Response(200, json=RUN_JSON)

    transport = httpx.MockTransport(handler)
    async with StrategyManagerClient("http://sm.test", transport=transport) as client:
        await client.get_run("a")
    async with StrategyManagerClient(
        "http://sm.test", api_key="given", transport=transport
    ) as client:
        await client.get_run("a")
    assert keys == ["from-env", "given"]


async def test_create_run_chooses_a_run_id_when_none_given() -> None:
    bodies: list[dict[str, object]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        return httpx.Response(201, json={**RUN_JSON, "run_id": bodies[-1]["run_id"]})

    async with mock_client(handler) as client:
        run = await client.create_run(
            strategy_name="s", strategy_version="1", orchestrator_type="o"
        )
    assert uuid.UUID(run.run_id).version == 4


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"retry_for": -1.0}, "retry_for"), ({"timeout": 0.0}, "timeout")],
)
def test_bad_settings_raise_value_error_naming_them(
    kwargs: dict[str, float], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        StrategyManagerClient("http://sm.test", **kwargs)


# --- live service -------------------------------------------------------------------


@pytest.fixture
async def client(live_server: LiveServer) -> StrategyManagerClient:
    async with StrategyManagerClient(
        live_server.url, api_key=live_server.api_key, retry_for=0.0
    ) as client:
        yield client


async def new_run(client: StrategyManagerClient, **overrides: object) -> Run:
    fields: dict[str, object] = {
        "strategy_name": "client_test",
        "strategy_version": "1.0.0",
        "orchestrator_type": "walk_forward",
        "hyperparameters": {"fast": 10, "slow": 50, "nested": {"kind": "ema"}},
    }
    return await client.create_run(**{**fields, **overrides})


async def test_health_of_live_service(client: StrategyManagerClient) -> None:
    assert (await client.health()).status == "ok"


async def test_create_then_get_returns_the_same_run(
    client: StrategyManagerClient,
) -> None:
    created = await new_run(client)

    fetched = await client.get_run(created.run_id)

    assert fetched.run_id == created.run_id
    assert fetched.status is RunStatus.PENDING
    assert fetched.hyperparameters == {
        "fast": 10,
        "slow": 50,
        "nested": {"kind": "ema"},
    }
    assert fetched.etag


async def test_create_is_idempotent_for_the_same_content(
    client: StrategyManagerClient,
) -> None:
    run_id = str(uuid.uuid4())
    first = await new_run(client, run_id=run_id)

    again = await new_run(client, run_id=run_id)

    assert again.run_id == first.run_id == run_id
    with pytest.raises(Conflict):
        await new_run(client, run_id=run_id, strategy_version="2.0.0")


async def test_update_moves_status_and_stores_metrics(
    client: StrategyManagerClient,
) -> None:
    run = await new_run(client)

    running = await client.update_run(run.run_id, status="RUNNING")
    done = await client.update_run(
        run.run_id,
        status=RunStatus.COMPLETED,
        metrics_uri="file:///tmp/summary.json",
        metrics={"sharpe": 1.25, "max_drawdown": -0.1},
    )

    assert running.status is RunStatus.RUNNING
    assert done.status is RunStatus.COMPLETED
    assert done.metrics == {"sharpe": 1.25, "max_drawdown": -0.1}
    assert done.metrics_uri == "file:///tmp/summary.json"
    with pytest.raises(Conflict):
        await client.update_run(run.run_id, status="RUNNING")


async def test_update_with_stale_etag_is_precondition_failed(
    client: StrategyManagerClient,
) -> None:
    run = await new_run(client)
    current = await client.update_run(run.run_id, status="RUNNING", if_match=run.etag)

    with pytest.raises(PreconditionFailed):
        await client.update_run(run.run_id, error_message="x", if_match=run.etag)
    assert current.etag != run.etag


async def test_heartbeat_sets_heartbeat_at(client: StrategyManagerClient) -> None:
    run = await new_run(client)
    await client.update_run(run.run_id, status="RUNNING")

    beat = await client.heartbeat(run.run_id)

    assert beat.heartbeat_at is not None


async def test_list_runs_filters_by_hyperparameter_and_counts(
    client: StrategyManagerClient,
) -> None:
    name = f"list_test_{uuid.uuid4().hex[:8]}"
    for slow in (50, 100, 100):
        await new_run(client, strategy_name=name, hyperparameters={"slow": slow})

    page = await client.list_runs(
        strategy_name=name, hyperparameters={"slow": 100}, limit=1
    )

    assert page.total == 2
    assert len(page.runs) == 1
    assert page.runs[0].hyperparameters == {"slow": 100}


async def test_delete_then_get_is_not_found(client: StrategyManagerClient) -> None:
    run = await new_run(client)

    await client.delete_run(run.run_id)

    with pytest.raises(NotFound):
        await client.get_run(run.run_id)
    with pytest.raises(NotFound):
        await client.delete_run(run.run_id)


async def test_wrong_api_key_is_unauthorized(
    live_server: LiveServer,
) -> None:
    async with StrategyManagerClient(
        live_server.url, api_key="wrong", retry_for=0.0
    ) as client:
        with pytest.raises(Unauthorized):
            await client.list_runs()


async def test_invalid_metrics_are_validation_failed(
    client: StrategyManagerClient,
) -> None:
    run = await new_run(client)

    with pytest.raises(ValidationFailed):
        await client.update_run(run.run_id, status="BOGUS")


async def test_closed_port_is_service_unavailable() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    async with StrategyManagerClient(url, api_key="k", retry_for=0.0) as client:
        with pytest.raises(ServiceUnavailable):
            await client.health()
