"""The Strategy Manager service: one MongoDB document per backtest run.

Sections, top to bottom: limits and settings, input checks, schemas, run lifecycle
rules, errors, auth, list queries, the app factory with its lifespan, and the
routes. Where runs are kept (MongoDB or the embedded store) is ``store.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import secrets
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

import pymongo
import pymongo.errors
from fastapi import (
    APIRouter,
    Depends,
    FastAPI,
    Header,
    HTTPException,
    Query,
    Request,
    Response,
)
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.security import APIKeyHeader
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    field_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backtest_data_module.strategy_manager.store import (
    TIMES,
    EmbeddedRunStore,
    RunStore,
    as_utc,
)

logger = logging.getLogger(__name__)

# Limits on what a client may send; the README's "Limits" table repeats them.
MAX_BODY_BYTES = 1_048_576
MAX_NESTING_DEPTH = 32
MAX_NAME_LENGTH = 200
MAX_TEXT_LENGTH = 10_000
MAX_PAGE_SIZE = 1000
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

API_KEY_HEADER = "X-API-KEY"


# --------------------------------------------------------------------------- settings
class Settings(BaseSettings):
    """Everything the service reads from the environment (prefix STRATEGY_MANAGER_)."""

    model_config = SettingsConfigDict(env_prefix="STRATEGY_MANAGER_")

    api_key: SecretStr = Field(min_length=1)
    mongodb_url: str | None = None
    database: str = "strategy_manager"
    data_dir: Path = Path("strategy_manager_data")
    stale_after_seconds: float = Field(default=300.0, gt=0)
    db_timeout_ms: int = Field(default=2000, gt=0)
    # Some MongoDB-compatible servers (nx-27017) refuse writes once an index names
    # `_id`; MongoDB itself wants it there, so that listing pages never sort.
    index_id_tiebreak: bool = True

    @field_validator("mongodb_url")
    @classmethod
    def _mongodb_scheme(cls, url: str | None) -> str | None:
        if not url:
            return None
        if not url.startswith(("mongodb://", "mongodb+srv://")):
            raise ValueError(
                f"must start with mongodb:// or mongodb+srv://, got {url!r}"
            )
        return url


def load_settings() -> Settings:
    """Read settings; exit with one line naming the variable when one is wrong."""
    try:
        return Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        variable = "STRATEGY_MANAGER_" + str(first["loc"][0]).upper()
        if first["type"] == "missing":
            hint = "set it to the key clients must send in the X-API-KEY header"
            raise SystemExit(f"error: {variable} is not set; {hint}.") from None
        raise SystemExit(f"error: {variable} is invalid: {first['msg']}.") from None


# ----------------------------------------------------------------------- input checks
def _check_json_value(value: Any, path: str, depth: int) -> None:
    """Refuse what MongoDB would mangle or JSON cannot carry, naming the path."""
    if depth > MAX_NESTING_DEPTH:
        raise ValueError(f"{path} is nested deeper than {MAX_NESTING_DEPTH} levels")
    if isinstance(value, dict):
        for key, item in value.items():
            if not key:
                raise ValueError(f"{path} has an empty key")
            if key.startswith("$") or "." in key or "\x00" in key:
                raise ValueError(
                    f"key {key!r} at {path} is not allowed: keys may not start "
                    "with '$' or contain '.' or NUL"
                )
            _check_json_value(item, f"{path}.{key}", depth + 1)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_json_value(item, f"{path}[{index}]", depth + 1)
    elif isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{path} is {value}; only finite numbers are allowed")
    elif isinstance(value, int) and not INT64_MIN <= value <= INT64_MAX:
        raise ValueError(f"{path} is {value}, outside the 64-bit integer range")


def check_hyperparameters(value: dict[str, Any]) -> dict[str, Any]:
    _check_json_value(value, "hyperparameters", 1)
    return value


def check_metrics(value: dict[str, float] | None) -> dict[str, float] | None:
    # `metrics: null` is allowed and reaches this validator as None.
    _check_json_value(value or {}, "metrics", 1)
    return value


# ---------------------------------------------------------------------------- schemas
class RunStatus(StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @classmethod
    def _missing_(cls, value: object) -> RunStatus | None:
        if isinstance(value, str):
            return cls.__members__.get(value.upper())
        return None


FINAL_STATES = frozenset({RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED})
ALLOWED_MOVES: dict[RunStatus, frozenset[RunStatus]] = {
    RunStatus.PENDING: frozenset(RunStatus) - {RunStatus.PENDING},
    RunStatus.RUNNING: FINAL_STATES,
}

Name = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_NAME_LENGTH),
]
Text = Annotated[str, StringConstraints(max_length=MAX_TEXT_LENGTH)]
MetricName = Annotated[str, StringConstraints(min_length=1, max_length=MAX_NAME_LENGTH)]
Metrics = dict[MetricName, Annotated[float, Field(allow_inf_nan=False)]]


class RunCreate(BaseModel):
    """What a client sends to register a run."""

    model_config = ConfigDict(extra="forbid")

    run_id: uuid.UUID | None = Field(
        default=None,
        description="Client-chosen id; lets a client retry a create safely.",
    )
    strategy_name: Name
    strategy_version: Name
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    orchestrator_type: Name

    _hyperparameters = field_validator("hyperparameters")(check_hyperparameters)


class RunUpdate(BaseModel):
    """Fields a client may change; only the ones sent are touched."""

    model_config = ConfigDict(extra="forbid")

    status: RunStatus | None = None
    metrics_uri: Text | None = None
    error_message: Text | None = None
    metrics: Metrics | None = Field(
        default=None, description="Metric name -> finite number, merged into the run."
    )

    _metrics = field_validator("metrics")(check_metrics)


class Run(BaseModel):
    """A stored run as the API returns it."""

    run_id: uuid.UUID
    timestamp: datetime = Field(description="Creation time, UTC.")
    updated_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    heartbeat_at: datetime | None = None
    strategy_name: str
    strategy_version: str
    hyperparameters: dict[str, Any]
    orchestrator_type: str
    metrics_uri: str | None = None
    status: RunStatus
    error_message: str | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    stale: bool = Field(
        default=False,
        description="RUNNING, but no heartbeat within the configured timeout.",
    )

    # The embedded store hands back naive datetimes; every stored time is UTC.
    _times_in_utc = field_validator(*TIMES)(as_utc)


class InvalidField(BaseModel):
    field: str = Field(description="Dotted location, e.g. body.hyperparameters.")
    message: str
    type: str


class Problem(BaseModel):
    """An RFC 9457 problem document."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str


