"""``PostgresEventStore``: the Postgres implementation of :class:`flowledger_core.ports.EventStore`.

A thin facade: each concept lives in its own module (group-commit appends in :mod:`.appender`,
the global feed in :mod:`.feed`, branch/prune resolution in :mod:`.lineage`, flow records in
:mod:`.flows`, snapshots in :mod:`.snapshots`, versioned definitions in :mod:`.definitions`, work
leases in :mod:`.leases`); database errors become flowledger errors only in :mod:`.sqlerrors`,
under the retry policy of :mod:`.retry`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

from flowledger.errors import InvalidArgument, Unavailable
from flowledger_core.domain import (
    Append,
    AppendResult,
    Artifact,
    ArtifactLookup,
    ClaimRequest,
    CreatedFlow,
    DefinitionPage,
    DefinitionTransitionCommand,
    EventType,
    FeedEvent,
    Flow,
    FlowFilter,
    FlowLease,
    FlowPage,
    NewBranch,
    NewDefinitionVersion,
    NewFlow,
    Page,
    Prune,
    Snapshot,
    StepCounts,
    StoredDefinition,
    StoredEvent,
)
from flowledger_core.limits import DEFAULT_MAX_EVENTS_PER_FLOW
from store_service.adapters.postgres import definitions, feed, flows, leases, lineage, snapshots
from store_service.adapters.postgres.appender import GroupCommitAppender
from store_service.adapters.postgres.db import Conn, Database
from store_service.adapters.postgres.flow_gauges import FlowGauges
from store_service.adapters.postgres.migrate import apply_schema
from store_service.adapters.postgres.retry import RetryPolicy
from store_service.adapters.postgres.schema_dump import check_functions, check_schema

log = logging.getLogger(__name__)

# Only artifacts the namespace references (migration 0009): one primary-key probe of
# artifact_refs per hash, then one of the artifacts.
_ARTIFACTS = """
SELECT a.artifact_hash, a.kind, a.payload::text, a.metadata::text, a.produced_in_seq
FROM artifact_refs r JOIN workflow_step_artifacts a ON a.artifact_hash = r.artifact_hash
WHERE r.namespace = %s AND r.artifact_hash = ANY(%s::text[])
"""


class PostgresEventStore:
    """Open with :meth:`open`; :meth:`close` finishes queued appends and closes every connection."""

    def __init__(
        self, db: Database, notifier: feed.Notifier, appender: GroupCommitAppender
    ) -> None:
        self._db = db
        self._notifier = notifier
        self._appender = appender
        self._closed = False
        self._flow_gauges = FlowGauges(db)

    @classmethod
    async def open(
        cls,
        conninfo: str,
        *,
        min_connections: int = 2,
        max_connections: int = 16,
        retry_budget_s: float = 15.0,
        apply_migrations: bool = True,
        migrate_conninfo: str | None = None,
        append_writers: int = 4,
        max_batch: int = 128,
        max_events_per_flow: int = DEFAULT_MAX_EVENTS_PER_FLOW,
    ) -> PostgresEventStore:
        """``conninfo`` serves (ideally as ``flowledger_app``: docs/security.md); migrations run
        through ``migrate_conninfo`` (the schema's owner) when given, else through ``conninfo``
        (a database already up to date needs no privilege beyond reading the version tables)."""
        if not 0 <= min_connections <= max_connections or max_connections < 2:
            raise ValueError("need 0 <= min_connections <= max_connections and max >= 2")
        policy = RetryPolicy(budget_s=retry_budget_s)
        if apply_migrations:
            await _apply(migrate_conninfo or conninfo, retry_budget_s)
        db = await Database.open(
            conninfo, min_size=min_connections, max_size=max_connections, policy=policy
        )
        try:
            await db.run(_warn_on_drift)
            await db.run(_warn_on_privileges)
        except Exception:
            await db.close()
            raise
        # Writers each hold one connection per batch: leave room for reads and the feed.
        writers = max(1, min(append_writers, max_connections // 2))
        appender = GroupCommitAppender(
            db, writers=writers, max_batch=max_batch, max_events_per_flow=max_events_per_flow
        )
        return cls(db, feed.Notifier(conninfo, policy), appender)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._flow_gauges.close()
        await self._appender.close()
        await self._notifier.close()
        await self._db.close()

    def _check_open(self) -> None:
        if self._closed:
            raise Unavailable("the store is closed", reason="SHUTTING_DOWN")

    async def create_flow(self, new: NewFlow) -> tuple[Flow, bool]:
        self._check_open()
        return await flows.create_flow(self._db, new)

    async def create_flow_with(
        self,
        new: NewFlow,
        *,
        lease: tuple[str, int] | None = None,
        initial: Append | None = None,
    ) -> CreatedFlow:
        self._check_open()
        return await flows.create_flow_with(
            self._db, new, lease, initial, self._appender.check,
            self._appender.max_events_per_flow,
        )  # fmt: skip

    async def get_flow(self, namespace: str, flow_id: str, include_deleted: bool = False) -> Flow:
        self._check_open()
        return await flows.get_flow(self._db, namespace, flow_id, include_deleted)

    async def list_flows(self, flt: FlowFilter, page: Page) -> FlowPage:
        self._check_open()
        return await flows.list_flows(self._db, flt, page)

    async def append(self, cmd: Append) -> AppendResult:
        self._check_open()
        return await self._appender.append(cmd)

    def read_events(
        self,
        namespace: str,
        flow_id: str,
        after_version: int = 0,
        to_version: int = 0,
        chunk_size: int = 1000,
    ) -> AsyncIterator[Sequence[StoredEvent]]:
        self._check_open()
        return lineage.read_events(
            self._db, namespace, flow_id, after_version, to_version, chunk_size
        )

    async def count_steps(self, namespace: str, flow_id: str) -> StepCounts:
        self._check_open()
        return await lineage.count_steps(self._db, namespace, flow_id)

    def subscribe(
        self,
        namespace: str,
        after_cursor: str = "",
        types: Sequence[EventType] = (),
        chunk_size: int = 500,
    ) -> AsyncIterator[Sequence[FeedEvent]]:
        self._check_open()
        return feed.subscribe(self._db, self._notifier, namespace, after_cursor, types, chunk_size)

    async def get_artifacts(self, namespace: str, hashes: Sequence[str]) -> ArtifactLookup:
        # Artifacts are content-addressed and stored once; one that ``namespace`` does not
        # reference is missing to it, exactly as a hash nobody stored.
        self._check_open()
        if len(hashes) > 1000:
            raise InvalidArgument.field("hashes", "at most 1000 hashes per call")
        wanted = list(dict.fromkeys(hashes))

        async def fetch(conn: Conn) -> list[tuple[Any, ...]]:
            cur = await conn.execute(_ARTIFACTS, (namespace, wanted))
            return await cur.fetchall()

        by_hash = {r[0]: Artifact(*r) for r in await self._db.run(fetch)} if wanted else {}
        return ArtifactLookup(
            found=tuple(by_hash[h] for h in wanted if h in by_hash),
            missing=tuple(h for h in wanted if h not in by_hash),
        )

    async def create_branch(self, new: NewBranch) -> tuple[Flow, bool]:
        self._check_open()
        return await flows.create_branch(self._db, new)

    async def delete_branch(
        self, namespace: str, flow_id: str, deleted_by: str = "", reason: str = ""
    ) -> Flow:
        self._check_open()
        return await flows.delete_branch(self._db, namespace, flow_id, deleted_by, reason)

    async def prune(self, cmd: Prune) -> tuple[Flow, bool]:
        self._check_open()
        return await flows.prune(self._db, cmd)

    async def save_snapshot(
        self, namespace: str, flow_id: str, version: int, state_json: str
    ) -> None:
        self._check_open()
        await snapshots.save_snapshot(self._db, namespace, flow_id, version, state_json)

    async def load_snapshot(
        self, namespace: str, flow_id: str, max_version: int = 0
    ) -> Snapshot | None:
        self._check_open()
        return await snapshots.load_snapshot(self._db, namespace, flow_id, max_version)

    async def put_definition_version(
        self, new: NewDefinitionVersion
    ) -> tuple[StoredDefinition, bool]:
        self._check_open()
        return await definitions.put_version(self._db, new)

    async def get_definition_version(
        self, namespace: str, name: str, version: int = 0
    ) -> StoredDefinition:
        self._check_open()
        return await definitions.get_version(self._db, namespace, name, version)

    async def list_definition_versions(
        self, namespace: str, name: str | None, page: Page
    ) -> DefinitionPage:
        self._check_open()
        return await definitions.list_versions(self._db, namespace, name, page)

    async def transition_definition_version(
        self, cmd: DefinitionTransitionCommand
    ) -> StoredDefinition:
        self._check_open()
        return await definitions.transition(self._db, cmd)

    async def claim_flows(self, req: ClaimRequest) -> tuple[FlowLease, ...]:
        self._check_open()
        return await leases.claim_flows(self._db, req)

    async def renew_lease(
        self, namespace: str, flow_id: str, owner: str, fencing_token: int, lease_ms: int
    ) -> FlowLease:
        self._check_open()
        return await leases.renew_lease(
            self._db, namespace, flow_id, owner, fencing_token, lease_ms
        )

    async def release_lease(self, namespace: str, flow_id: str, fencing_token: int) -> bool:
        self._check_open()
        return await leases.release_lease(self._db, namespace, flow_id, fencing_token)


async def _apply(conninfo: str, budget_s: float) -> None:
    applied = await apply_schema(conninfo, retry_budget_s=budget_s)
    if applied.versions:
        log.info("applied migrations %s", applied.versions)
    if applied.functions:
        log.info("applied functions %s", ", ".join(applied.functions))


# Whether the serving role could rewrite history: a superuser, the owner of event_log (owners
# hold every privilege), or a role granted UPDATE, DELETE or TRUNCATE on it.
_REWRITES_HISTORY = """
SELECT current_user, r.rolsuper OR pg_has_role(c.relowner, 'USAGE')
       OR has_table_privilege(c.oid, 'UPDATE, DELETE, TRUNCATE')
FROM pg_roles r, pg_class c
WHERE r.rolname = current_user AND c.oid = to_regclass('event_log')
"""


async def _warn_on_privileges(conn: Conn) -> None:
    cur = await conn.execute(_REWRITES_HISTORY)
    row = await cur.fetchone()
    if row is not None and row[1]:
        log.warning(
            "the store serves as database role %r, which may change or delete the event log: "
            "serve as a member of flowledger_app and migrate as the owner "
            "(STORE_MIGRATE_DATABASE_URL; docs/security.md)",
            row[0],
        )


async def _warn_on_drift(conn: Conn) -> None:
    drift = await check_schema(conn)
    if drift is not None:
        log.warning("%s", drift)
    for problem in await check_functions(conn):
        log.warning("schema drift: %s", problem)
