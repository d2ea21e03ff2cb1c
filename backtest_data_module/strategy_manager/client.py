"""Async client for the strategy manager API.

The client depends on httpx, tenacity and pydantic only, never on the service code, so
it can be installed next to a backtest without FastAPI or a database driver.

Exceptions::

    StrategyManagerError        anything this module raises
      ApiError                  the service answered with an error status
        Unauthorized            401 / 403: missing or wrong API key
        NotFound                404: no run with that id
        Conflict                409: run_id holds other content, or illegal status move
        PreconditionFailed      412: If-Match did not match the current ETag
        ValidationFailed        400 / 413 / 422: the request was refused as invalid
        ServiceUnavailable      no answer, or 502 / 503 / 504 (retried before raised)

Example::

    async with StrategyManagerClient("http://localhost:8000", api_key="k") as client:
        run = await client.create_run(strategy_name="sma_crossover", ...)
        await client.update_run(run.run_id, status="RUNNING")
"""

from __future__ import annotations

import functools
import json
import logging
import os
import ssl
import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime
from enum import StrEnum
from types import TracebackType
from typing import Any, Self

import httpx
import tenacity
from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "DEFAULT_RETRY_FOR",
    "DEFAULT_TIMEOUT",
    "ApiError",
    "Conflict",
    "Health",
    "NotFound",
    "PreconditionFailed",
    "Run",
    "RunPage",
    "RunStatus",
    "ServiceUnavailable",
    "StrategyManagerClient",
    "StrategyManagerError",
    "Unauthorized",
    "ValidationFailed",
]

logger = logging.getLogger(__name__)

API_KEY_ENV = "STRATEGY_MANAGER_API_KEY"
API_KEY_HEADER = "X-API-KEY"
DEFAULT_TIMEOUT = 10.0
DEFAULT_RETRY_FOR = 30.0
DEFAULT_RETRY_INITIAL_WAIT = 0.1
DEFAULT_RETRY_MAX_WAIT = 5.0
TRANSIENT_STATUS_CODES = frozenset({502, 503, 504})

HyperparameterScalar = str | int | float | bool | None


class StrategyManagerError(Exception):
    """Base class of every error raised by this client."""


class ApiError(StrategyManagerError):
    """The service answered with an error status."""

    def __init__(
        self,
        status_code: int | None,
        detail: str,
        problem: Mapping[str, Any] | None = None,
    ) -> None:
        self.status_code = status_code
        self.detail = detail
        self.problem = dict(problem or {})
        super().__init__(f"{status_code}: {detail}" if status_code else detail)


class Unauthorized(ApiError):
    """The API key is missing or wrong (401 or 403)."""


class NotFound(ApiError):
    """No run has the requested run_id (404)."""


class Conflict(ApiError):
    """The run_id holds other content, or the status move is not allowed (409)."""


class PreconditionFailed(ApiError):
    """The run changed since the ETag given as if_match was read (412)."""


class ValidationFailed(ApiError):
    """The service refused the request as invalid (400, 413 or 422)."""

    @property
    def errors(self) -> list[Any]:
        """The per-field errors of a 422 problem document, if any."""
        return list(self.problem.get("errors") or [])


class ServiceUnavailable(ApiError):
    """The service did not answer, or answered 502, 503 or 504, after all retries."""


_ERRORS_BY_STATUS: dict[int, type[ApiError]] = {
    400: ValidationFailed,
    401: Unauthorized,
    403: Unauthorized,
    404: NotFound,
    409: Conflict,
    412: PreconditionFailed,
    413: ValidationFailed,
    422: ValidationFailed,
    502: ServiceUnavailable,
    503: ServiceUnavailable,
    504: ServiceUnavailable,
}