class ValidationProblem(Problem):
    errors: list[InvalidField]


class Health(BaseModel):
    status: Literal["ok"] = "ok"


RUN_LIST = TypeAdapter(list[Run])


def utc_now() -> datetime:
    """Now in UTC, cut to the millisecond that BSON stores."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


# ------------------------------------------------------------------ runs <-> documents
def new_document(body: RunCreate, now: datetime) -> dict[str, Any]:
    run_id = str(body.run_id or uuid.uuid4())
    return {
        "_id": run_id,
        "_rev": uuid.uuid4().hex,
        "timestamp": now,
        "updated_at": now,
        "started_at": None,
        "finished_at": None,
        "heartbeat_at": None,
        "strategy_name": body.strategy_name,
        "strategy_version": body.strategy_version,
        "hyperparameters": body.hyperparameters,
        "orchestrator_type": body.orchestrator_type,
        "metrics_uri": None,
        "status": RunStatus.PENDING.value,
        "error_message": None,
        "metrics": {},
    }


def same_content(document: dict[str, Any], body: RunCreate) -> bool:
    """True when a repeated create carries what the stored run was created with."""

    def canonical(value: Any) -> str:
        # JSON text tells 1, 1.0 and true apart, which == in Python does not.
        return json.dumps(value, sort_keys=True)

    fields = ("strategy_name", "strategy_version", "orchestrator_type")
    return all(document[f] == getattr(body, f) for f in fields) and canonical(
        document["hyperparameters"]
    ) == canonical(body.hyperparameters)


def to_run(document: dict[str, Any], stale_before: datetime) -> Run:
    fields = {k: v for k, v in document.items() if not k.startswith("_")}
    run = Run.model_validate({**fields, "run_id": document["_id"]})
    heartbeat = run.heartbeat_at
    run.stale = (
        run.status is RunStatus.RUNNING
        and heartbeat is not None
        and heartbeat < stale_before
    )
    return run


def plan_update(
    current: dict[str, Any], body: RunUpdate, now: datetime, *, first_seen: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return the extra filter and the ``$set`` for one update attempt.

    The filter pins the status the decision was made on, so a concurrent change
    makes the write miss instead of overwriting it. Raises ``HTTPException(409)``
    for a move the lifecycle forbids.
    """
    old = RunStatus(current["status"])
    new = body.status or old
    changes: dict[str, Any] = {"updated_at": now, "_rev": uuid.uuid4().hex}
    for name in ("metrics_uri", "error_message"):
        if name in body.model_fields_set:
            changes[name] = getattr(body, name)
    for name, value in (body.metrics or {}).items():
        changes[f"metrics.{name}"] = value

    if new is not old:
        if new not in ALLOWED_MOVES.get(old, frozenset()):
            raise conflict(f"A {old} run cannot move to {new}.")
        changes["status"] = new.value
        if new is RunStatus.RUNNING:
            changes["started_at"] = now
        if new in FINAL_STATES:
            changes["finished_at"] = now
    elif body.status is not None and first_seen != old:
        # This request saw another status and lost the race to the same move.
        raise conflict(f"Another request moved this run to {old} first.")
    elif body.status is not None and old in FINAL_STATES:
        _check_repeat_is_identical(current, changes, old)
    if new is RunStatus.RUNNING:
        changes["heartbeat_at"] = now
    return {"status": old.value}, changes


