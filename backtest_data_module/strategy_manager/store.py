"""Where runs are kept: MongoDB through PyMongo's async client, or the embedded store.

``RunStore`` is the handful of collection operations the service uses, written
against the subset PyMongo's async API and mongomock-motor share; where the two
differ (closing, counting a page), the difference is handled here and nowhere else.
``EmbeddedRunStore`` is the default when no MongoDB URL is set: litemongo's SQLite
files driven through mongomock-motor, with reads answered from memory.
"""

from __future__ import annotations

import bisect
import fcntl
import heapq
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import litemongo
import pymongo
import pymongo.errors
from mongomock_motor import AsyncMongoMockClient

logger = logging.getLogger(__name__)

COLLECTION = "runs"
# The datetime fields of a run; SQLite hands them back naive, in UTC.
TIMES = ("timestamp", "updated_at", "started_at", "finished_at", "heartbeat_at")


class _LiteMongoClient(litemongo.MongoClient):
    """litemongo's client with a writable ``options``.

    mongomock-motor assigns ``client.options`` when it wraps a client, and litemongo
    exposes that attribute as a read-only property.
    """

    @property
    def options(self) -> Any:
        return self._motor_options

    @options.setter
    def options(self, value: Any) -> None:
        self._motor_options = value


class StoreBusy(RuntimeError):
    """Another process holds the embedded store's data directory."""


class RunStore:
    """The ``runs`` collection behind the few operations the service needs.

    It works on PyMongo's async collection and on mongomock-motor's, and keeps the
    places where the two differ (closing, ping) inside this class.
    """

    def __init__(
        self,
        collection: Any,
        close: Callable[[], Awaitable[None]],
        *,
        id_in_indexes: bool = True,
    ) -> None:
        self.collection = collection
        self._close = close
        self.id_in_indexes = id_in_indexes

    @classmethod
    def open_mongodb(
        cls, url: str, database: str, timeout_ms: int, *, id_in_indexes: bool = True
    ) -> RunStore:
        """Connect lazily with PyMongo's async client; nothing is sent yet.

        ``id_in_indexes=False`` leaves the id tie-break out of the index keys, for
        servers that refuse writes once an index names ``_id`` (nx-27017 0.8.1).
        """
        client: pymongo.AsyncMongoClient[dict[str, Any]] = pymongo.AsyncMongoClient(
            url,
            tz_aware=True,
            serverSelectionTimeoutMS=timeout_ms,
            connectTimeoutMS=timeout_ms,
        )
        collection = client[database][COLLECTION]
        return cls(collection, client.close, id_in_indexes=id_in_indexes)

    async def start(self) -> None:
        """Get ready to serve; the embedded store reads its runs into memory here."""

    async def close(self) -> None:
        await self._close()

    async def ping(self) -> None:
        await self.collection.database.command("ping")

    async def ensure_indexes(self) -> None:
        # One index per filter the list route offers, each ending in the default
        # order (newest first, then the id) so that a filtered first page reads no
        # more than it returns.
        newest = [("timestamp", pymongo.DESCENDING)]
        if self.id_in_indexes:
            newest.append(("_id", pymongo.ASCENDING))
        for keys in (
            newest,
            [("strategy_name", 1), *newest],
            [("strategy_version", 1), *newest],
            [("orchestrator_type", 1), *newest],
            [("status", 1), *newest],
            [("status", 1), ("heartbeat_at", 1)],
            [("updated_at", pymongo.DESCENDING)],
        ):
            await self.collection.create_index(keys)
        try:
            await self.collection.create_index([("hyperparameters.$**", 1)])
        except (pymongo.errors.OperationFailure, NotImplementedError) as exc:
            logger.debug("No wildcard index on hyperparameters here: %s", exc)

    async def insert(self, document: dict[str, Any]) -> bool:
        """Insert; False when a run with that ``_id`` exists already."""
        try:
            await self.collection.insert_one(document)
        except pymongo.errors.DuplicateKeyError:
            return False
        return True

    async def get(self, run_id: str) -> dict[str, Any] | None:
        return await self.collection.find_one({"_id": run_id})

    async def count(self, query: dict[str, Any]) -> int:
        return await self.collection.count_documents(query)

    async def find(
        self, query: dict[str, Any], sort: list[tuple[str, int]], skip: int, limit: int
    ) -> list[dict[str, Any]]:
        if limit <= 0:
            return []
        cursor = self.collection.find(query).sort(sort).skip(skip).limit(limit)
        return await cursor.to_list(None)

    async def page(
        self, query: dict[str, Any], sort: list[tuple[str, int]], skip: int, limit: int
    ) -> tuple[list[dict[str, Any]], int]:
        """One page in ``sort`` order and the number of matches over all pages.

        Runs lacking the metric that ``sort`` starts with come last either way.
        """
        total = await self.count(query)
        first = sort[0][0]
        if not first.startswith("metrics."):
            return await self.find(query, sort, skip, limit), total

        # MongoDB puts missing values first in ascending order; split the set in
        # two so that runs without the metric follow the others in both directions.
        # Limitation: only the leading sort key gets this; a metric later in the
        # sort orders missing values as MongoDB does (first when ascending).
        has = {"$and": [query, {first: {"$exists": True}}]}
        lacks = {"$and": [query, {first: {"$exists": False}}]}
        with_metric = await self.count(has)
        found = await self.find(has, sort, skip, limit)
        rest_skip = max(0, skip - with_metric)
        found += await self.find(lacks, sort[1:], rest_skip, limit - len(found))
        return found, total

    async def update(
        self, query: dict[str, Any], changes: dict[str, Any]
    ) -> dict[str, Any] | None:
        """Apply ``$set`` atomically to the one run ``query`` matches, if any."""
        return await self.collection.find_one_and_update(
            query, {"$set": changes}, return_document=pymongo.ReturnDocument.AFTER
        )

    async def delete(self, run_id: str) -> bool:
        result = await self.collection.delete_one({"_id": run_id})
        return result.deleted_count == 1


