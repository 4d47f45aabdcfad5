"""Group commit: concurrent appends, to any flows, share one Postgres transaction.

Callers put their command on a queue and wait on a future. A dispatcher takes what is queued
right now (no artificial delay: a batch forms while the previous transaction is in flight), runs
it as one statement, hence one round trip and one transaction (see :mod:`.appendsql`), and
resolves every future. One commit per batch instead of one per event is what lifts throughput
past the disk's fsync rate.

Failure handling: a transient failure re-runs the whole batch (nothing was committed; command ids
make even a lost COMMIT acknowledgement safe: the retry finds the command rows and answers
duplicate=True). Any other failure re-runs the batch's commands one by one, so one poison command
cannot fail the others.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass, replace

from flowledger.canonical import content_hash, parse_json
from flowledger.errors import (
    Aborted,
    FlowledgerError,
    InvalidArgument,
    Unavailable,
)
from flowledger_core.domain import Append, AppendResult
from flowledger_core.limits import DEFAULT_MAX_EVENTS_PER_FLOW
from store_service.adapters.postgres import appendsql as sql
from store_service.adapters.postgres import sqlerrors
from store_service.adapters.postgres.db import Conn, Database
from store_service.adapters.postgres.rows import flow_uuid
from store_service.adapters.wait_rules import check_append_wait
from store_service.metrics import (
    APPEND_BATCH_EVENTS,
    APPEND_DURATION,
    ARTIFACTS_WRITTEN,
    DUPLICATE_COMMANDS,
    EVENTS_APPENDED,
    GROUP_COMMIT_COMMANDS,
    VERSION_CONFLICTS,
)

log = logging.getLogger(__name__)


@dataclass
class _Pending:
    cmd: Append
    future: asyncio.Future[AppendResult]
    arrived: float


# A batch still running after this long is waiting (on a row lock held elsewhere, a slow disk):
# then the next batch may start beside it instead of queueing behind it.
STALL_S = 0.010


class GroupCommitAppender:
    """Owns the append queue and the task that runs its batches; :meth:`close` drains first.

    One batch is in flight at a time: the next one forms while it runs, so batches grow with the
    load and every transaction carries as many commands as possible (CPU per event, not commit
    latency, limits a loaded store). Only a batch that stalls lets another start beside it, up
    to ``writers`` at once.
    """

    def __init__(
        self,
        db: Database,
        *,
        writers: int = 4,
        max_batch: int = 128,
        max_events_per_flow: int = DEFAULT_MAX_EVENTS_PER_FLOW,
    ) -> None:
        self._db = db
        self._max_events_per_flow = max_events_per_flow
        self._max_batch = max_batch
        self._max_in_flight = max(1, writers)
        self._queue: asyncio.Queue[_Pending | None] = asyncio.Queue()
        self._closing = False
        self._task = asyncio.create_task(self._dispatch(), name="flowledger-appender")

    def check(self, cmd: Append) -> Append:
        """What ``append`` refuses a command for before it joins a batch; returns it with a
        canonical flow id. (The events-per-flow limit is the batch function's, after the
        version check: flow_limits.)"""
        return validate_append(cmd)

    @property
    def max_events_per_flow(self) -> int:
        return self._max_events_per_flow

    async def append(self, cmd: Append) -> AppendResult:
        cmd = self.check(cmd)
        if self._closing:
            raise Unavailable("the store is shutting down; retry later", reason="SHUTTING_DOWN")
        future: asyncio.Future[AppendResult] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending(cmd, future, time.perf_counter()))
        return await future

    async def close(self) -> None:
        """Finish every queued command, then stop."""
        if self._closing:
            return
        self._closing = True
        self._queue.put_nowait(None)  # the stop mark, behind the queued commands
        await asyncio.gather(self._task, return_exceptions=True)

    async def _dispatch(self) -> None:
        in_flight: dict[asyncio.Task[None], float] = {}  # running batches and their start
        stop = False
        while not stop:
            first = await self._queue.get()
            if first is None:
                break
            batch = [first]
            while len(batch) < self._max_batch and not self._queue.empty():
                item = self._queue.get_nowait()
                if item is None:
                    stop = True
                    break
                batch.append(item)
            # A caller that gave up (cancelled) before its command was picked up gets nothing
            # written on its behalf.
            live = [p for p in batch if not p.future.done()]
            if not live:
                continue
            task = asyncio.create_task(self._run(live))
            in_flight[task] = time.monotonic()
            task.add_done_callback(in_flight.pop)
            await _until_free(in_flight, self._max_in_flight)
        if in_flight:
            await asyncio.wait(in_flight)

    async def _run(self, batch: list[_Pending]) -> None:
        try:
            await self._process(batch)
        except Exception as exc:  # a bug must not kill the appender and strand callers
            _fail_all(batch, sqlerrors.translate(exc))  # logged there, generic here

    async def _process(self, batch: list[_Pending]) -> None:
        try:
            cmds = [p.cmd for p in batch]
            rows = await self._db.run(
                lambda conn: _attempt(conn, cmds, self._max_events_per_flow)
            )
        except FlowledgerError as exc:
            if len(batch) == 1 or _is_transient_exhaustion(exc):
                _fail_all(batch, _locate(exc, batch[0].cmd) if len(batch) == 1 else exc)
                return
            log.info("batch of %d failed (%r); re-running its commands one by one", len(batch), exc)
            for p in batch:
                await self._process([p])
            return
        _resolve(batch, rows, self._max_events_per_flow)


async def _until_free(in_flight: dict[asyncio.Task[None], float], limit: int) -> None:
    """Wait until no batch runs, or every running one stalled and fewer than ``limit`` run."""
    while in_flight:
        now = time.monotonic()
        fresh = [t for t, started in in_flight.items() if now - started < STALL_S]
        if not fresh and len(in_flight) < limit:
            return
        if fresh:
            timeout: float | None = STALL_S - (now - min(in_flight[t] for t in fresh))
            await asyncio.wait(fresh, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        else:
            await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)


async def _attempt(conn: Conn, cmds: list[Append], max_events: int) -> list[sql.Row]:
    """One try of a batch: one statement on an autocommit connection, so one transaction.

    The rows are read once the server is ready for the next query, that is after the commit
    (and its WAL flush) succeeded.
    """
    cur = await conn.execute(sql.APPEND_BATCH, sql.batch_params(cmds, max_events))
    return await cur.fetchall()


def _resolve(batch: list[_Pending], rows: list[sql.Row], max_events: int) -> None:
    """Answer every caller and record the batch's metrics (once: after the commit)."""
    now = time.perf_counter()
    conflicts = duplicates = offered = 0
    appended: Counter[str] = Counter()
    for p, row in zip(batch, rows, strict=True):
        res = sql.outcome(p.cmd, row, max_events)
        kind = row[0]
        if kind == sql.ACCEPTED:
            appended.update(ev.type.value for ev in p.cmd.events)
            APPEND_BATCH_EVENTS.observe(len(p.cmd.events))
            offered += len(p.cmd.artifacts)
        elif kind in sql.REPEATS:
            duplicates += 1
        elif kind == "conflict":
            conflicts += 1
        APPEND_DURATION.observe(now - p.arrived)
        if p.future.done():
            continue
        if isinstance(res, AppendResult):
            p.future.set_result(res)
        else:
            p.future.set_exception(res)
    GROUP_COMMIT_COMMANDS.observe(len(batch))
    for event_type, count in appended.items():
        EVENTS_APPENDED.labels(event_type).inc(count)
    if conflicts:
        VERSION_CONFLICTS.inc(conflicts)
    if duplicates:
        DUPLICATE_COMMANDS.inc(duplicates)
    if offered:
        inserted = int(rows[0][6])
        ARTIFACTS_WRITTEN.labels("inserted").inc(inserted)
        ARTIFACTS_WRITTEN.labels("deduplicated").inc(offered - inserted)