def _check_repeat_is_identical(
    current: dict[str, Any], changes: dict[str, Any], status: RunStatus
) -> None:
    """A repeated final status is a retry only if it carries what is stored."""
    for name, value in changes.items():
        if name in {"updated_at", "_rev"}:
            continue
        stored: Any = current
        for part in name.split("."):
            stored = stored.get(part) if isinstance(stored, dict) else None
        if stored != value:
            raise conflict(
                f"The run is already {status}; repeating {status} with a different "
                f"{name} is not allowed."
            )


# ----------------------------------------------------------------------------- errors
def conflict(detail: str) -> HTTPException:
    return HTTPException(409, detail)


def invalid_query(parameter: str, message: str) -> RequestValidationError:
    """A 422 for a query parameter checked by hand, listed in ``errors`` like any."""
    error = {"loc": ("query", parameter), "msg": message, "type": "value_error"}
    return RequestValidationError([error])


def not_found(run_id: uuid.UUID | str) -> HTTPException:
    return HTTPException(404, f"No run with id {run_id}.")


PROBLEM_MEDIA_TYPE = "application/problem+json"
_TITLES = {
    400: "Bad request",
    401: "Unauthorized",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    412: "Precondition failed",
    413: "Content too large",
    422: "Invalid input",
    500: "Internal server error",
    503: "Service unavailable",
}


def problem(
    status: int, detail: str, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    body = {
        "type": "about:blank",
        "title": _TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
        **extra,
    }
    return JSONResponse(
        body, status_code=status, headers=headers, media_type=PROBLEM_MEDIA_TYPE
    )


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    # The spec promises ValidationProblem for every 422, so `errors` is always there.
    extra: dict[str, Any] = {"errors": []} if exc.status_code == 422 else {}
    return problem(exc.status_code, str(exc.detail), dict(exc.headers or {}), **extra)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {
            "field": ".".join(str(part) for part in error["loc"]),
            "message": error["msg"],
            "type": error["type"],
        }
        for error in exc.errors()
    ]
    names = ", ".join(dict.fromkeys(e["field"] for e in errors))
    detail = f"Invalid input in {names}."
    if len(errors) == 1:
        detail = f"Invalid input in {names}: {errors[0]['message']}"
    return problem(422, detail, errors=errors)


async def _database_down(request: Request, exc: Exception) -> Response:
    logger.warning("Database unreachable: %s", exc)
    return problem(
        503,
        "The database is unreachable; retry shortly.",
        {"Retry-After": "5"},
    )


