"""Migrations from an empty database, re-runs, concurrent runners, edited files, schema drift."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import psycopg
import pytest

from flowledger.canonical import canonical_bytes, content_hash
from store_service.adapters.postgres import migrate
from store_service.adapters.postgres.migrate import MigrationError, apply_migrations
from store_service.adapters.postgres.schema_dump import (
    UPDATE_HINT,
    check_schema,
    committed_snapshot,
    dump_schema,
    sha256_text,
)

pytestmark = pytest.mark.postgres_only


async def _query(url: str, sql: str) -> list[tuple[Any, ...]]:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cur = await conn.execute(sql.encode())
        return await cur.fetchall()


async def _dump(url: str) -> str:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        return await dump_schema(conn)


def test_migration_files_are_numbered_from_one_without_gaps() -> None:
    versions = [m.version for m in migrate.load_migrations()]
    assert versions == list(range(1, len(versions) + 1))


async def test_migrating_an_empty_database_gives_the_committed_schema(database_url: str) -> None:
    expected_text, expected_sha = committed_snapshot()
    assert sha256_text(expected_text) == expected_sha, (
        f"store_service/schema/schema.sha256 does not match schema.txt; run `{UPDATE_HINT}`"
    )
    applied = await apply_migrations(database_url)
    assert applied == [m.version for m in migrate.load_migrations()]
    actual = await _dump(database_url)
    assert actual == expected_text, (
        "the migrated schema differs from store_service/schema/schema.txt: if the change is "
        f"intended (a new migration), run `{UPDATE_HINT}` and commit both files"
    )
    assert sha256_text(actual) == expected_sha


async def test_rerunning_is_a_no_op(database_url: str) -> None:
    await apply_migrations(database_url)
    before = await _dump(database_url)
    rows_before = await _query(database_url, "SELECT * FROM schema_migrations ORDER BY version")
    assert await apply_migrations(database_url) == []
    assert await _dump(database_url) == before
    assert await _query(database_url, "SELECT * FROM schema_migrations ORDER BY version") == (
        rows_before
    )


async def test_concurrent_runners_apply_each_file_once(database_url: str) -> None:
    results = await asyncio.gather(*(apply_migrations(database_url) for _ in range(4)))
    applied = sorted(v for r in results for v in r)
    assert applied == [m.version for m in migrate.load_migrations()], results
    rows = await _query(database_url, "SELECT version, count(*) FROM schema_migrations GROUP BY 1")
    assert all(count == 1 for _, count in rows)


async def test_an_edited_applied_file_stops_start_up(database_url: str) -> None:
    await apply_migrations(database_url)
    # As if 0001 had been edited after it was applied: the recorded checksum no longer matches.
    await _query(database_url, "UPDATE schema_migrations SET sha256 = repeat('0', 64) "
                               "WHERE version = 1 RETURNING version")  # fmt: skip
    first = migrate.load_migrations()[0]
    with pytest.raises(MigrationError, match=first.filename):
        await apply_migrations(database_url)

    from store_service.adapters.postgres import PostgresEventStore

    with pytest.raises(MigrationError, match=first.filename):
        await PostgresEventStore.open(database_url, retry_budget_s=2)


async def test_a_failing_migration_names_its_file_and_leaves_nothing_behind(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = migrate.load_migrations()
    bad = migrate.Migration(
        version=len(real) + 1,
        name="broken",
        sql="CREATE TABLE half_done (x int); SELECT * FROM no_such_table;",
        sha256="f" * 64,
    )
    monkeypatch.setattr(migrate, "load_migrations", lambda: [*real, bad])
    with pytest.raises(MigrationError, match=bad.filename):
        await apply_migrations(database_url)
    # The good files were applied (each in its own transaction), the broken one not at all.
    versions = [r[0] for r in await _query(database_url, "SELECT version FROM schema_migrations")]
    assert sorted(versions) == [m.version for m in real]
    assert await _query(database_url, "SELECT to_regclass('half_done')::text") == [(None,)]


async def test_schema_drift_is_detected(migrated_database_url: str) -> None:
    async with await psycopg.AsyncConnection.connect(migrated_database_url, autocommit=True) as c:
        assert await check_schema(c) is None
        await c.execute("CREATE INDEX drift_idx ON flows (name)")
        drift = await check_schema(c)
    assert drift is not None
    assert "schema drift" in drift


async def test_0004_upgrades_a_database_with_flows_and_events(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = migrate.load_migrations()
    monkeypatch.setattr(migrate, "load_migrations", lambda: real[:3])
    assert await apply_migrations(database_url) == [1, 2, 3]
    flow = "0b4f5a3e-8e0f-4a52-9d55-2a6f3f1c9e10"
    await _query(database_url, f"INSERT INTO flows (flow_id, namespace, name, status) VALUES "
                               f"('{flow}', 'ns', 'f', 'waiting') RETURNING 1")  # fmt: skip
    # An append through 0003's function (one event, no artifacts), as the previous release did.
    await _query(database_url, "SELECT * FROM flowledger_append_batch("
                 f"'{{ns}}', '{{{flow}}}', '{{0}}', '{{c1}}', '{{NULL}}', '{{0}}', '{{1}}', "
                 "'{1}', '{0}', '{task_scheduled}', '{\"{}\"}', "
                 "'{}', '{}', '{}', '{}', '{}', '{}')")

    monkeypatch.setattr(migrate, "load_migrations", lambda: real[:4])
    assert await apply_migrations(database_url) == [4]
    # Existing flows wait on nothing; existing events stay; the new type is accepted.
    assert await _query(database_url, "SELECT status, wake_at, task_queue, version FROM flows") == [
        ("waiting", None, None, 1)
    ]
    assert await _query(database_url, "SELECT event_type FROM event_log") == [("task_scheduled",)]
    await _query(database_url, "INSERT INTO event_log (flow_id, version, event_type, payload, "
                 f"command_id) VALUES ('{flow}', 2, 'flow_cancel_requested', '{{}}', 'c2') "
                 "RETURNING 1")  # fmt: skip
    with pytest.raises(psycopg.errors.CheckViolation):
        await _query(database_url, "INSERT INTO event_log (flow_id, version, event_type, payload, "
                     f"command_id) VALUES ('{flow}', 3, 'bogus', '{{}}', 'c3') RETURNING 1")
    # One append function remains: the one with wake_at and task_queue.
    functions = await _query(
        database_url, "SELECT pronargs FROM pg_proc WHERE proname = 'flowledger_append_batch'"
    )
    assert functions == [(19,)]


@pytest.mark.parametrize(
    ("status", "queue"), [("running", "q"), ("waiting", ""), ("waiting", "a b"), ("waiting", "é")]
)
async def test_the_flows_table_refuses_a_misplaced_or_malformed_task_queue(
    migrated_database_url: str, status: str, queue: str
) -> None:
    insert = ("INSERT INTO flows (flow_id, namespace, name, status, task_queue) VALUES "
              "(gen_random_uuid(), 'ns', 'f', '{}', '{}') RETURNING 1")  # fmt: skip
    with pytest.raises(psycopg.errors.CheckViolation):
        await _query(migrated_database_url, insert.format(status, queue))
    assert await _query(migrated_database_url, insert.format("waiting", "q" * 128)) == [(1,)]


async def test_0009_backfills_artifact_references_of_producers_and_consumers(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = migrate.load_migrations()
    monkeypatch.setattr(migrate, "load_migrations", lambda: real[:8])
    assert await apply_migrations(database_url) == list(range(1, 9))
    shared, alone = content_hash({"shared": 1}), content_hash({"alone": 1})
    flows = {"ns-a": str(uuid.uuid4()), "ns-b": str(uuid.uuid4()), "ns-c": str(uuid.uuid4())}
    offered = {"ns-a": [shared, alone], "ns-b": [shared], "ns-c": []}
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        for ns, flow in flows.items():
            await conn.execute(
                "INSERT INTO flows (flow_id, namespace, name, status) "
                "VALUES (%s, %s, 'f', 'running')",
                (flow, ns),
            )
            # Through 0008's function, as the previous release appended: ns-b offers the
            # artifact ns-a stored first (deduplicated: nothing but its event names it).
            hashes = offered[ns]
            payload = json.dumps({"input_hash": hashes[0]} if hashes else {"n": 0})
            await conn.execute(
                "SELECT * FROM flowledger_append_batch(%s, %s::uuid[], %s, %s, %s, %s, %s, %s, "
                "%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                ([ns], [flow], [0], ["c1"], [None], [None], [None], [0], [1], [1], [0],
                 ["flow_initialized"], [payload], [1] * len(hashes), [0] * len(hashes), hashes,
                 ["json"] * len(hashes), [canonical_bytes(_VALUES[h]).decode() for h in hashes],
                 [None] * len(hashes)),
            )  # fmt: skip

    monkeypatch.setattr(migrate, "load_migrations", lambda: real[:9])
    assert await apply_migrations(database_url) == [9]
    refs = await _query(database_url, "SELECT namespace, artifact_hash FROM artifact_refs")
    assert sorted(refs) == sorted([("ns-a", shared), ("ns-a", alone), ("ns-b", shared)])


_VALUES = {content_hash({"shared": 1}): {"shared": 1}, content_hash({"alone": 1}): {"alone": 1}}
