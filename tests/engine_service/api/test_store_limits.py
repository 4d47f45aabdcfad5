"""The engine validates with the store's configured limits (GetLimits), not the defaults.

The store runs in-process from its environment (``STORE_MAX_JSON_DEPTH``, the ``memory:``
backend) and the engine in front of it over gRPC, as deployed. A StartFlow input nested deeper
than the store allows is refused by the engine, naming ``input_json``, where it used to pass the
engine's default depth (64) and be refused by the store under the store call's field names; with
a larger setting the engine accepts an input the default would refuse.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio
import pytest

from engine_service.store_client.client import GrpcEventStore
from engine_service.store_client.limits import StoreLimits
from flowledger.client import FlowledgerClient
from flowledger.errors import InvalidArgument
from flowledger_core.limits import Limits
from store_service.server import StoreServer, serve
from store_service.settings import StoreSettings
from tests.engine_service.api.conftest import BOUND_S, published, running_engine
from tests.fixtures.store_client import FAST

DEFAULT_DEPTH = Limits().max_json_depth


def nested(depth: int) -> Any:
    """A JSON value ``depth`` levels deep: [[[...1...]]]."""
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


@contextlib.asynccontextmanager
async def store_from_env(**variables: str) -> AsyncIterator[StoreServer]:
    """The store service as its process would start it: settings from the environment."""
    env = {
        "DATABASE_URL": "memory:",
        "STORE_LISTEN": "127.0.0.1:0",
        "STORE_METRICS_LISTEN": "127.0.0.1:0",
        "STORE_SHUTDOWN_GRACE_SECONDS": "2",
        "FLOWLEDGER_INSECURE": "1",
        **variables,
    }
    server = await serve(StoreSettings.from_env(env))
    try:
        yield server
    finally:
        await server.stop(grace=1.0)


@contextlib.asynccontextmanager
async def engine_client(depth: int) -> AsyncIterator[FlowledgerClient]:
    async with store_from_env(STORE_MAX_JSON_DEPTH=str(depth)) as store, running_engine(
        store.address
    ) as engine, FlowledgerClient(engine.address, timeout=BOUND_S) as client:
        yield client


async def test_an_input_deeper_than_the_store_allows_is_refused_naming_input_json() -> None:
    depth = 8
    async with engine_client(depth) as client:
        await published(client, "lim", "hello")
        within_default = nested(depth + 2)  # the default depth (64) would let it through
        with pytest.raises(InvalidArgument) as info:
            await client.start_flow("lim", "hello", within_default)
        assert [v.field for v in info.value.violations] == ["input_json"]
        assert f"is nested deeper than {depth} levels" in info.value.message
        assert (await client.list_flows("lim")).flows == ()
        # What the store allows is started.
        started = await client.start_flow("lim", "hello", nested(depth - 2))
        assert started.flow_id


async def test_a_larger_setting_accepts_what_the_default_refuses() -> None:
    async with engine_client(DEFAULT_DEPTH + 36) as client:
        await published(client, "lim", "hello")
        started = await client.start_flow("lim", "hello", nested(DEFAULT_DEPTH + 16))
        assert started.flow_id


async def test_the_store_client_reads_the_configured_limits() -> None:
    async with store_from_env(STORE_MAX_JSON_DEPTH="9", STORE_MAX_ID_LENGTH="40") as store:
        client = GrpcEventStore(store.address, FAST)
        try:
            limits = StoreLimits(client)
            assert limits.known is None
            got = await limits.get()
            assert (got.max_json_depth, got.max_id_length) == (9, 40)
            assert got == store.servicer.limits
            assert limits.known is got
        finally:
            await client.close()


async def test_a_store_without_get_limits_leaves_the_defaults() -> None:
    """A store older than GetLimits answers it UNIMPLEMENTED, as a server serving no method
    does (gRPC's answer to a method it does not know)."""
    server = grpc.aio.server()
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    client = GrpcEventStore(f"127.0.0.1:{port}", FAST)
    try:
        assert await client.get_limits() is None
        assert await StoreLimits(client).get() == Limits()
    finally:
        await client.close()
        await server.stop(0)