class EmbeddedRunStore(RunStore):
    """The embedded store, with every run also held in memory for reads.

    litemongo decodes each document from SQLite on every query, and mongomock
    filters and sorts in Python after decoding all candidates: listing a page of
    100,000 runs took seconds. One process owns the store (``_lock_directory``),
    so a copy in memory, updated after each write has been committed to SQLite,
    is exact. Reads use it. A new run is written as one SQLite row; updates and
    deletes go through mongomock, whose filter makes each of them atomic.
    """

    INDEXED = ("strategy_name", "strategy_version", "orchestrator_type", "status")

    def __init__(
        self,
        collection: Any,
        close: Callable[[], Awaitable[None]],
        rows: Any,
    ) -> None:
        super().__init__(collection, close)
        self._rows = rows
        self._runs: dict[str, dict[str, Any]] = {}
        self._ids_by: dict[str, dict[Any, set[str]]] = {f: {} for f in self.INDEXED}
        # (-created seconds, run id) for every run, kept sorted: the default order.
        self._newest: list[tuple[float, str]] = []

    @classmethod
    def open(cls, data_dir: Path, database: str) -> EmbeddedRunStore:
        """Open the SQLite-backed store; call on the event loop's thread only."""
        data_dir.mkdir(parents=True, exist_ok=True)
        lock = _lock_directory(data_dir)
        client = _LiteMongoClient(str(data_dir.resolve()))
        collection: Any = AsyncMongoMockClient(mock_mongo_client=client)[database][
            COLLECTION
        ]

        async def close() -> None:
            client.close()
            lock.close()

        # litemongo's table of documents, under mongomock's query machinery. Reading
        # it directly skips copies that made start-up with 100k runs take minutes.
        rows = client[database][COLLECTION]._store
        return cls(collection, close, rows)

    async def ensure_indexes(self) -> None:
        """Nothing to do: reads use the in-memory indexes, and mongomock keys its
        own by ``_id`` anyway; MongoDB's indexes here would only slow every write."""

    async def start(self) -> None:
        started = time.perf_counter()
        for document in self._rows.documents:
            self._remember(document, ordered=False)
        self._newest = sorted(_newest_key(d) for d in self._runs.values())
        logger.info(
            "Loaded %d runs from the embedded store in %.1f s",
            len(self._runs),
            time.perf_counter() - started,
        )

    # Limitation: every run is held in memory (about 1-2 KB each), so the embedded
    # store suits up to a few hundred thousand runs; use MongoDB beyond that.
    def _remember(self, document: dict[str, Any], *, ordered: bool = True) -> None:
        run_id = document["_id"]
        known = self._forget(run_id, keep_order=True)
        for name in TIMES:
            document[name] = as_utc(document.get(name))
        self._runs[run_id] = document
        for field in self.INDEXED:
            self._ids_by[field].setdefault(document[field], set()).add(run_id)
        if ordered and not known:  # a run's creation time never changes
            bisect.insort(self._newest, _newest_key(document))

    def _forget(self, run_id: str, *, keep_order: bool = False) -> bool:
        document = self._runs.pop(run_id, None)
        if document is None:
            return False
        for field in self.INDEXED:
            self._ids_by[field][document[field]].discard(run_id)
        if not keep_order:
            key = _newest_key(document)
            del self._newest[bisect.bisect_left(self._newest, key)]
        return True

    async def insert(self, document: dict[str, Any]) -> bool:
        run_id = document["_id"]
        if run_id in self._runs:
            return False
        # One committed SQLite row. mongomock's insert_one would add only checks
        # that the service's validation already made, at a third of a create's cost.
        self._rows[run_id] = document
        self._remember(dict(document))
        return True

    async def update(
        self, query: dict[str, Any], changes: dict[str, Any]
    ) -> dict[str, Any] | None:
        updated = await super().update(query, changes)
        if updated is not None:
            self._remember(updated)
        return updated

    async def delete(self, run_id: str) -> bool:
        deleted = await super().delete(run_id)
        self._forget(run_id)
        return deleted

    async def get(self, run_id: str) -> dict[str, Any] | None:
        return self._runs.get(run_id)

    async def page(
        self, query: dict[str, Any], sort: list[tuple[str, int]], skip: int, limit: int
    ) -> tuple[list[dict[str, Any]], int]:
        if sort == NEWEST_FIRST:
            newest = self._newest_page(query, skip, limit)
            if newest is not None:
                return newest
        found = list(self._matching(query))
        total, wanted = len(found), skip + limit
        if wanted * 8 < total:
            found = _leaders(found, sort, wanted)
        return sorted(found, key=_order_key(sort))[skip:wanted], total

    def _newest_page(
        self, query: dict[str, Any], skip: int, limit: int
    ) -> tuple[list[dict[str, Any]], int] | None:
        """A page in the default order, walking the kept order instead of sorting.

        None when an indexed filter leaves so few candidates that sorting them is
        cheaper than the walk.
        """
        runs = self._runs
        if not query:
            page = [runs[run_id] for _, run_id in self._newest[skip : skip + limit]]
            return page, len(runs)
        candidates = self._narrow(query)
        if candidates is not None and len(candidates) * 4 < len(runs):
            return None
        allowed = set(candidates) if candidates is not None else None
        matches = _compile(query)
        page, total = [], 0
        for _, run_id in self._newest:
            if allowed is not None and run_id not in allowed:
                continue
            document = runs[run_id]
            if matches(document):
                if skip <= total < skip + limit:
                    page.append(document)
                total += 1
        return page, total

    def _matching(self, query: dict[str, Any]) -> Iterator[dict[str, Any]]:
        candidates = self._narrow(query)
        runs = self._runs
        if candidates is not None and self._indexes_answer(query):
            return (runs[run_id] for run_id in candidates)
        documents = runs.values() if candidates is None else map(runs.get, candidates)
        matches = _compile(query)
        return (d for d in documents if d is not None and matches(d))

    def _indexes_answer(self, query: dict[str, Any]) -> bool:
        """True when ``query`` is only equalities on indexed fields (and $and)."""
        for part in _conjuncts(query):
            for key, condition in part.items():
                if key == "$and":
                    continue
                if key not in self.INDEXED:
                    return False
                if isinstance(condition, dict) and set(condition) != {"$in"}:
                    return False
        return True

    def _narrow(self, query: dict[str, Any]) -> set[str] | None:
        """The ids every indexed equality in ``query`` allows; None if it has none."""
        allowed: list[set[str]] = []
        for part in _conjuncts(query):
            for field in self.INDEXED:
                wanted = part.get(field)
                if isinstance(wanted, dict):
                    if set(wanted) != {"$in"}:
                        continue
                    values = wanted["$in"]
                elif wanted is None:
                    continue
                else:
                    values = [wanted]
                ids = [self._ids_by[field].get(value, set()) for value in values]
                allowed.append(ids[0] if len(ids) == 1 else set().union(*ids))
        if not allowed:
            return None
        allowed.sort(key=len)
        # Intersecting from the smallest set costs at most its size per step.
        return allowed[0].intersection(*allowed[1:]) if len(allowed) > 1 else allowed[0]


