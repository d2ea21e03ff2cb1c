"""Tracking of runs on the strategy manager service that never blocks or breaks a run.

Calls go out as background asyncio tasks, in order per run, through the retrying
client. A call that still fails for lack of a server is appended to an outbox file,
``<metrics_dir>/outbox.jsonl``, one JSON record per line, together with every later
call of the same run (to keep their order). The next tracking session opened on the
same metrics_dir delivers the outbox before its own calls.

Replaying is safe: a run is created with the run_id the orchestrator chose, so a
repeated create returns the stored run, and a status move refused with 409 (the run
is already final) counts as delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
import uuid
import warnings
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Self

import fsspec
from fsspec.implementations.local import LocalFileSystem

from backtest_data_module.strategy_manager.client import (
    ApiError,
    Conflict,
    ServiceUnavailable,
    StrategyManagerClient,
    Unauthorized,
)

__all__ = [
    "Outbox",
    "RunTracker",
    "TrackingCall",
    "TrackingReport",
    "TrackingSession",
    "TrackingWarning",
]

logger = logging.getLogger(__name__)

OUTBOX_NAME = "outbox.jsonl"
CLAIMED_PREFIX = "outbox.draining-"
STALE_CLAIM_SECONDS = 600
# Seconds a finished run still gives its tracking calls while the service is down.
UNREACHABLE_GRACE = 1.0

CallKind = Literal["create", "update", "heartbeat"]


class TrackingWarning(UserWarning):
    """Tracking calls could not reach the server and were saved to the outbox."""


@dataclass(frozen=True)
class TrackingCall:
    """One call to the service, as queued and as stored in the outbox."""

    run_id: str
    call: CallKind
    payload: dict[str, Any] = field(default_factory=dict)
    # Position among the run's calls; replay sorts by it, whatever the file order.
    seq: int = 0

    def to_json(self) -> str:
        record = {
            "run_id": self.run_id,
            "call": self.call,
            "payload": self.payload,
            "seq": self.seq,
            "saved_at": datetime.now(UTC).isoformat(),
        }
        return json.dumps(record, allow_nan=False, separators=(",", ":"))

    @classmethod
    def from_json(cls, line: str) -> Self:
        record = json.loads(line)
        return cls(
            record["run_id"],
            record["call"],
            dict(record["payload"]),
            int(record.get("seq", 0)),
        )


@dataclass
class TrackingReport:
    """What happened to one run's tracking calls."""

    delivered: int = 0
    saved: int = 0
    dropped: int = 0
    outbox: str | None = None
    # Seconds the finished run waited for its last calls (what tracking cost it).
    wait_s: float = 0.0


async def deliver(client: StrategyManagerClient, call: TrackingCall) -> None:
    """Send one call; 409 (already created / already final) counts as delivered.

    Raises ServiceUnavailable or Unauthorized, which are worth replaying later, and
    the other ApiErrors, which are not.
    """
    try:
        if call.call == "create":
            await client.create_run(run_id=call.run_id, **call.payload)
        elif call.call == "update":
            await client.update_run(call.run_id, **call.payload)
        else:
            await client.heartbeat(call.run_id)
    except Conflict as exc:
        logger.debug(
            "run %s: %s answered 409 (%s); delivered already",
            call.run_id,
            call.call,
            exc.detail,
        )


def _worth_saving(exc: BaseException) -> bool:
    """True for failures a later replay can cure: no server, or a key being fixed."""
    return isinstance(exc, ServiceUnavailable | Unauthorized)