async def _unexpected(request: Request, exc: Exception) -> Response:
    logger.exception("Unhandled error on %s %s", request.method, request.url.path)
    return problem(500, "The server hit an unexpected error; it has been logged.")


class BodySizeLimit:
    """Answer 413 to a request body over ``limit`` bytes, before anything reads it.

    FastAPI's own ``max_body_size`` answers in plain text; every error here is a
    problem document, so the check lives in this small middleware instead.
    """

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._refuse(scope, receive, send)
            return

        seen = 0

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise HTTPException(413, self._detail)
            return message

        await self.app(scope, counting_receive, send)

    @property
    def _detail(self) -> str:
        return f"The request body is over the limit of {self.limit} bytes."

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        await problem(413, self._detail)(scope, receive, send)


# ------------------------------------------------------------------------------- auth
api_key_scheme = APIKeyHeader(
    name=API_KEY_HEADER,
    auto_error=False,
    description="The key set in STRATEGY_MANAGER_API_KEY on the server.",
)


async def require_api_key(
    request: Request, key: Annotated[str | None, Depends(api_key_scheme)]
) -> None:
    expected: SecretStr = request.app.state.settings.api_key
    given = (key or "").encode()
    if not secrets.compare_digest(given, expected.get_secret_value().encode()):
        raise HTTPException(401, "Missing or invalid API key.")


# ----------------------------------------------------------------------- dependencies
async def get_store(request: Request) -> RunStore:
    return request.app.state.store


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