NEWEST_FIRST = [("timestamp", pymongo.DESCENDING), ("_id", pymongo.ASCENDING)]


def _newest_key(document: dict[str, Any]) -> tuple[float, str]:
    return (-document["timestamp"].timestamp(), document["_id"])


def _conjuncts(query: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """``query`` and every part of its ``$and``, however deeply nested."""
    yield query
    for part in query.get("$and", []):
        yield from _conjuncts(part)


def as_utc(moment: datetime | None) -> datetime | None:
    """``moment`` in UTC; a naive time is taken to be UTC already, as stored."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


_MISSING = object()


def _getter(path: str) -> Callable[[dict[str, Any]], Any]:
    """Read a dotted path; ``_MISSING`` where the document has no such field."""
    parts = path.split(".")
    if len(parts) == 2:  # metrics.<name>, the usual sort key: worth a shortcut
        outer, inner = parts

        def get_nested(document: dict[str, Any]) -> Any:
            value = document.get(outer)
            return value.get(inner, _MISSING) if isinstance(value, dict) else _MISSING

        return get_nested

    def get(document: dict[str, Any]) -> Any:
        value: Any = document
        for part in parts:
            if not isinstance(value, dict):
                return _MISSING
            value = value.get(part, _MISSING)
        return value

    return get


def _same(stored: Any, wanted: Any) -> bool:
    """MongoDB equality: numbers compare by value, but a bool is never a number."""
    if isinstance(stored, bool) or isinstance(wanted, bool):
        return type(stored) is type(wanted) and stored == wanted
    return bool(stored == wanted)


Predicate = Callable[[dict[str, Any]], bool]


def _compile(query: dict[str, Any]) -> Predicate:
    """A predicate for the filters this module builds: equality, $in, ranges,
    $exists, $ne, $and and $or. Compiled once per request, run once per run."""
    tests = [_compile_condition(key, condition) for key, condition in query.items()]
    return lambda document: all(test(document) for test in tests)


def _compile_condition(key: str, condition: Any) -> Predicate:
    if key in ("$and", "$or"):
        parts = [_compile(part) for part in condition]
        combine = all if key == "$and" else any
        return lambda document: combine(part(document) for part in parts)

    get = _getter(key)
    if isinstance(condition, dict):
        operations = list(condition.items())
        return lambda document: all(
            _test(get(document), op, argument) for op, argument in operations
        )

    def equals(document: dict[str, Any]) -> bool:
        value = get(document)
        if isinstance(value, list) and not isinstance(condition, list):
            # As in MongoDB, a scalar matches an array that holds it.
            return any(_same(item, condition) for item in value)
        return _same(None if value is _MISSING else value, condition)

    return equals


def _test(value: Any, operator: str, argument: Any) -> bool:
    if operator == "$exists":
        return (value is not _MISSING) == bool(argument)
    if operator == "$in":
        return any(_same(value, item) for item in argument)
    if operator == "$ne":
        return not _same(value, argument)
    if value is _MISSING or value is None:
        return False
    comparisons = {
        "$gt": value.__gt__,
        "$gte": value.__ge__,
        "$lt": value.__lt__,
        "$lte": value.__le__,
    }
    return comparisons[operator](argument) is True


def _leaders(
    documents: list[dict[str, Any]], sort: list[tuple[str, int]], wanted: int
) -> list[dict[str, Any]]:
    """The documents that can be among the first ``wanted`` in ``sort`` order.

    Ranks on the leading key alone, which is cheap, and keeps everything that ties
    with the last place; the full multi-key sort then orders only these.
    """
    path, direction = sort[0]
    if not (path.startswith("metrics.") or path in ("timestamp", "updated_at")):
        return heapq.nsmallest(wanted, documents, key=_order_key(sort))
    get = _getter(path)

    def rank(document: dict[str, Any]) -> float:
        value = get(document)
        if value is _MISSING or value is None:
            return math.inf  # a run without the metric comes last either way
        if isinstance(value, datetime):
            value = value.timestamp()
        return -value if direction < 0 else value

    ranks = [rank(document) for document in documents]
    cutoff = heapq.nsmallest(wanted, ranks)[-1]
    return [d for d, r in zip(documents, ranks, strict=True) if r <= cutoff]


class _Descending:
    """Wraps a value that cannot be negated so that it sorts in reverse."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __lt__(self, other: _Descending) -> bool:
        return bool(other.value < self.value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Descending) and self.value == other.value


def _order_key(
    sort: list[tuple[str, int]],
) -> Callable[[dict[str, Any]], tuple[Any, ...]]:
    """One sort key for the whole ``sort`` spec, as MongoDB would order.

    Missing and null values sort lowest, except for a leading metric: runs without
    it come last in both directions, as ``RunStore.page`` promises.
    """
    getters = [(_getter(path), direction) for path, direction in sort]
    metric_first = sort[0][0].startswith("metrics.")

    def key(document: dict[str, Any]) -> tuple[Any, ...]:
        parts: list[Any] = []
        for position, (get, direction) in enumerate(getters):
            value = get(document)
            if value is None or value is _MISSING:
                last = (position == 0 and metric_first) or direction < 0
                parts.append(2 if last else 0)
                parts.append(0)
                continue
            if direction < 0:
                if isinstance(value, datetime):
                    value = -value.timestamp()
                elif isinstance(value, int | float):
                    value = -value
                else:
                    value = _Descending(value)
            parts.append(1)
            parts.append(value)
        return tuple(parts)

    return key


def _lock_directory(data_dir: Path) -> Any:
    lock = (data_dir / ".lock").open("w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise StoreBusy(
            f"The embedded store in {data_dir.resolve()} is in use by another "
            "process; it serves one process only. Set STRATEGY_MANAGER_MONGODB_URL "
            "to run several workers."
        ) from None
    return lock
