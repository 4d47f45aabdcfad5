"""Step type lifecycle: the registry's close calls each cleanup once, the HTTP client pool is
released by it and opens again when next used, and the runners are in the default registry."""

from __future__ import annotations

import asyncio
import logging

import httpx
import pytest

from engine_service.definitions.builder import Flow
from engine_service.definitions.samples import sample_registry
from engine_service.run.engine import Engine
from engine_service.steps import http
from engine_service.steps.context import StepContext, StepKind, StepResult, success
from engine_service.steps.plugins import default_registry
from engine_service.steps.registry import StepRegistry, StepType
from engine_service.steps.transport import ClientPool
from store_service.adapters.memory import MemoryEventStore
from tests.engine_service.steps.runners_server import LOOPBACK, ScriptedServer, server

__all__ = ["server"]  # the fixture


def noop(ctx: StepContext) -> StepResult:
    return success()


def closed(client: httpx.AsyncClient) -> bool:
    return client.is_closed  # a call, so that mypy does not narrow the property


async def test_aclose_calls_each_cleanup_once_and_logs_failures(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[str] = []

    def sync_cleanup() -> None:
        calls.append("sync")

    async def async_cleanup() -> None:
        await asyncio.sleep(0)
        calls.append("async")

    def broken_cleanup() -> None:
        calls.append("broken")
        raise RuntimeError("cannot let go")

    parent = StepRegistry()
    parent.register(StepType("p.one", StepKind.SOURCE, noop, cleanup=async_cleanup))
    parent.register(StepType("p.two", StepKind.SINK, noop, cleanup=async_cleanup))  # shared
    child = parent.child()
    child.register(StepType("c.broken", StepKind.SINK, noop, cleanup=broken_cleanup))
    child.register(StepType("c.sync", StepKind.SINK, noop, cleanup=sync_cleanup))
    child.register(StepType("c.none", StepKind.SINK, noop))
    with caplog.at_level(logging.ERROR, logger="engine_service.steps.registry"):
        await child.aclose()
    assert calls == ["broken", "sync", "async"]  # the failure stopped nothing; parents last
    assert "cleanup of step type 'c.broken' failed" in caplog.text
    calls.clear()
    await parent.aclose()
    assert calls == ["async"]


def test_close_runs_async_cleanups_without_a_loop() -> None:
    closed: list[bool] = []

    async def cleanup() -> None:
        closed.append(True)

    registry = StepRegistry()
    registry.register(StepType("t", StepKind.SOURCE, noop, cleanup=cleanup))
    registry.close()
    assert closed == [True]


async def test_close_inside_a_loop_asks_for_aclose() -> None:
    with pytest.raises(RuntimeError, match="aclose"):
        StepRegistry().close()


def test_types_without_lifecycle_fields_are_unchanged() -> None:
    seed = sample_registry().get("chem.seed")
    assert seed.cleanup is None
    assert seed.config_check is None
    assert seed.allows(StepKind.SOURCE)
    assert not seed.allows(StepKind.TRANSFORM)
    assert seed.default_kind(first=False) is StepKind.SOURCE


async def test_registry_close_releases_the_http_client(server: ScriptedServer) -> None:
    pool = ClientPool.for_policy(LOOPBACK)
    registry = StepRegistry()
    registry.register(http.step_type(pool))
    registry.register(StepType("t.seed", StepKind.SOURCE, noop))
    engine = Engine(MemoryEventStore(), registry=registry)
    flow = Flow("c").source("s", "t.seed").transform("call", "http", url=f"{server.url}/a")
    try:
        assert (await (await engine.run(flow.build())).state()).completed
        client = pool.current()
        assert client is not None
        assert not closed(client)
        await registry.aclose()
        assert closed(client)
        assert pool.current() is None
        # The type stays usable: the next call opens a new client.
        assert (await (await engine.run(flow.build())).state()).completed
        reopened = pool.current()
        assert reopened is not None
        assert reopened is not client
    finally:
        await registry.aclose()
        await engine.store.close()
    assert closed(reopened)


async def test_a_client_in_use_is_closed_when_its_last_request_ends() -> None:
    pool = ClientPool()
    async with pool.client() as client:
        await pool.aclose()
        assert not closed(client)  # a request is still using it
        async with pool.client() as other:
            assert other is not client  # new requests get a new client
        await pool.aclose()
    assert closed(client)
    assert closed(other)


def test_the_default_registry_has_the_runners() -> None:
    registry = default_registry()
    assert {"http", "field_update", "chem.seed"} <= set(registry.names())
    http, update = registry.get("http"), registry.get("field_update")
    assert http.allows(StepKind.SOURCE)
    assert http.allows(StepKind.TRANSFORM)
    assert update.kind is StepKind.SINK
    assert update.allows(StepKind.TRANSFORM)
    assert [name for name, _ in registry.cleanups()] == ["http"]  # one shared pool
    assert isinstance(http.config_schema, dict)