StoreDep = Annotated[RunStore, Depends(get_store)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
RunIdPath = Annotated[uuid.UUID, PathParam(description="The run's UUID.")]


def _problem_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    descriptions = {
        400: "The body could not be read, e.g. it is not UTF-8.",
        401: "Missing or invalid API key.",
        404: "No run with that id.",
        409: "The change conflicts with the run's current state.",
        412: "If-Match no longer matches the run's ETag.",
        413: "Request body too large.",
        422: "Invalid input; `errors` lists each invalid field.",
        503: "The database is unreachable.",
    }
    return {
        code: {
            "model": ValidationProblem if code == 422 else Problem,
            "description": descriptions[code],
            "content": {PROBLEM_MEDIA_TYPE: {}},
        }
        for code in codes
    }


ETAG_HEADER = {
    "ETag": {
        "description": "Changes with every change of the run.",
        "schema": {"type": "string"},
    }
}


def run_response(
    document: dict[str, Any], settings: Settings, status_code: int = 200, **headers: str
) -> Response:
    run = to_run(document, utc_now() - timedelta(seconds=settings.stale_after_seconds))
    return Response(
        run.model_dump_json(),
        status_code=status_code,
        media_type="application/json",
        headers={"ETag": f'"{document["_rev"]}"', **headers},
    )


# ----------------------------------------------------------------------- list queries
LIST_PARAMS = frozenset(
    {
        "skip",
        "limit",
        "strategy_name",
        "strategy_version",
        "orchestrator_type",
        "status",
        "created_after",
        "created_before",
        "stale",
        "sort",
    }
)
SORTABLE = frozenset({"timestamp", "updated_at", "strategy_name", "status"})


def _hyperparameter_filters(request: Request) -> dict[str, Any]:
    """Turn ``hp.<path>=<JSON scalar>`` parameters into equality filters."""
    query: dict[str, Any] = {}
    unknown = []
    for name, raw in request.query_params.multi_items():
        if name in LIST_PARAMS:
            continue
        if not name.startswith("hp."):
            unknown.append(name)
            continue
        path = name.removeprefix("hp.")
        parts = path.split(".")
        if not all(parts) or any(p.startswith("$") or "\x00" in p for p in parts):
            raise invalid_query(name, "not a valid hyperparameter path")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            raise invalid_query(
                name,
                f'must be a JSON scalar, such as 10, true or "text" (quoted); '
                f"got {raw!r}",
            ) from None
        if isinstance(value, dict | list) or (
            isinstance(value, float) and not math.isfinite(value)
        ):
            raise invalid_query(name, f"must be a JSON scalar; got {raw!r}")
        query[f"hyperparameters.{path}"] = value
    if unknown:
        allowed = ", ".join(sorted(LIST_PARAMS))
        errors = [
            {
                "loc": ("query", name),
                "msg": f"unknown parameter; allowed: {allowed}, and hp.<path>",
                "type": "extra_forbidden",
            }
            for name in unknown
        ]
        raise RequestValidationError(errors)
    return query


def _parse_sort(specs: list[str]) -> list[tuple[str, int]]:
    keys: list[tuple[str, int]] = []
    for spec in specs:
        for item in filter(None, (s.strip() for s in spec.split(","))):
            name = item.lstrip("-+")
            direction = pymongo.DESCENDING if item.startswith("-") else 1
            metric = name.removeprefix("metrics.")
            valid_metric = name.startswith("metrics.") and metric and "." not in metric
            if name not in SORTABLE and not valid_metric:
                raise invalid_query(
                    "sort",
                    f"cannot sort by {name!r}; use one of "
                    f"{', '.join(sorted(SORTABLE))} or metrics.<name>, "
                    "each optionally prefixed with '-'",
                )
            keys.append((name, direction))
    # Every order ends in the default one and then the id, so pages never overlap.
    for key in [("timestamp", pymongo.DESCENDING), ("_id", pymongo.ASCENDING)]:
        if key[0] not in dict(keys):
            keys.append(key)
    return keys


class ListQuery(BaseModel):
    filter: dict[str, Any]
    sort: list[tuple[str, int]]


async def list_query(
    request: Request,
    settings: SettingsDep,
    strategy_name: str | None = None,
    strategy_version: str | None = None,
    orchestrator_type: str | None = None,
    status: Annotated[list[RunStatus] | None, Query()] = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    stale: Annotated[
        bool | None, Query(description="Only RUNNING runs without a recent heartbeat")
    ] = None,
    sort: Annotated[
        list[str] | None,
        Query(
            description="timestamp, updated_at, strategy_name, status or "
            "metrics.<name>; prefix '-' for descending. Default -timestamp."
        ),
    ] = None,
) -> ListQuery:
    query = _hyperparameter_filters(request)
    for name, value in (
        ("strategy_name", strategy_name),
        ("strategy_version", strategy_version),
        ("orchestrator_type", orchestrator_type),
    ):
        if value is not None:
            query[name] = value
    if status:
        query["status"] = {"$in": [s.value for s in status]}
    created: dict[str, Any] = {}
    if created_after is not None:
        created["$gt"] = as_utc(created_after)
    if created_before is not None:
        created["$lt"] = as_utc(created_before)
    if created:
        query["timestamp"] = created
    if stale is not None:
        cutoff = utc_now() - timedelta(seconds=settings.stale_after_seconds)
        running = RunStatus.RUNNING.value
        stale_filter = {"status": running, "heartbeat_at": {"$lt": cutoff}}
        fresh_filter = {
            "$or": [{"status": {"$ne": running}}, {"heartbeat_at": {"$gte": cutoff}}]
        }
        query = {"$and": [query, stale_filter if stale else fresh_filter]}
    return ListQuery(filter=query, sort=_parse_sort(sort or []))


# ------------------------------------------------------------------------------- app
@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    _show_info_logs()
    if settings.mongodb_url:
        store = RunStore.open_mongodb(
            settings.mongodb_url,
            settings.database,
            settings.db_timeout_ms,
            id_in_indexes=settings.index_id_tiebreak,
        )
        logger.info("Storing runs in MongoDB database %r", settings.database)
    else:
        store = EmbeddedRunStore.open(settings.data_dir, settings.database)
        logger.info(
            "Storing runs in the embedded store at %s (one process only); set "
            "STRATEGY_MANAGER_MONGODB_URL=mongodb://... to use MongoDB instead",
            settings.data_dir.resolve(),
        )
    await store.start()
    app.state.store = store
    # Indexes are in place before the first request when the database answers;
    # otherwise the service starts anyway and a task keeps trying.
    indexing = asyncio.create_task(_ensure_indexes(store))
    await asyncio.wait([indexing], timeout=settings.db_timeout_ms / 1000 * 3)
    try:
        yield
    finally:
        indexing.cancel()
        await store.close()


def _show_info_logs() -> None:
    """Print this package's log lines beside uvicorn's, at uvicorn's level.

    Does nothing when the application has configured logging itself.
    """
    package = logging.getLogger("backtest_data_module")
    if package.handlers or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
    package.addHandler(handler)
    # `uvicorn --log-level warning` silences the per-run INFO lines too.
    package.setLevel(logging.getLogger("uvicorn.error").getEffectiveLevel())


async def _ensure_indexes(store: RunStore) -> None:
    """Create indexes, retrying in the background while the database is down."""
    delay = 1.0
    while True:
        try:
            await store.ensure_indexes()
        except pymongo.errors.ConnectionFailure as exc:
            logger.warning("Could not create indexes yet (%s); retrying", exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)
        else:
            logger.debug("Indexes are in place")
            return


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the service; ``settings`` default to the environment."""
    app = FastAPI(
        title="Strategy Manager",
        version="1.0.0",
        summary="A record of every backtest run, searchable.",
        lifespan=lifespan,
        generate_unique_id_function=lambda route: route.name,
    )
    app.state.settings = settings or load_settings()
    app.add_middleware(BodySizeLimit)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(pymongo.errors.ConnectionFailure, _database_down)
    app.add_exception_handler(Exception, _unexpected)
    app.include_router(health_router)
    app.include_router(runs_router)
    app.openapi = lambda: _openapi_with_problem_media_type(app)  # type: ignore[method-assign]
    return app


def _openapi_with_problem_media_type(app: FastAPI) -> dict[str, Any]:
    """FastAPI files error models under application/json; ours are problem+json."""
    if app.openapi_schema is None:
        spec = get_openapi(
            title=app.title,
            version=app.version,
            summary=app.summary,
            routes=app.routes,
        )
        for operation in (
            op for path in spec["paths"].values() for op in path.values()
        ):
            for response in operation["responses"].values():
                content = response.get("content", {})
                if PROBLEM_MEDIA_TYPE in content and "application/json" in content:
                    content[PROBLEM_MEDIA_TYPE] = content.pop("application/json")
        app.openapi_schema = spec
    return app.openapi_schema


# ---------------------------------------------------------------------------- routes
health_router = APIRouter(tags=["health"])


@health_router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """The process is up; no auth, no database."""
    return Health()


@health_router.get("/readyz", response_model=Health, responses=_problem_responses(503))
async def readyz(store: StoreDep) -> Health:
    """The database answers a ping."""
    await store.ping()
    return Health()


runs_router = APIRouter(
    prefix="/runs",
    tags=["runs"],
    dependencies=[Depends(require_api_key)],
    responses=_problem_responses(401, 413, 422, 503),
)


@runs_router.post(
    "",
    status_code=201,
    response_model=Run,
    responses={
        200: {"model": Run, "description": "A retried create; the stored run."},
        201: {
            "description": "Created.",
            "headers": {
                **ETAG_HEADER,
                "Location": {
                    "description": "The run's URL.",
                    "schema": {"type": "string"},
                },
            },
        },
        **_problem_responses(400, 409),
    },
)
async def create_run(
    body: RunCreate, store: StoreDep, settings: SettingsDep
) -> Response:
    """Register a run. Retrying with the same `run_id` and content is safe."""
    document = new_document(body, utc_now())
    if await store.insert(document):
        logger.info(
            "Run %s stored (%s %s, %s)",
            document["_id"],
            body.strategy_name,
            body.strategy_version,
            body.orchestrator_type,
        )
        location = f"/runs/{document['_id']}"
        return run_response(document, settings, 201, Location=location)

    existing = await store.get(document["_id"])
    if existing is None or not same_content(existing, body):
        raise conflict(
            f"Run {document['_id']} exists with different content; "
            "choose another run_id."
        )
    return run_response(existing, settings)


@runs_router.get(
    "",
    response_model=list[Run],
    responses={
        200: {
            "headers": {
                "X-Total-Count": {
                    "description": "Runs matching the filter, over all pages.",
                    "schema": {"type": "integer"},
                }
            }
        }
    },
)
async def list_runs(
    store: StoreDep,
    settings: SettingsDep,
    listing: Annotated[ListQuery, Depends(list_query)],
    skip: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = 100,
) -> Response:
    """List runs, newest first unless `sort` says otherwise.

    Filter on hyperparameters with `hp.<path>=<JSON scalar>`, e.g. `hp.fast=10`.
    """
    documents, total = await store.page(listing.filter, listing.sort, skip, limit)
    stale_before = utc_now() - timedelta(seconds=settings.stale_after_seconds)
    runs = [to_run(d, stale_before) for d in documents]
    return Response(
        RUN_LIST.dump_json(runs),
        media_type="application/json",
        headers={"X-Total-Count": str(total)},
    )


@runs_router.get(
    "/{run_id}",
    response_model=Run,
    responses={200: {"headers": ETAG_HEADER}, **_problem_responses(404)},
)
async def get_run(
    run_id: RunIdPath, store: StoreDep, settings: SettingsDep
) -> Response:
    """One run."""
    document = await store.get(str(run_id))
    if document is None:
        raise not_found(run_id)
    return run_response(document, settings)


@runs_router.put(
    "/{run_id}",
    response_model=Run,
    responses={
        200: {"headers": ETAG_HEADER},
        **_problem_responses(400, 404, 409, 412),
    },
)
async def update_run(
    run_id: RunIdPath,
    body: RunUpdate,
    store: StoreDep,
    settings: SettingsDep,
    if_match: Annotated[
        str | None,
        Header(description="An ETag from an earlier response; 412 if it changed."),
    ] = None,
) -> Response:
    """Change status, metrics_uri, error_message or metrics; only the fields sent."""
    expected_rev = _parse_if_match(if_match)
    first_seen = None
    for _attempt in range(5):
        current = await store.get(str(run_id))
        if current is None:
            raise not_found(run_id)
        first_seen = first_seen or current["status"]
        if expected_rev is not None and current["_rev"] != expected_rev:
            raise HTTPException(412, "The run changed since that ETag; fetch it again.")

        pinned, changes = plan_update(current, body, utc_now(), first_seen=first_seen)
        query = {"_id": str(run_id), "_rev": current["_rev"], **pinned}
        updated = await store.update(query, changes)
        if updated is not None:
            if "status" in changes:
                logger.info("Run %s is now %s", run_id, changes["status"])
            return run_response(updated, settings)
    raise conflict("The run kept changing under this update; retry.")


def _parse_if_match(header: str | None) -> str | None:
    if header is None or header.strip() == "*":
        return None
    return header.strip().removeprefix("W/").strip('"')


@runs_router.post(
    "/{run_id}/heartbeat",
    response_model=Run,
    responses={200: {"headers": ETAG_HEADER}, **_problem_responses(404, 409)},
)
async def heartbeat_run(
    run_id: RunIdPath, store: StoreDep, settings: SettingsDep
) -> Response:
    """Tell the service a RUNNING run is still alive."""
    now = utc_now()
    running = RunStatus.RUNNING.value
    updated = await store.update(
        {"_id": str(run_id), "status": running},
        {"heartbeat_at": now, "updated_at": now, "_rev": uuid.uuid4().hex},
    )
    if updated is not None:
        return run_response(updated, settings)
    current = await store.get(str(run_id))
    if current is None:
        raise not_found(run_id)
    raise conflict(
        f"Only a RUNNING run takes heartbeats; this one is {current['status']}."
    )


@runs_router.delete("/{run_id}", status_code=204, responses=_problem_responses(404))
async def delete_run(run_id: RunIdPath, store: StoreDep) -> Response:
    """Delete a run for good."""
    if not await store.delete(str(run_id)):
        raise not_found(run_id)
    logger.info("Run %s deleted", run_id)
    return Response(status_code=204)


def __getattr__(name: str) -> Any:
    # `app` is built on first access, so importing this module reads no settings;
    # uvicorn's "main:app" reaches here, and a missing key ends start-up in one line.
    if name == "app":
        application = create_app()
        globals()["app"] = application
        return application
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
