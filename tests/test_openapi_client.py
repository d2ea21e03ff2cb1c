"""The committed OpenAPI document, and a client generated from it, against a server.

The generated client is what other teams get, so these tests drive it end to end
instead of trusting that the document looks right.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from scripts.export_openapi import OPENAPI_PATH, openapi_document, render
from tests.live_server import LiveServer

PACKAGE = "strategy_manager_api_client"
GENERATOR = Path(sys.executable).with_name("openapi-python-client")
PATH = os.environ.get("PATH", "")


def test_committed_openapi_matches_the_app() -> None:
    served = render(openapi_document())
    committed = OPENAPI_PATH.read_text(encoding="utf-8")
    assert committed == served, (
        "openapi.json differs from what the app serves; "
        "run `python scripts/export_openapi.py` and commit the result."
    )


def test_every_operation_has_a_stable_id_and_runs_need_the_key() -> None:
    document = openapi_document()
    operations = {
        op["operationId"]: op
        for path in document["paths"].values()
        for op in path.values()
    }
    assert set(operations) == {
        "create_run", "list_runs", "get_run", "update_run", "delete_run",
        "heartbeat_run", "healthz", "readyz",
    }  # fmt: skip
    scheme = document["components"]["securitySchemes"]["APIKeyHeader"]
    assert scheme == {**scheme, "type": "apiKey", "in": "header", "name": "X-API-KEY"}
    for op_id, op in operations.items():
        secured = op.get("security") == [{"APIKeyHeader": []}]
        assert secured == (op_id not in {"healthz", "readyz"}), op_id


@pytest.fixture(scope="session")
def api_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleType]:
    """The client openapi-python-client generates from openapi.json, imported."""
    root = tmp_path_factory.mktemp("generated")
    result = subprocess.run(
        [
            str(GENERATOR), "generate", "--path", str(OPENAPI_PATH),
            "--output-path", str(root / PACKAGE), "--meta", "none",
            "--fail-on-warning",
        ],
        capture_output=True, text=True, timeout=120, check=False,
        # The generator formats its output with ruff, found on PATH; put this
        # interpreter's scripts first so the test works without an activated venv.
        env={**os.environ, "PATH": os.pathsep.join([str(GENERATOR.parent), PATH])},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    sys.path.insert(0, str(root))
    try:
        yield importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(root))
        for name in [m for m in sys.modules if m.partition(".")[0] == PACKAGE]:
            del sys.modules[name]


def _api(package: ModuleType, name: str) -> Any:
    return importlib.import_module(f"{package.__name__}.{name}")


@pytest.fixture
def client(api_client: ModuleType, live_server: LiveServer) -> Iterator[Any]:
    """The generated AuthenticatedClient, sending the key as the spec declares."""
    authenticated = api_client.AuthenticatedClient(
        base_url=live_server.url,
        token=live_server.api_key,
        prefix="",
        auth_header_name="X-API-KEY",
        raise_on_unexpected_status=True,
    )
    with authenticated as opened:
        yield opened


def test_generated_client_drives_a_run_through_its_life(
    api_client: ModuleType, client: Any
) -> None:
    runs = _api(api_client, "api.runs")
    models = _api(api_client, "models")
    create = _api(api_client, "api.runs.create_run")
    list_runs = _api(api_client, "api.runs.list_runs")
    get_run = _api(api_client, "api.runs.get_run")
    update_run = _api(api_client, "api.runs.update_run")
    heartbeat_run = _api(api_client, "api.runs.heartbeat_run")
    delete_run = _api(api_client, "api.runs.delete_run")
    assert runs is not None
    strategy = f"generated-{uuid.uuid4().hex[:8]}"

    created = []
    for fast in (5, 10):
        hyperparameters = models.RunCreateHyperparameters.from_dict({"fast": fast})
        body = models.RunCreate(
            strategy_name=strategy,
            strategy_version="1.0",
            orchestrator_type="walk_forward",
            hyperparameters=hyperparameters,
        )
        response = create.sync_detailed(client=client, body=body)
        assert response.status_code == 201
        assert isinstance(response.parsed, models.Run)
        assert response.parsed.status == models.RunStatus.PENDING
        created.append(response.parsed)

    # Limitation: hp.<path> filters are open-ended query names that OpenAPI 3.1
    # cannot declare, so the generated list_runs has no argument for them.
    listing = list_runs.sync_detailed(
        client=client, strategy_name=strategy, sort=["timestamp"], limit=1
    )
    assert listing.status_code == 200
    assert listing.headers["X-Total-Count"] == "2"
    assert [run.run_id for run in listing.parsed] == [created[0].run_id]

    run_id = created[1].run_id
    fetched = get_run.sync(client=client, run_id=run_id)
    assert fetched.hyperparameters.to_dict() == {"fast": 10}

    metrics = models.RunUpdateMetricsType0.from_dict({"sharpe": 1.25})
    running = update_run.sync(
        client=client,
        run_id=run_id,
        body=models.RunUpdate(status=models.RunStatus.RUNNING, metrics=metrics),
    )
    assert running.status == models.RunStatus.RUNNING
    assert running.metrics.to_dict() == {"sharpe": 1.25}

    beat = heartbeat_run.sync(client=client, run_id=run_id)
    assert isinstance(beat.heartbeat_at, type(running.timestamp))

    done = update_run.sync(
        client=client,
        run_id=run_id,
        body=models.RunUpdate(status=models.RunStatus.COMPLETED),
    )
    assert done.status == models.RunStatus.COMPLETED

    refused = update_run.sync_detailed(
        client=client,
        run_id=run_id,
        body=models.RunUpdate(status=models.RunStatus.RUNNING),
    )
    assert refused.status_code == 409
    assert isinstance(refused.parsed, models.Problem)
    assert "cannot move" in refused.parsed.detail

    assert delete_run.sync_detailed(client=client, run_id=run_id).status_code == 204
    missing = get_run.sync_detailed(client=client, run_id=run_id)
    assert missing.status_code == 404
    assert isinstance(missing.parsed, models.Problem)
    assert missing.parsed.detail == f"No run with id {run_id}."


def test_generated_client_parses_refusals_as_problems(
    api_client: ModuleType,
    live_server: LiveServer,
    client: Any,
) -> None:
    models = _api(api_client, "models")
    list_runs = _api(api_client, "api.runs.list_runs")

    bad_sort = list_runs.sync_detailed(client=client, sort=["no_such_field"])
    assert bad_sort.status_code == 422
    assert isinstance(bad_sort.parsed, models.ValidationProblem)
    assert "cannot sort by 'no_such_field'" in bad_sort.parsed.detail
    assert [error.field for error in bad_sort.parsed.errors] == ["query.sort"]

    wrong_key = api_client.AuthenticatedClient(
        base_url=live_server.url,
        token="not-the-key",
        prefix="",
        auth_header_name="X-API-KEY",
    )
    with wrong_key as opened:
        refused = list_runs.sync_detailed(client=opened)
    assert refused.status_code == 401
    assert isinstance(refused.parsed, models.Problem)
    assert refused.parsed.title == "Unauthorized"