class Outbox:
    """Append-only JSON-lines file of undelivered calls in a (fsspec) directory."""

    def __init__(self, metrics_dir: str) -> None:
        self.fs, self.root = fsspec.core.url_to_fs(metrics_dir)
        self.path = f"{self.root}/{OUTBOX_NAME}"
        self.location = (
            self.path if self._is_local else self.fs.unstrip_protocol(self.path)
        )

    @property
    def _is_local(self) -> bool:
        return isinstance(self.fs, LocalFileSystem)

    def append(self, calls: list[TrackingCall]) -> None:
        """Append the calls with one write, flushed (and fsynced on local disks)."""
        if not calls:
            return
        data = "".join(call.to_json() + "\n" for call in calls).encode()
        self.fs.makedirs(self.root, exist_ok=True)
        if self._is_local:
            with open(self.path, "ab") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
        else:
            # Limitation: object stores cannot append, so this rewrites the file;
            # two processes appending at once to a remote outbox may lose a record.
            with self.fs.open(self.path, "ab") as file:
                file.write(data)

    def pending(self) -> list[TrackingCall]:
        """Calls in the outbox and in unfinished claims, oldest first (read only)."""
        return [call for path in self._files() for call in self._read(path)]

    def claim(self) -> list[str]:
        """Rename the outbox, and claims abandoned by a crashed session, to this one.

        A rename is atomic on a local disk, so two sessions starting together never
        both deliver the same records. Another session's claim is left alone until
        it is ``STALE_CLAIM_SECONDS`` old; a live session finishes far sooner.
        """
        now = time.time_ns()
        claimed = []
        for path in self._files():
            name = path.rsplit("/", 1)[-1]
            if name.startswith(CLAIMED_PREFIX):
                stamp = int(name[len(CLAIMED_PREFIX) :].split("-", 1)[0])
                if now - stamp < STALE_CLAIM_SECONDS * 1e9:
                    continue
            target = f"{self.root}/{CLAIMED_PREFIX}{now:020d}-{uuid.uuid4().hex}.jsonl"
            try:
                self._rename(path, target)
            except FileNotFoundError:
                continue  # another session claimed it first
            claimed.append(target)
        return claimed

    def read(self, claimed: list[str]) -> list[TrackingCall]:
        """The claimed calls grouped by run (runs in order of first appearance),
        each run's calls in the order they were made."""
        calls = [call for path in claimed for call in self._read(path)]
        first_seen: dict[str, int] = {}
        for position, call in enumerate(calls):
            first_seen.setdefault(call.run_id, position)
        return sorted(calls, key=lambda call: (first_seen[call.run_id], call.seq))

    def release(self, claimed: list[str]) -> None:
        """Delete claimed files once their calls are delivered or saved again."""
        for path in claimed:
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm(path)

    def _files(self) -> list[str]:
        if not self.fs.exists(self.root):
            return []
        leftovers = sorted(self.fs.glob(f"{self.root}/{CLAIMED_PREFIX}*.jsonl"))
        current = [self.path] if self.fs.exists(self.path) else []
        return [*leftovers, *current]

    def _rename(self, source: str, target: str) -> None:
        if self._is_local:
            os.replace(source, target)
        else:
            self.fs.mv(source, target)

    def _read(self, path: str) -> list[TrackingCall]:
        try:
            text = self.fs.cat_file(path).decode()
        except FileNotFoundError:
            return []
        calls = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                calls.append(TrackingCall.from_json(line))
            except (ValueError, KeyError, TypeError) as exc:
                # A torn last line from a crash mid-write; the rest is still good.
                logger.warning(
                    "skipping unreadable outbox line %s:%d: %s", path, number, exc
                )
        return calls


class TrackingSession:
    """Owns the client and the outbox for one or more runs sharing a metrics_dir.

    Open it with ``async with``; it starts delivering the outbox at once, and every
    :class:`RunTracker` from :meth:`track` waits for that before sending its own.
    """

    def __init__(
        self,
        api_url: str | None,
        metrics_dir: str,
        *,
        api_key: str | None = None,
        retry_for: float = 10.0,
        timeout: float = 10.0,
    ) -> None:
        self.outbox = Outbox(metrics_dir)
        self.client = (
            StrategyManagerClient(
                api_url, api_key, retry_for=retry_for, timeout=timeout
            )
            if api_url
            else None
        )
        self.unreachable = False
        self._drained: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        if self.client is not None:
            self._drained = asyncio.create_task(self._drain_outbox())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._drained is not None and not self._drained.done():
            self._drained.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._drained
        if self.client is not None:
            await self.client.aclose()

    def track(self, run_id: str) -> RunTracker:
        """Start the ordered background sender of one run's calls."""
        return RunTracker(self, run_id)

    async def wait_drained(self) -> None:
        if self._drained is not None:
            await asyncio.shield(self._drained)

    async def _drain_outbox(self) -> None:
        assert self.client is not None
        claimed = await asyncio.to_thread(self.outbox.claim)
        if not claimed:
            return
        calls = await asyncio.to_thread(self.outbox.read, claimed)
        started = time.perf_counter()
        delivered = position = 0
        try:
            for position, call in enumerate(calls):
                try:
                    await deliver(self.client, call)
                    delivered += 1
                except ApiError as exc:
                    if _worth_saving(exc):
                        self.unreachable = True
                        self.outbox.append(calls[position:])
                        # INFO: the run's own TrackingWarning says it once.
                        logger.info(
                            "tracking server still unreachable (%s); %d outbox calls "
                            "kept in %s",
                            exc,
                            len(calls) - position,
                            self.outbox.location,
                        )
                        break
                    logger.warning(
                        "dropping outbox call %s of run %s: %s",
                        call.call,
                        call.run_id,
                        exc,
                    )
        except asyncio.CancelledError:
            self.outbox.append(calls[position:])
            raise
        finally:
            self.outbox.release(claimed)
        logger.info(
            "delivered %d of %d outbox calls from %s in %.3fs",
            delivered,
            len(calls),
            self.outbox.location,
            time.perf_counter() - started,
        )