def _fail_all(batch: list[_Pending], exc: FlowledgerError) -> None:
    for p in batch:
        if not p.future.done():
            p.future.set_exception(exc)


def _is_transient_exhaustion(exc: FlowledgerError) -> bool:
    return isinstance(exc, Unavailable) or (
        isinstance(exc, Aborted) and exc.reason == "TRANSIENT_CONFLICT"
    )


def _locate(exc: FlowledgerError, cmd: Append) -> FlowledgerError:
    """Name the offending field when the database refused a value of a single command."""
    if not (isinstance(exc, InvalidArgument) and exc.reason == "UNSTORABLE_VALUE"):
        return exc
    for i, ev in enumerate(cmd.events):
        try:
            parse_json(ev.payload_json)
        except ValueError as bad:
            return InvalidArgument.field(f"events[{i}].payload_json", f"is not valid JSON: {bad}")
    for i, a in enumerate(cmd.artifacts):
        if a.metadata_json is not None:
            try:
                parse_json(a.metadata_json)
            except ValueError as bad:
                field = f"artifacts[{i}].metadata_json"
                return InvalidArgument.field(field, f"is not valid JSON: {bad}")
    return exc


def validate_append(cmd: Append) -> Append:
    """Refuse a malformed command before it can join a batch; returns it with a canonical id."""
    flow_id = flow_uuid(cmd.flow_id)
    if not cmd.events:
        raise InvalidArgument.field("events", "an append needs at least one event")
    if not 1 <= len(cmd.command_id) <= 128:
        raise InvalidArgument.field("command_id", "must be 1..128 characters")
    if cmd.expected_version < 0:
        raise InvalidArgument.field("expected_version", "must be >= 0")
    check_append_wait(cmd)
    for i, a in enumerate(cmd.artifacts):
        if not 0 <= a.event_index < len(cmd.events):
            raise InvalidArgument.field(
                f"artifacts[{i}].event_index", f"must point into events (0..{len(cmd.events) - 1})"
            )
        try:
            actual = content_hash(parse_json(a.payload_json))
        except (ValueError, TypeError) as bad:
            field = f"artifacts[{i}].payload_json"
            raise InvalidArgument.field(field, f"is not hashable JSON: {bad}") from None
        if actual != a.hash:
            raise InvalidArgument.field(
                f"artifacts[{i}].hash",
                f"is not the sha256 of the payload's RFC 8785 canonical form (that is {actual})",
            )
    if flow_id == cmd.flow_id:
        return cmd
    return replace(cmd, flow_id=flow_id)
