"""The store serves as the least-privileged ``flowledger_app`` role (migration 0005).

Migrations run as the owner (``STORE_MIGRATE_DATABASE_URL``), the store serves as a login member
of ``flowledger_app`` (``DATABASE_URL``): every operation of the storage port works, the role holds
exactly the privileges listed here (a new table without a decision fails the test), and what it
must never do (change or delete history, change the schema) is refused by Postgres itself.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from flowledger.canonical import canonical_bytes, content_hash
from flowledger.errors import FlowledgerError, VersionConflict
from flowledger_core.domain import (
    Append,
    ClaimRequest,
    DefinitionState,
    DefinitionTransitionCommand,
    EventType,
    FlowFilter,
    FlowStatus,
    NewBranch,
    NewDefinitionVersion,
    Page,
    Prune,
)
from flowledger_core.ports import EventStore
from store_service.adapters.postgres.migrate import MigrationError, apply_migrations
from store_service.server import StoreServer, serve
from store_service.settings import SettingsError, StoreSettings
from tests.fixtures.postgres import PgServer, fresh_database
from tests.fixtures.store_client import dead_port
from tests.fixtures.store_server import store_settings
from tests.store.helpers import Feed, append, artifact, command_id, ev, new_flow, read_all

pytestmark = pytest.mark.postgres_only

REPO = Path(__file__).resolve().parents[2]

# What flowledger_app may do, per object of the schema: table privileges, then column-level
# UPDATE. Every table and sequence of the schema must appear (an empty set: nothing).
TABLES: dict[str, set[str]] = {
    "schema_migrations": {"SELECT"},
    "schema_functions": {"SELECT"},
    "event_log": {"SELECT", "INSERT"},
    "workflow_step_artifacts": {"SELECT", "INSERT"},
    "artifact_refs": {"SELECT", "INSERT"},
    "flow_commands": {"SELECT", "INSERT"},
    "flow_generations": {"SELECT", "INSERT"},
    "snapshots": {"SELECT", "INSERT"},
    "definition_transitions": {"SELECT", "INSERT"},
    "flows": {"SELECT", "INSERT"},
    "definitions": {"SELECT", "INSERT"},
    "definition_versions": {"SELECT", "INSERT"},
    "event_log_seq_seq": {"USAGE"},
    "flow_lease_tokens": {"USAGE"},
}
UPDATABLE_COLUMNS: dict[str, set[str]] = {
    "flows": {
        "status", "status_since", "version", "generation", "updated_at", "wake_at", "task_queue",
        "lease_owner", "lease_token", "lease_expires_at", "deleted_at", "deleted_by",
        "delete_reason",
    },
    "definition_versions": {"state", "published_at"},
    # Only so that SELECT ... FOR UPDATE may lock the row; no statement updates it.
    "definitions": {"created_at"},
}  # fmt: skip
FUNCTIONS = {"flowledger_append_batch": {"EXECUTE"}, "flowledger_create_flow": {"EXECUTE"}}

# Statements the serving role must never get through: (what, statement).
FORBIDDEN = [
    ("rewrite an event", "UPDATE event_log SET payload = '{}'::jsonb"),
    ("delete events", "DELETE FROM event_log"),
    ("truncate the log", "TRUNCATE event_log CASCADE"),
    ("drop a table", "DROP TABLE flows CASCADE"),
    ("alter a table", "ALTER TABLE flows ADD COLUMN sneaky int"),
    ("drop a constraint", "ALTER TABLE event_log DROP CONSTRAINT event_log_pkey"),
    ("rewrite an artifact", "UPDATE workflow_step_artifacts SET payload = '1'::jsonb"),
    ("delete artifacts", "DELETE FROM workflow_step_artifacts"),
    ("forget a command", "DELETE FROM flow_commands"),
    ("rewrite a command's result", "UPDATE flow_commands SET last_version = 0"),
    ("rewrite a generation", "UPDATE flow_generations SET base_version = 0"),
    ("rewrite a snapshot", "UPDATE snapshots SET state = '{}'::jsonb"),
    ("delete a flow", "DELETE FROM flows"),
    ("move a flow to another namespace", "UPDATE flows SET namespace = 'elsewhere'"),
    ("change who created a flow", "UPDATE flows SET created_by = 'someone else'"),
    ("change a flow's metadata", "UPDATE flows SET metadata = '{}'::jsonb"),
    ("rewrite a definition", "UPDATE definition_versions SET definition = '{}'::jsonb"),
    ("rewrite definition history", "UPDATE definition_transitions SET actor = 'x'"),
    ("delete a definition", "DELETE FROM definition_versions"),
    ("forge a migration", "INSERT INTO schema_migrations VALUES (99, 'x', repeat('0', 64))"),
    ("forget a migration", "DELETE FROM schema_migrations"),
    ("forge a function's checksum", "UPDATE schema_functions SET sha256 = repeat('0', 64)"),
    ("define a function",
     "CREATE OR REPLACE FUNCTION flowledger_append_batch() RETURNS int LANGUAGE sql AS 'SELECT 1'"),
    ("reset the seq counter", "SELECT setval('event_log_seq_seq', 1)"),
    ("drop the append function", "DROP FUNCTION flowledger_append_batch"),
    ("make the append function run as its owner",
     "ALTER FUNCTION flowledger_append_batch SECURITY DEFINER"),
    ("create a role", "CREATE ROLE sneaky"),
]  # fmt: skip


# -- a login role for the store ----------------------------------------------------------------


@contextlib.contextmanager
def app_login(owner_url: str) -> Iterator[str]:
    """A login member of flowledger_app (created if the cluster has none yet); yields its URL.

    Roles are cluster-wide: each test gets its own login role, dropped afterwards, so tests and
    sessions sharing a server do not interfere. flowledger_app itself stays (as a deployment's).
    """
    name = f"fl_store_{uuid.uuid4().hex[:12]}"
    password = uuid.uuid4().hex
    with psycopg.connect(owner_url, autocommit=True) as conn:
        conn.execute(
            "DO $$ BEGIN CREATE ROLE flowledger_app NOLOGIN; "
            "EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$"
        )
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {} IN ROLE flowledger_app").format(
                sql.Identifier(name), sql.Literal(password)
            )
        )
    try:
        yield make_conninfo(owner_url, user=name, password=password)
    finally:
        with psycopg.connect(owner_url, autocommit=True) as conn:
            # Connections of the role (a test that failed half-way) would keep it alive.
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                (name,),
            )
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


@contextlib.asynccontextmanager
async def app_store(owner_url: str, app_url: str) -> AsyncIterator[StoreServer]:
    """The store service as deployed with two roles: migrates as the owner, serves as the app."""
    server = await serve(
        store_settings(database_url=app_url, migrate_database_url=owner_url),
    )
    try:
        yield server
    finally:
        await server.stop(grace=1.0)


@pytest.fixture
def app_url(database_url: str) -> Iterator[str]:
    """A login member of flowledger_app for the fresh, empty database ``database_url``."""
    with app_login(database_url) as url:
        yield url


async def _query(url: str, statement: str, params: Any = None) -> list[tuple[Any, ...]]:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cur = await conn.execute(statement.encode(), params)
        return await cur.fetchall() if cur.description else []


# -- the privileges ----------------------------------------------------------------------------


async def test_the_app_role_holds_exactly_the_listed_privileges(database_url: str) -> None:
    await apply_migrations(database_url)
    tables = await _query(
        database_url,
        "SELECT c.relname, coalesce(array_agg(a.privilege_type) FILTER (WHERE a.grantee IS NOT "
        "NULL), '{}') FROM pg_class c "
        "LEFT JOIN LATERAL aclexplode(coalesce(c.relacl, acldefault('r', c.relowner))) a "
        "ON a.grantee = 'flowledger_app'::regrole "
        "WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind IN ('r', 'p', 'S') "
        "GROUP BY c.relname",
    )
    found = {name: set(privileges) for name, privileges in tables}
    assert found == TABLES, (
        "flowledger_app's table privileges changed; a new table or sequence needs a GRANT in "
        "its migration and a line in TABLES (docs/security.md explains the rules)"
    )
    columns = await _query(
        database_url,
        "SELECT c.relname, array_agg(t.attname::text) FROM pg_attribute t "
        "JOIN pg_class c ON c.oid = t.attrelid CROSS JOIN LATERAL aclexplode(t.attacl) a "
        "WHERE c.relnamespace = current_schema()::regnamespace "
        "AND a.grantee = 'flowledger_app'::regrole AND a.privilege_type = 'UPDATE' "
        "GROUP BY c.relname",
    )
    assert {name: set(cols) for name, cols in columns} == UPDATABLE_COLUMNS
    other_columns = await _query(
        database_url,
        "SELECT c.relname, t.attname, a.privilege_type FROM pg_attribute t "
        "JOIN pg_class c ON c.oid = t.attrelid CROSS JOIN LATERAL aclexplode(t.attacl) a "
        "WHERE c.relnamespace = current_schema()::regnamespace AND a.privilege_type <> 'UPDATE'",
    )
    assert other_columns == []
    functions = await _query(
        database_url,
        "SELECT p.proname, array_agg(a.privilege_type), "
        "bool_or(a.grantee = 0) FROM pg_proc p "
        "CROSS JOIN LATERAL aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a "
        "WHERE p.pronamespace = current_schema()::regnamespace "
        "AND (a.grantee = 'flowledger_app'::regrole OR a.grantee = 0) GROUP BY p.proname",
    )
    assert {name: set(privileges) for name, privileges, _ in functions} == FUNCTIONS
    assert not any(public for _, _, public in functions), "PUBLIC may execute a function"
    untracked = await _query(
        database_url,
        "SELECT proname FROM pg_proc WHERE pronamespace = current_schema()::regnamespace "
        "AND proname <> ALL(%s)",
        (list(FUNCTIONS),),
    )
    assert untracked == [], "a new function needs a decision in FUNCTIONS"
    # Nothing of the schema is granted to PUBLIC (0), so any other login role gets nothing.
    public = await _query(
        database_url,
        "SELECT c.relname FROM pg_class c "
        "CROSS JOIN LATERAL aclexplode(coalesce(c.relacl, acldefault('r', c.relowner))) a "
        "WHERE c.relnamespace = current_schema()::regnamespace AND a.grantee = 0",
    )
    assert public == []


# -- the store as the app role -------------------------------------------------------------------


async def test_every_store_operation_works_as_the_app_role(database_url: str, app_url: str) -> None:
    ns = f"t-{uuid.uuid4().hex[:8]}"
    async with app_store(database_url, app_url) as server:
        role = await _query(app_url, "SELECT current_user, rolsuper FROM pg_roles "
                            "WHERE rolname = current_user")  # fmt: skip
        assert role[0][0] != "postgres"
        assert role[0][1] is False
        await _exercise_the_port(server.store, ns)
    # What the app role wrote is there, as the owner sees it.
    counts = await _query(
        database_url,
        "SELECT (SELECT count(*) FROM flows), (SELECT count(*) FROM event_log), "
        "(SELECT count(*) FROM workflow_step_artifacts), (SELECT count(*) FROM snapshots), "
        "(SELECT count(*) FROM definition_versions)",
    )
    assert all(n > 0 for n in counts[0]), counts


async def _exercise_the_port(store: EventStore, ns: str) -> None:
    """Each operation of the storage port at least once, as a deployed engine would."""
    feed = Feed(store.subscribe(ns))
    try:
        flow = await new_flow(store, ns, "main", metadata_json='{"k": "v"}', created_by="eng")
        assert (await store.get_flow(ns, flow.flow_id)).created_by == "eng"
        first = await append(
            store, ns, flow.flow_id, 0, ev(EventType.FLOW_INITIALIZED), ev(n=1),
            artifacts=[artifact({"out": 1}, 1)], status=FlowStatus.RUNNING,
        )  # fmt: skip
        cmd = command_id()
        await append(store, ns, flow.flow_id, 2, ev(n=2), cmd=cmd)
        assert (await append(store, ns, flow.flow_id, 2, ev(n=2), cmd=cmd)).duplicate
        with pytest.raises(VersionConflict):
            await append(store, ns, flow.flow_id, 1, ev(n=9))
        events = await read_all(store, ns, flow.flow_id)
        assert [e.version for e in events] == [1, 2, 3]
        assert (await store.count_steps(ns, flow.flow_id)).events == 3
        found = await store.get_artifacts(ns, [content_hash({"out": 1}), "0" * 64])
        assert len(found.found) == 1
        assert found.found[0].produced_in_seq == first.seqs[1]
        await feed.wait_for_count(3)

        await store.save_snapshot(ns, flow.flow_id, 3, '{"state": 3}')
        snapshot = await store.load_snapshot(ns, flow.flow_id)
        assert snapshot is not None
        assert snapshot.version == 3

        branch, _ = await store.create_branch(NewBranch(ns, flow.flow_id, 2, "b", created_by="x"))
        await append(store, ns, branch.flow_id, 2, ev(n=20))
        assert [e.version for e in await read_all(store, ns, branch.flow_id)] == [1, 2, 3]
        listed = await store.list_flows(FlowFilter(ns, parent_flow_id=flow.flow_id), Page(10))
        assert [f.flow_id for f in listed.flows] == [branch.flow_id]
        running = await store.list_flows(FlowFilter(ns, (FlowStatus.RUNNING,), "main"), Page(1))
        assert [f.flow_id for f in running.flows] == [flow.flow_id]
        deleted = await store.delete_branch(ns, branch.flow_id, "admin", "not needed")
        assert deleted.deleted

        pruned, _ = await store.prune(Prune(ns, flow.flow_id, 1, 3, command_id(), "admin", "why"))
        assert (pruned.version, pruned.generation) == (1, 1)
        assert len(await read_all(store, ns, flow.flow_id)) == 1

        # Leases: an engine's claim, renewal and release; a task worker's claim of a queue.
        leases = await store.claim_flows(ClaimRequest("engine-1", 10, 5000, (ns,)))
        assert [lease.flow.flow_id for lease in leases] == [flow.flow_id]
        token = leases[0].fencing_token
        renewed = await store.renew_lease(ns, flow.flow_id, "engine-1", token, 5000)
        assert renewed.fencing_token == token
        await store.append(Append(
            ns, flow.flow_id, 1, command_id(), (ev(EventType.TASK_SCHEDULED),),
            new_status=FlowStatus.WAITING, fencing_token=token, task_queue="q1",
            wake_at=datetime.now(UTC) + timedelta(hours=1),
        ))  # fmt: skip
        assert await store.release_lease(ns, flow.flow_id, token)
        tasks = await store.claim_flows(ClaimRequest("worker", 5, 5000, (ns,), task_queues=("q1",)))
        assert [lease.flow.flow_id for lease in tasks] == [flow.flow_id]

        # Definitions: put (twice with one request id), get, list, publish, archive.
        doc = canonical_bytes({"steps": [{"id": "a", "type": "t"}]}).decode()
        new = NewDefinitionVersion(ns, "def", doc, "a" * 64, "first", "author", "req-1")
        stored, _ = await store.put_definition_version(new)
        assert (await store.put_definition_version(new))[1]
        for to, from_ in (
            (DefinitionState.PUBLISHED, (DefinitionState.DRAFT,)),
            (DefinitionState.ARCHIVED, (DefinitionState.PUBLISHED,)),
        ):
            await store.transition_definition_version(
                DefinitionTransitionCommand(ns, "def", stored.version, to, from_, "note", "me")
            )
        got = await store.get_definition_version(ns, "def", stored.version)
        assert [h.state for h in got.history] == [
            DefinitionState.DRAFT, DefinitionState.PUBLISHED, DefinitionState.ARCHIVED,
        ]  # fmt: skip
        assert len((await store.list_definition_versions(ns, None, Page(10))).versions) == 1
        assert len((await store.list_definition_versions(ns, "def", Page(10))).versions) == 1
    finally:
        await feed.close()


@pytest.fixture(scope="module")
async def written(pg_server: PgServer, migrated_template: str) -> AsyncIterator[tuple[str, str]]:
    """(owner URL, app URL) of a database holding one of everything, written as the app role."""
    with fresh_database(pg_server, template=migrated_template) as owner, app_login(owner) as app:
        async with app_store(owner, app) as server:
            store, ns = server.store, "ns"
            flow = await new_flow(store, ns)
            await append(store, ns, flow.flow_id, 0, ev(), artifacts=[artifact([1])])
            await store.save_snapshot(ns, flow.flow_id, 1, "{}")
            doc = canonical_bytes({"steps": []}).decode()
            await store.put_definition_version(NewDefinitionVersion(ns, "d", doc, "b" * 64))
        yield owner, app


@pytest.mark.parametrize(("what", "statement"), FORBIDDEN, ids=[w for w, _ in FORBIDDEN])
async def test_the_app_role_cannot(
    written: tuple[str, str], what: str, statement: str
) -> None:
    owner, app = written
    before = await _state(owner)
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        await _query(app, statement)
    assert await _state(owner) == before, f"{what}: something changed"


async def _state(url: str) -> list[tuple[Any, ...]]:
    return await _query(
        url,
        "SELECT (SELECT array_agg(t::text ORDER BY t::text) FROM event_log t), "
        "(SELECT array_agg(t::text ORDER BY t::text) FROM flows t), "
        "(SELECT array_agg(t::text ORDER BY t::text) FROM workflow_step_artifacts t), "
        "(SELECT array_agg(t::text ORDER BY t::text) FROM flow_commands t), "
        "(SELECT array_agg(t::text ORDER BY t::text) FROM snapshots t), "
        "(SELECT array_agg(t::text ORDER BY t::text) FROM definition_versions t), "
        "(SELECT array_agg(t::text ORDER BY t::text) FROM schema_migrations t), "
        "(SELECT last_value FROM event_log_seq_seq)",
    )


# -- migrations: as the owner, never as the app ----------------------------------------------------


async def test_the_app_role_alone_cannot_migrate_and_says_how(
    database_url: str, app_url: str
) -> None:
    with pytest.raises(MigrationError, match="STORE_MIGRATE_DATABASE_URL"):
        await serve(store_settings(database_url=app_url, retry_budget_seconds=2.0))
    assert await _query(database_url, "SELECT to_regclass('flows')::text") == [(None,)]


async def test_the_app_role_alone_cannot_apply_a_changed_function_and_says_how(
    database_url: str, app_url: str
) -> None:
    """Only the owner may replace a function: a changed file is pending like a migration."""
    await apply_migrations(database_url)
    await _query(database_url, "UPDATE schema_functions SET sha256 = repeat('0', 64) "
                               "WHERE name = 'flowledger_append_batch'")  # fmt: skip
    with pytest.raises(
        MigrationError, match=r"functions/flowledger_append_batch\.sql.*STORE_MIGRATE_DATABASE_URL"
    ):
        await apply_migrations(app_url)
    checked = _migrate_cli("--check", env={"DATABASE_URL": app_url})
    assert (checked.returncode, checked.stdout.strip()) == (
        1, "pending: functions/flowledger_append_batch.sql"
    )
    done = _migrate_cli(env={"STORE_MIGRATE_DATABASE_URL": database_url})
    assert (done.returncode, done.stdout.strip()) == (0, "functions: flowledger_append_batch")


async def test_the_app_role_alone_serves_a_database_the_owner_migrated(
    database_url: str, app_url: str
) -> None:
    """The deployment with a migration Job: the store never holds the owner's password."""
    await apply_migrations(database_url)
    async with contextlib.AsyncExitStack() as stack:
        server = await serve(store_settings(database_url=app_url))
        stack.push_async_callback(server.stop, 1.0)
        flow = await new_flow(server.store, "ns")
        await append(server.store, "ns", flow.flow_id, 0, ev())
        assert len(await read_all(server.store, "ns", flow.flow_id)) == 1


def _migrate_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if "DATABASE_URL" not in k}
    return subprocess.run(
        [sys.executable, "-m", "store_service.migrate", *args],
        env={**clean, **env}, cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_the_migrate_command_applies_as_the_owner_and_checks_as_anyone(
    database_url: str, app_url: str
) -> None:
    pending = _migrate_cli("--check", env={"DATABASE_URL": database_url})
    assert pending.returncode == 1
    assert "pending: 0001_event_log.sql" in pending.stdout
    # STORE_MIGRATE_DATABASE_URL wins over DATABASE_URL (here: the app role, which could not).
    done = _migrate_cli(
        env={"STORE_MIGRATE_DATABASE_URL": database_url, "DATABASE_URL": app_url}
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("applied: [1, 2, 3, 4, 5")
    assert app_url.split("password=")[1].split()[0] not in done.stdout + done.stderr
    checked = _migrate_cli("--check", env={"DATABASE_URL": app_url})
    assert (checked.returncode, checked.stdout.strip()) == (0, "up to date")
    # The former module path still works (existing migration Jobs).
    legacy = subprocess.run(
        [sys.executable, "-m", "store_service.adapters.postgres.migrate", database_url],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert (legacy.returncode, legacy.stdout.strip()) == (0, "up to date"), legacy.stderr


def test_the_migrate_command_as_the_app_role_fails_naming_the_fix(
    database_url: str, app_url: str
) -> None:
    failed = _migrate_cli(env={"DATABASE_URL": app_url})
    assert failed.returncode == 1
    assert "STORE_MIGRATE_DATABASE_URL" in failed.stderr
    assert app_url.split("password=")[1].split()[0] not in failed.stdout + failed.stderr


async def test_no_database_password_is_logged_or_raised(caplog: pytest.LogCaptureFixture) -> None:
    secret = f"pw-{uuid.uuid4().hex}"
    url = f"postgresql://someone:{secret}@127.0.0.1:{dead_port()}/flowledger"
    with caplog.at_level("DEBUG"), pytest.raises(FlowledgerError) as caught:
        await serve(store_settings(
            database_url=url, migrate_database_url=url, retry_budget_seconds=1.0))  # fmt: skip
    assert secret not in caplog.text
    assert secret not in f"{caught.value!r} {caught.value}"
    assert caplog.records  # the failures were logged (without the password)


async def test_a_store_serving_as_the_owner_warns(
    migrated_database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("WARNING", logger="store_service"):
        server = await serve(store_settings(database_url=migrated_database_url))
        await server.stop(grace=1.0)
    assert any("may change or delete the event log" in r.getMessage() for r in caplog.records)


async def test_a_store_serving_as_the_app_role_does_not_warn(
    database_url: str, app_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("WARNING", logger="store_service"):
        async with app_store(database_url, app_url):
            pass
    assert not any("event log" in r.getMessage() for r in caplog.records)


def test_the_migrate_setting_is_read_and_checked() -> None:
    base = {"FLOWLEDGER_INSECURE": "1"}
    owner, app = "postgresql://owner@db/fl", "postgresql://store@db/fl"
    read = StoreSettings.from_env(
        {**base, "DATABASE_URL": app, "STORE_MIGRATE_DATABASE_URL": owner}
    )
    assert (read.database_url, read.migrate_database_url) == (app, owner)
    assert StoreSettings.from_env({**base, "DATABASE_URL": app}).migrate_database_url is None
    for env in (
        {"DATABASE_URL": app, "STORE_MIGRATE_DATABASE_URL": "host=x@h password=s3cret port"},
        {"DATABASE_URL": "memory:", "STORE_MIGRATE_DATABASE_URL": owner},
    ):
        with pytest.raises(SettingsError, match="STORE_MIGRATE_DATABASE_URL") as caught:
            StoreSettings.from_env({**base, **env})
        assert "s3cret" not in str(caught.value)