class RunTracker:
    """Sends one run's calls in order from a background task; never raises."""

    def __init__(self, session: TrackingSession, run_id: str) -> None:
        self.session = session
        self.run_id = run_id
        self.report = TrackingReport()
        self._queue: asyncio.Queue[TrackingCall | None] = asyncio.Queue()
        self._in_flight: TrackingCall | None = None
        self._spooling = False
        self._seq = 0
        self._task = asyncio.create_task(self._work(), name=f"tracking-{run_id}")

    def create(self, **payload: Any) -> None:
        self._enqueue("create", payload)

    def update(self, **payload: Any) -> None:
        self._enqueue("update", payload)

    def heartbeat(self) -> None:
        """Queue a heartbeat unless calls are backed up or the server is away."""
        if self._queue.empty() and self._in_flight is None and not self._spooling:
            self._enqueue("heartbeat", {})

    def _enqueue(self, kind: CallKind, payload: dict[str, Any]) -> None:
        self._queue.put_nowait(TrackingCall(self.run_id, kind, payload, self._seq))
        self._seq += 1

    async def close(self, timeout: float) -> TrackingReport:
        """Wait up to ``timeout`` seconds for the queued calls, then save the rest.

        Warns once (TrackingWarning) if any call of this run went to the outbox.
        """
        self._queue.put_nowait(None)
        started = time.perf_counter()
        client = self.session.client
        if client is not None and client.unreachable:
            # The service is down right now: a finished backtest does not wait out
            # the retries; what is still queued goes to the outbox for the next run.
            timeout = min(timeout, UNREACHABLE_GRACE)
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout)
        except TimeoutError:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._save_leftovers()
        self.report.wait_s = time.perf_counter() - started

        if self.report.saved:
            self.report.outbox = self.session.outbox.location
            warnings.warn(
                f"tracking server unreachable, {self.report.saved} calls of run "
                f"{self.run_id} saved to {self.report.outbox}",
                TrackingWarning,
                stacklevel=2,
            )
        return self.report

    async def _work(self) -> None:
        if self.session.client is None:
            return
        await self.session.wait_drained()
        while (call := await self._queue.get()) is not None:
            self._in_flight = call
            await self._send(call)
            self._in_flight = None

    async def _send(self, call: TrackingCall) -> None:
        assert self.session.client is not None
        if self._spooling or self.session.unreachable:
            self._save([call])
            return
        try:
            await deliver(self.session.client, call)
            if call.call != "heartbeat":
                self.report.delivered += 1
        except ApiError as exc:
            if _worth_saving(exc):
                logger.debug(
                    "run %s: %s failed (%s); saving to outbox",
                    self.run_id,
                    call.call,
                    exc,
                )
                self._spooling = True
                self._save([call])
                return
            logger.warning(
                "run %s: dropping %s call refused by the server: %s",
                self.run_id,
                call.call,
                exc,
            )
            self.report.dropped += 1
        except Exception:
            # Tracking must never break a backtest; an unexpected failure (a bug or
            # a malformed answer) is logged with its traceback and the call is kept.
            logger.exception(
                "run %s: %s call failed unexpectedly", self.run_id, call.call
            )
            self._save([call])

    def _save(self, calls: list[TrackingCall]) -> None:
        kept = [call for call in calls if call.call != "heartbeat"]
        self.session.outbox.append(kept)
        self.report.saved += len(kept)

    def _save_leftovers(self) -> None:
        leftovers = [self._in_flight] if self._in_flight is not None else []
        while not self._queue.empty():
            call = self._queue.get_nowait()
            if call is not None:
                leftovers.append(call)
        self._save(leftovers)