class RunStatus(StrEnum):
    """Lifecycle of a run; the last three are final."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


class Run(BaseModel):
    """A run as the service stores it."""

    model_config = ConfigDict(extra="ignore")

    run_id: str
    timestamp: datetime
    updated_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    heartbeat_at: datetime | None = None
    strategy_name: str
    strategy_version: str
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    orchestrator_type: str
    metrics_uri: str | None = None
    status: RunStatus
    error_message: str | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    stale: bool = False
    # Taken from the response's ETag header, for update_run(if_match=...).
    etag: str | None = Field(default=None, exclude=True)


class RunPage(BaseModel):
    """One page of list_runs: the runs and the number matching the filters."""

    runs: list[Run]
    total: int


class Health(BaseModel):
    """Body of GET /healthz."""

    model_config = ConfigDict(extra="allow")

    status: str


class StrategyManagerClient:
    """Typed async access to every endpoint of the strategy manager API.

    Parameters
    ----------
    base_url:
        Root of the service, e.g. ``"http://localhost:8000"``.
    api_key:
        Sent as ``X-API-KEY``; defaults to the ``STRATEGY_MANAGER_API_KEY`` variable.
    timeout:
        Seconds allowed for one HTTP attempt.
    retry_for:
        Seconds during which connect errors, timeouts and 502/503/504 are retried with
        exponential backoff; ``0`` makes one attempt only.
    transport:
        An httpx transport, e.g. ``httpx.MockTransport`` in tests.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retry_for: float = DEFAULT_RETRY_FOR,
        retry_initial_wait: float = DEFAULT_RETRY_INITIAL_WAIT,
        retry_max_wait: float = DEFAULT_RETRY_MAX_WAIT,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if retry_for < 0:
            raise ValueError(f"retry_for must be >= 0 seconds, got {retry_for!r}")
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")

        api_key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
        headers = {API_KEY_HEADER: api_key} if api_key else {}
        self.base_url = base_url.rstrip("/")
        self.retry_for = retry_for
        # True from a request that got no answer until one that did.
        self.unreachable = False
        self._retry_wait = tenacity.wait_exponential(
            multiplier=retry_initial_wait, max=retry_max_wait
        ) + tenacity.wait_random(0, retry_initial_wait)
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers=headers,
            timeout=timeout,
            transport=transport,
            verify=_shared_ssl_context(),
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def health(self) -> Health:
        """Return the service's health; raises ServiceUnavailable when it is down."""
        response = await self._request("GET", "/healthz")
        return Health.model_validate(response.json())

    async def create_run(
        self,
        *,
        strategy_name: str,
        strategy_version: str,
        orchestrator_type: str,
        hyperparameters: Mapping[str, Any] | None = None,
        run_id: str | None = None,
    ) -> Run:
        """Register a run.

        The run_id is chosen here when not given, so a retried request can never create
        a second run. Creating an existing run_id with the same content returns the
        stored run; with other content it raises Conflict.
        """
        body = {
            "run_id": run_id or str(uuid.uuid4()),
            "strategy_name": strategy_name,
            "strategy_version": strategy_version,
            "hyperparameters": dict(hyperparameters or {}),
            "orchestrator_type": orchestrator_type,
        }
        return self._run(await self._request("POST", "/runs", json=body))

    async def list_runs(
        self,
        *,
        skip: int = 0,
        limit: int | None = None,
        strategy_name: str | None = None,
        strategy_version: str | None = None,
        orchestrator_type: str | None = None,
        status: str | Iterable[str] | None = None,
        created_after: datetime | str | None = None,
        created_before: datetime | str | None = None,
        stale: bool | None = None,
        sort: str | Iterable[str] | None = None,
        hyperparameters: Mapping[str, HyperparameterScalar] | None = None,
    ) -> RunPage:
        """Return one page of runs matching every filter given.

        ``hyperparameters`` maps a dotted path to the value it must equal, e.g.
        ``{"slow": 100, "filter.kind": "ema"}``; ``sort`` takes field names with an
        optional leading ``-`` for descending order, e.g. ``"-metrics.sharpe"``.
        """
        params: list[tuple[str, str]] = [("skip", str(skip))]
        if limit is not None:
            params.append(("limit", str(limit)))
        for name, value in (
            ("strategy_name", strategy_name),
            ("strategy_version", strategy_version),
            ("orchestrator_type", orchestrator_type),
            ("created_after", _iso(created_after)),
            ("created_before", _iso(created_before)),
        ):
            if value is not None:
                params.append((name, value))
        params += [("status", str(value)) for value in _as_list(status)]
        params += [("sort", value) for value in _as_list(sort)]
        if stale is not None:
            params.append(("stale", "true" if stale else "false"))
        for path, scalar in (hyperparameters or {}).items():
            params.append((f"hp.{path}", json.dumps(scalar)))

        response = await self._request("GET", "/runs", params=params)
        runs = [Run.model_validate(item) for item in response.json()]
        total = int(response.headers.get("X-Total-Count", len(runs)))
        return RunPage(runs=runs, total=total)

    async def get_run(self, run_id: str) -> Run:
        """Return the run with this run_id; raises NotFound if there is none."""
        return self._run(await self._request("GET", f"/runs/{run_id}"))

    async def update_run(
        self,
        run_id: str,
        *,
        status: RunStatus | str | None = None,
        metrics_uri: str | None = None,
        error_message: str | None = None,
        metrics: Mapping[str, float] | None = None,
        if_match: str | None = None,
    ) -> Run:
        """Change the fields given; only those are sent.

        Raises Conflict when the run is already in a final state and ``status`` asks
        for another one, PreconditionFailed when ``if_match`` is stale.
        """
        body: dict[str, Any] = {}
        if status is not None:
            body["status"] = str(status)
        if metrics_uri is not None:
            body["metrics_uri"] = metrics_uri
        if error_message is not None:
            body["error_message"] = error_message
        if metrics is not None:
            body["metrics"] = {name: float(value) for name, value in metrics.items()}
        headers = {"If-Match": if_match} if if_match else None

        response = await self._request(
            "PUT", f"/runs/{run_id}", json=body, headers=headers
        )
        return self._run(response)

    async def delete_run(self, run_id: str) -> None:
        """Delete the run; raises NotFound if there is none."""
        # Limitation: if a retried DELETE follows one that was applied but whose answer
        # was lost, the retry raises NotFound although the run is gone as asked.
        await self._request("DELETE", f"/runs/{run_id}")

    async def heartbeat(self, run_id: str) -> Run:
        """Record that the run is still alive."""
        return self._run(await self._request("POST", f"/runs/{run_id}/heartbeat"))

    async def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        retrying = tenacity.AsyncRetrying(
            stop=tenacity.stop_before_delay(self.retry_for),
            wait=self._retry_wait,
            retry=tenacity.retry_if_exception_type(ServiceUnavailable),
            before_sleep=_log_retry,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await self._send_once(method, url, **kwargs)
        raise AssertionError("unreachable: tenacity re-raises the last error")

    async def _send_once(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        try:
            response = await self._http.request(method, url, **kwargs)
        except httpx.TransportError as exc:
            self.unreachable = True
            raise ServiceUnavailable(
                None, f"{method} {self.base_url}{url} failed: {exc!r}"
            ) from exc
        self.unreachable = response.status_code in TRANSIENT_STATUS_CODES
        if response.is_success:
            return response
        raise _error_from(response)

    @staticmethod
    def _run(response: httpx.Response) -> Run:
        run = Run.model_validate(response.json())
        run.etag = response.headers.get("ETag")
        return run


@functools.cache
def _shared_ssl_context() -> ssl.SSLContext:
    """httpx's default TLS settings, built once: loading the CA bundle takes ~25 ms,
    which a client made per backtest run would otherwise pay every time."""
    return httpx.create_ssl_context()


def _error_from(response: httpx.Response) -> ApiError:
    problem: dict[str, Any] = {}
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        problem = body
    detail = problem.get("detail") or problem.get("title") or response.text
    if not isinstance(detail, str):
        detail = json.dumps(detail)
    detail = detail or response.reason_phrase

    error_class = _ERRORS_BY_STATUS.get(response.status_code, ApiError)
    return error_class(response.status_code, detail, problem)


def _log_retry(state: tenacity.RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    wait = state.next_action.sleep if state.next_action else 0.0
    logger.debug(
        "attempt %s failed (%s); retrying in %.2fs", state.attempt_number, exc, wait
    )


def _iso(value: datetime | str | None) -> str | None:
    return value.isoformat() if isinstance(value, datetime) else value


def _as_list(value: str | Iterable[str] | None) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(item) for item in value]
