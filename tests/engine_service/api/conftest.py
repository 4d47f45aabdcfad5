"""Fixtures of the engine service tests: real services on loopback.

``stack`` runs the store service in-process over each backend (memory, and Postgres on a fresh
migrated database) and an engine replica in-process in front of it, talking to the store over
gRPC exactly as a deployed replica does; ``client`` is the SDK connected to the engine. Tests of
processes (SIGKILL, SIGSTOP, restarts) use :mod:`tests.engine_service.api.processes` instead.
"""

from __future__ import annotations

import contextlib
import dataclasses
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from engine_service.definitions.samples import sample_registry
from engine_service.server import EngineServer, serve
from engine_service.settings import ServiceSettings
from engine_service.steps.registry import StepRegistry
from flowledger.client import FlowledgerClient
from flowledger_core.ports import EventStore
from tests.engine_service.api import gate_steps
from tests.fixtures.store_server import RunningStore, running_store

BOUND_S = 30.0
"""Seconds any single wait may take before a test fails."""


def engine_settings(store_addr: str, **overrides: Any) -> ServiceSettings:
    """An in-process replica: loopback, free ports, short leases and polls, short grace."""
    base = ServiceSettings(
        store_addr=store_addr,
        listen="127.0.0.1:0",
        metrics_listen="127.0.0.1:0",
        engine_id=f"test-{uuid.uuid4().hex[:8]}",
        lease_ms=2000,
        heartbeat_ms=400,
        poll_ms=50,
        claim_batch=8,
        store_call_timeout_seconds=5.0,
        store_retry_budget_seconds=20.0,
        store_probe_seconds=0.2,
        shutdown_grace_seconds=5.0,
        # Loopback plaintext, no tokens: explicitly (tests/security runs TLS and tokens).
        insecure=True,
        auth_disabled=True,
    )
    return dataclasses.replace(base, **overrides)


def registry_for_tests() -> StepRegistry:
    registry = sample_registry()
    gate_steps.install(registry)
    return registry


@contextlib.asynccontextmanager
async def running_engine(
    store_addr: str, **overrides: Any
) -> AsyncIterator[EngineServer]:
    server = await serve(engine_settings(store_addr, **overrides), registry=registry_for_tests())
    try:
        yield server
    finally:
        await server.stop(grace=2.0)


@dataclass
class Stack:
    store: RunningStore
    engine: EngineServer
    backend: EventStore

    @property
    def store_addr(self) -> str:
        return self.store.server.address


@pytest.fixture
async def stack(store_backend: EventStore) -> AsyncIterator[Stack]:
    async with running_store(store_backend) as store, running_engine(
        store.server.address
    ) as engine:
        yield Stack(store, engine, store_backend)


@pytest.fixture
async def client(stack: Stack) -> AsyncIterator[FlowledgerClient]:
    async with FlowledgerClient(stack.engine.address, timeout=BOUND_S) as sdk:
        yield sdk


@pytest.fixture
def ns() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def gate_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The directory of the gates of this test (also set for in-process replicas)."""
    directory = tmp_path / "gates"
    directory.mkdir()
    monkeypatch.setenv(gate_steps.GATE_DIR_ENV, str(directory))
    yield directory
    # Let any step still waiting in a thread finish, so no thread outlives the test.
    for name in {p.name.split(".entered.")[0] for p in directory.glob("*.entered.*")}:
        (directory / f"{name}.open").touch()


HELLO_DOCUMENT = {
    "steps": [
        {"id": "greet", "type": "hello.greet", "config": {"name": "world"}},
        {"id": "shout", "type": "hello.shout"},
        {"id": "done", "type": "hello.done"},
    ]
}


async def published(
    client: FlowledgerClient, namespace: str, name: str, document: Any = None
) -> int:
    """Create and publish a version; returns its number."""
    created = await client.create_definition(namespace, name, document or HELLO_DOCUMENT)
    await client.publish_definition(namespace, name, created.version.version)
    return created.version.version
