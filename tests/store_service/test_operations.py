"""What operators rely on: health, reflection, the metrics endpoint, the starting state."""

from __future__ import annotations

import asyncio
import urllib.request
import uuid
from collections.abc import AsyncIterator

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from flowledger.v1 import store_pb2, store_pb2_grpc
from flowledger_core.server import BindError, GrpcServer, ServerConfig, client_interceptors
from store_service.adapters.memory import MemoryEventStore
from store_service.grpc_api import SERVICE_NAME, StoreServicer
from store_service.settings import Limits
from tests.fixtures.store_server import RunningStore, running_store, wait_until
from tests.store_service.helpers import failure, ns

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture
async def memory_service() -> AsyncIterator[RunningStore]:
    store = MemoryEventStore()
    async with running_store(store) as running:
        yield running
    await store.close()


async def check(channel: grpc.aio.Channel, service: str = "") -> int:
    response = await health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=service), timeout=5
    )
    return int(response.status)


async def test_health_is_serving_overall_and_per_service(memory_service: RunningStore) -> None:
    assert await check(memory_service.channel) == SERVING
    assert await check(memory_service.channel, SERVICE_NAME) == SERVING
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await check(memory_service.channel, "no.such.Service")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_health_turns_not_serving_when_draining(memory_service: RunningStore) -> None:
    watch = health_pb2_grpc.HealthStub(memory_service.channel).Watch(
        health_pb2.HealthCheckRequest(service=SERVICE_NAME)
    )
    try:
        first = await watch.read()
        assert isinstance(first, health_pb2.HealthCheckResponse)
        assert first.status == SERVING
        await memory_service.server.begin_drain()
        update = await asyncio.wait_for(watch.read(), 10)
        assert isinstance(update, health_pb2.HealthCheckResponse)
        assert update.status == NOT_SERVING
    finally:
        watch.cancel()
    assert await check(memory_service.channel) == NOT_SERVING


async def test_not_serving_and_unavailable_while_the_backend_starts() -> None:
    servicer = StoreServicer(None, Limits())
    server = await GrpcServer.start(
        ServerConfig("127.0.0.1:0", None, Limits().max_message_bytes, (SERVICE_NAME,)),
        lambda s: store_pb2_grpc.add_StoreServiceServicer_to_server(servicer, s),
    )
    store = MemoryEventStore()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            assert await check(channel) == NOT_SERVING
            assert await check(channel, SERVICE_NAME) == NOT_SERVING
            stub = store_pb2_grpc.StoreServiceStub(channel)
            request = store_pb2.GetFlowRequest(namespace="ns", flow_id=str(uuid.uuid4()))
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.GetFlow(request)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            assert failure(caught.value).reason == "STARTING"

            servicer.attach(store)
            await server.set_serving()
            assert await check(channel) == SERVING
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.GetFlow(request)
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        await server.stop(0)
        await store.close()


async def test_reflection_lists_the_store_service(memory_service: RunningStore) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(memory_service.channel)

    async def requests() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
        yield reflection_pb2.ServerReflectionRequest(list_services="")
        yield reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE_NAME)

    responses = [r async for r in stub.ServerReflectionInfo(requests(), timeout=10)]
    names = {s.name for s in responses[0].list_services_response.service}
    assert {SERVICE_NAME, "grpc.health.v1.Health"} <= names
    assert responses[1].file_descriptor_response.file_descriptor_proto  # the proto itself


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        body: bytes = response.read()
    return body.decode()


async def test_metrics_endpoint_serves_grpc_server_metrics(memory_service: RunningStore) -> None:
    space = ns()
    await memory_service.stub.CreateFlow(store_pb2.CreateFlowRequest(namespace=space, name="m"))
    with pytest.raises(grpc.aio.AioRpcError):
        await memory_service.stub.GetFlow(store_pb2.GetFlowRequest(namespace=space, flow_id="x"))

    text = await asyncio.to_thread(_scrape, memory_service.metrics_url)
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }

    def value(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        assert key in samples, f"{name}{labels} not exported"
        return samples[key]

    base = {"grpc_type": "unary", "grpc_service": SERVICE_NAME}
    assert value("grpc_server_handled_total", **base, grpc_method="CreateFlow", grpc_code="OK") >= 1
    assert value(
        "grpc_server_handled_total", **base, grpc_method="GetFlow", grpc_code="InvalidArgument"
    ) >= 1
    assert value("grpc_server_started_total", **base, grpc_method="CreateFlow") >= 1
    assert value("grpc_server_handling_seconds_count", **base, grpc_method="CreateFlow") >= 1
    # The fixture's channel carries the client interceptors: engine → store calls are counted.
    assert value("grpc_client_handled_total", **base, grpc_method="CreateFlow", grpc_code="OK") >= 1


async def test_client_interceptor_counts_streams(memory_service: RunningStore) -> None:
    labels = {"grpc_type": "server_stream", "grpc_service": SERVICE_NAME,
              "grpc_method": "ReadEvents", "grpc_code": "NotFound"}
    before = REGISTRY.get_sample_value("grpc_client_handled_total", labels) or 0.0
    async with grpc.aio.insecure_channel(
        memory_service.server.address, interceptors=client_interceptors()
    ) as channel:
        stub = store_pb2_grpc.StoreServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in stub.ReadEvents(
                store_pb2.ReadEventsRequest(namespace="ns", flow_id=str(uuid.uuid4()))
            ):
                pass
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        ok_labels = {**labels, "grpc_code": "OK"}
        ok_before = REGISTRY.get_sample_value("grpc_client_handled_total", ok_labels) or 0.0
        flow = await stub.CreateFlow(store_pb2.CreateFlowRequest(namespace="ns", name="x"))
        got = [r async for r in stub.ReadEvents(
            store_pb2.ReadEventsRequest(namespace="ns", flow_id=flow.flow.flow_id)
        )]
        assert got == []
    assert REGISTRY.get_sample_value("grpc_client_handled_total", labels) == before + 1
    assert REGISTRY.get_sample_value("grpc_client_handled_total", ok_labels) == ok_before + 1


async def test_a_deadline_that_passes_is_counted_as_deadline_exceeded(
    memory_service: RunningStore,
) -> None:
    space = ns()
    labels = {"grpc_type": "server_stream", "grpc_service": SERVICE_NAME,
              "grpc_method": "Subscribe", "grpc_code": "DeadlineExceeded"}
    before = REGISTRY.get_sample_value("grpc_server_handled_total", labels) or 0.0
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in memory_service.stub.Subscribe(
            store_pb2.SubscribeRequest(namespace=space), timeout=0.2
        ):
            pass
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await wait_until(
        lambda: REGISTRY.get_sample_value("grpc_server_handled_total", labels) == before + 1,
        "the server to count the expired Subscribe",
    )


async def test_a_port_in_use_is_a_bind_error(memory_service: RunningStore) -> None:
    taken = memory_service.server.address
    with pytest.raises(BindError) as caught:
        await GrpcServer.start(
            ServerConfig(taken, None, Limits().max_message_bytes, (SERVICE_NAME,)),
            lambda s: None,
        )
    assert taken in str(caught.value)
