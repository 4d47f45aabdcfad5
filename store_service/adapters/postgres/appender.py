"""Group commit: concurrent appends, to any flows, share one Postgres transaction.

Callers put their command on a queue and wait on a future. A few writer tasks each take what is
queued right now (no artificial delay: a batch forms while the previous transaction is in flight),
run it as one transaction with a fixed number of round trips (see :mod:`.appendsql`), commit once
and resolve every future. One commit per batch instead of one per event is what lifts throughput
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
from dataclasses import dataclass

from flowledger.canonical import content_hash, parse_json
from flowledger.errors import (
    Aborted,
    FlowledgerError,
    InvalidArgument,
    Unavailable,
)
from store_service.adapters.postgres import appendsql as sql
from store_service.adapters.postgres import sqlerrors
from store_service.adapters.postgres.db import Conn, Database
from store_service.adapters.postgres.rows import flow_uuid
from store_service.domain import Append, AppendResult
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


@dataclass
class _Done:
    decision: sql.Decision
    seqs: dict[tuple[str, int], int]
    artifacts_inserted: int


class GroupCommitAppender:
    """Owns the append queue and its writer tasks; :meth:`close` drains before stopping."""

    def __init__(self, db: Database, *, writers: int = 4, max_batch: int = 128) -> None:
        self._db = db
        self._max_batch = max_batch
        self._queue: asyncio.Queue[_Pending | None] = asyncio.Queue()
        self._closing = False
        self._tasks = [
            asyncio.create_task(self._writer(), name=f"flowledger-appender-{n}")
            for n in range(writers)
        ]

    async def append(self, cmd: Append) -> AppendResult:
        cmd = validate_append(cmd)
        if self._closing:
            raise Unavailable("the store is shutting down; retry later", reason="SHUTTING_DOWN")
        future: asyncio.Future[AppendResult] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending(cmd, future, time.perf_counter()))
        return await future

    async def close(self) -> None:
        """Finish every queued command, then stop the writers."""
        if self._closing:
            return
        self._closing = True
        for _ in self._tasks:
            self._queue.put_nowait(None)  # one stop mark per writer, behind the queued commands
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _writer(self) -> None:
        while True:
            first = await self._queue.get()
            if first is None:
                return
            batch = [first]
            stop = False
            while len(batch) < self._max_batch and not self._queue.empty():
                item = self._queue.get_nowait()
                if item is None:
                    stop = True
                    break
                batch.append(item)
            # A caller that gave up (cancelled) before its command was picked up gets nothing
            # written on its behalf.
            live = [p for p in batch if not p.future.done()]
            if live:
                try:
                    await self._process(live)
                except Exception as exc:  # a bug must not kill the writer and strand callers
                    _fail_all(live, sqlerrors.translate(exc))  # logged there, generic here
            if stop:
                return

    async def _process(self, batch: list[_Pending]) -> None:
        try:
            done = await self._db.run(lambda conn: _attempt(conn, [p.cmd for p in batch]))
        except FlowledgerError as exc:
            if len(batch) == 1 or _is_transient_exhaustion(exc):
                _fail_all(batch, _locate(exc, batch[0].cmd) if len(batch) == 1 else exc)
                return
            log.info("batch of %d failed (%r); re-running its commands one by one", len(batch), exc)
            for p in batch:
                await self._process([p])
            return
        _resolve(batch, done)


async def _attempt(conn: Conn, cmds: list[Append]) -> _Done:
    """One try of a batch: one transaction, two round trips (pipeline mode).

    Round trip 1: BEGIN, lock the flows, look up the command ids. Round trip 2: the write, the
    notification and COMMIT; the write's results are read once the commit has synced.
    """
    flow_ids = sorted({c.flow_id for c in cmds})
    written = None
    async with conn.pipeline():
        async with conn.transaction():
            locked = await conn.execute(sql.LOCK_FLOWS, (flow_ids,))
            found = await conn.execute(
                sql.FIND_COMMANDS, ([c.flow_id for c in cmds], [c.command_id for c in cmds])
            )
            flows = sql.flow_states(await locked.fetchall())
            stored = sql.stored_results(await found.fetchall())
            decision = sql.decide(cmds, flows, stored)
            if decision.params["ef"]:
                written = await conn.execute(sql.WRITE, decision.params)
                await conn.execute(sql.NOTIFY)
        seqs: dict[tuple[str, int], int] = {}
        inserted = 0
        if written is not None:
            for seq, flow_id, version, art_count in await written.fetchall():
                seqs[(flow_id, version)] = seq
                inserted = art_count
    return _Done(decision, seqs, inserted)


def _resolve(batch: list[_Pending], done: _Done) -> None:
    """Answer every caller and record the batch's metrics (once: after the commit)."""
    d = done.decision
    now = time.perf_counter()
    results: list[AppendResult | FlowledgerError] = []
    for p, out in zip(batch, d.outcomes, strict=True):
        if isinstance(out, sql.Accepted):
            versions = range(out.first_version, out.last_version + 1)
            seqs = tuple(done.seqs[(out.flow_id, v)] for v in versions)
            results.append(AppendResult(out.first_version, out.last_version, seqs))
            for ev in p.cmd.events:
                EVENTS_APPENDED.labels(ev.type.value).inc()
            APPEND_BATCH_EVENTS.observe(len(p.cmd.events))
        elif isinstance(out, sql.SameAs):
            first = results[out.index]
            assert isinstance(first, AppendResult)
            results.append(AppendResult(first.first_version, first.last_version, first.seqs, True))
        else:
            results.append(out)
    for p, res in zip(batch, results, strict=True):
        APPEND_DURATION.observe(now - p.arrived)
        if p.future.done():
            continue
        if isinstance(res, AppendResult):
            p.future.set_result(res)
        else:
            p.future.set_exception(res)
    GROUP_COMMIT_COMMANDS.observe(len(batch))
    if d.conflicts:
        VERSION_CONFLICTS.inc(d.conflicts)
    if d.duplicates:
        DUPLICATE_COMMANDS.inc(d.duplicates)
    if d.artifacts_offered:
        ARTIFACTS_WRITTEN.labels("inserted").inc(done.artifacts_inserted)
        ARTIFACTS_WRITTEN.labels("deduplicated").inc(d.artifacts_offered - done.artifacts_inserted)


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
    return Append(
        cmd.namespace, flow_id, cmd.expected_version, cmd.command_id, cmd.events,
        cmd.artifacts, cmd.new_status, cmd.fencing_token,
    )  # fmt: skip
