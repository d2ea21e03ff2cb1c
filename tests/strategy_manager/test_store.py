"""The embedded store answers reads from memory exactly as the SQLite copy says."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from backtest_data_module.strategy_manager.store import (
    NEWEST_FIRST,
    EmbeddedRunStore,
    RunStore,
)

START = datetime(2026, 1, 1, tzinfo=UTC)
NAMES = ["sma", "mr", "breakout"]
STATUSES = ["PENDING", "RUNNING", "COMPLETED"]


def run(i: int, rng: random.Random) -> dict:
    created = START + timedelta(milliseconds=rng.randrange(50))  # many ties
    document = {
        "_id": f"{rng.getrandbits(64):016x}-{i}",
        "_rev": "r",
        "timestamp": created,
        "updated_at": created,
        "strategy_name": rng.choice(NAMES),
        "strategy_version": "1",
        "orchestrator_type": rng.choice(["walk_forward", "cpcv"]),
        "status": rng.choice(STATUSES),
        "hyperparameters": {"fast": rng.randrange(3)},
        "metrics": {},
    }
    if rng.random() < 0.5:
        document["metrics"] = {"sharpe": round(rng.uniform(-1, 2), 2)}
    return document


def expected_page(
    runs: dict[str, dict], keep, order, skip: int, limit: int
) -> tuple[list[str], int]:
    matching = order([d for d in runs.values() if keep(d)])
    return [d["_id"] for d in matching[skip : skip + limit]], len(matching)


def newest(d: dict) -> tuple:
    return (-d["timestamp"].timestamp(), d["_id"])


def best_sharpe(d: dict) -> tuple:
    sharpe = d["metrics"].get("sharpe")
    return (sharpe is None, -(sharpe or 0), *newest(d))


QUERIES = [
    ({}, lambda d: True),
    ({"strategy_name": "sma"}, lambda d: d["strategy_name"] == "sma"),
    (
        {"strategy_name": "mr", "status": {"$in": ["RUNNING", "COMPLETED"]}},
        lambda d: d["strategy_name"] == "mr" and d["status"] != "PENDING",
    ),
    ({"hyperparameters.fast": 1}, lambda d: d["hyperparameters"]["fast"] == 1),
    (
        {"$and": [{"status": "COMPLETED"}, {"orchestrator_type": "cpcv"}]},
        lambda d: d["status"] == "COMPLETED" and d["orchestrator_type"] == "cpcv",
    ),
]


def by(key, reverse=False):
    return lambda documents: sorted(documents, key=key, reverse=reverse)


def by_name_descending(documents):
    # Stable sorts: newest first within each name, names from z to a.
    return sorted(by(newest)(documents), key=lambda d: d["strategy_name"], reverse=True)


SORTS = [
    (NEWEST_FIRST, by(newest)),
    ([("metrics.sharpe", -1), *NEWEST_FIRST], by(best_sharpe)),
    ([("timestamp", 1), ("_id", 1)], by(lambda d: (d["timestamp"], d["_id"]))),
    ([("strategy_name", -1), *NEWEST_FIRST], by_name_descending),
]


@pytest.fixture
async def filled(tmp_path: Path):
    """A store after 300 creates, 40 deletes and 60 status changes, and a copy."""
    rng = random.Random(11)
    store = EmbeddedRunStore.open(tmp_path, "db")
    await store.start()
    runs = {}
    for i in range(300):
        document = run(i, rng)
        assert await store.insert(dict(document))
        runs[document["_id"]] = document
    for run_id in rng.sample(sorted(runs), 40):
        assert await store.delete(run_id)
        del runs[run_id]
    for run_id in rng.sample(sorted(runs), 60):
        status = rng.choice(STATUSES)
        assert await store.update({"_id": run_id}, {"status": status})
        runs[run_id]["status"] = status
    yield store, runs
    await store.close()


@pytest.mark.parametrize(("query", "keep"), QUERIES)
@pytest.mark.parametrize(("sort", "order"), SORTS)
@pytest.mark.parametrize(("skip", "limit"), [(0, 3), (0, 10), (35, 20), (250, 100)])
async def test_pages_match_a_plain_sort_of_every_run(
    filled, query, keep, sort, order, skip, limit
):
    store, runs = filled

    documents, total = await store.page(query, sort, skip, limit)

    assert ([d["_id"] for d in documents], total) == expected_page(
        runs, keep, order, skip, limit
    )


async def test_restart_reads_the_same_runs_in_the_same_order(tmp_path):
    rng = random.Random(5)
    store = EmbeddedRunStore.open(tmp_path, "db")
    await store.start()
    for i in range(100):
        await store.insert(run(i, rng))
    before = await store.page({}, NEWEST_FIRST, 0, 1000)
    await store.close()

    reopened = EmbeddedRunStore.open(tmp_path, "db")
    await reopened.start()
    after = await reopened.page({}, NEWEST_FIRST, 0, 1000)
    await reopened.close()

    assert [d["_id"] for d in after[0]] == [d["_id"] for d in before[0]]
    assert after[1] == before[1] == 100


class RecordingCollection:
    """Stands in for a MongoDB collection and remembers the indexes asked for."""

    def __init__(self) -> None:
        self.indexes: list[list[tuple[str, int]]] = []

    async def create_index(self, keys: list[tuple[str, int]]) -> str:
        self.indexes.append(keys)
        return "name"


async def test_mongodb_indexes_end_in_the_default_order_and_the_id():
    collection = RecordingCollection()

    await RunStore(collection, _noop).ensure_indexes()

    newest = [("timestamp", -1), ("_id", 1)]
    assert collection.indexes == [
        newest,
        [("strategy_name", 1), *newest],
        [("strategy_version", 1), *newest],
        [("orchestrator_type", 1), *newest],
        [("status", 1), *newest],
        [("status", 1), ("heartbeat_at", 1)],
        [("updated_at", -1)],
        [("hyperparameters.$**", 1)],
    ]


async def _noop() -> None:
    return None
