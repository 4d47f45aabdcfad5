"""Transport: TLS from clients to the engine, mutual TLS from the engine to the store, with real
certificates made by the test; refusals are compared with a working call on the same server."""

from __future__ import annotations

import functools
import os
import uuid
from pathlib import Path

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from engine_service.store_client.channel import open_channel
from engine_service.store_client.retry import StoreClientSettings
from flowledger import rpc_status
from flowledger.client import FlowledgerClient
from flowledger.v1 import engine_pb2, store_pb2, store_pb2_grpc
from flowledger_core.server.tls import ClientTLS, ServerTLS, channel_credentials, channel_options
from store_service.adapters.memory import MemoryEventStore
from store_service.server import serve as serve_store
from tests.engine_service.api.conftest import HELLO_DOCUMENT
from tests.fixtures.store_server import store_settings, wait_until
from tests.security.certs import Authority, Leaf
from tests.security.helpers import (
    Keys,
    Outcome,
    Pki,
    SecureStack,
    bearer,
    call,
    engine,
    engine_store_tls,
    secure_stack,
    store_tls,
)

SERVING = health_pb2.HealthCheckResponse.SERVING
TIMEOUT = 10.0


async def health(channel: grpc.aio.Channel) -> grpc.StatusCode:
    try:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=TIMEOUT
        )
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    assert reply.status == SERVING
    return grpc.StatusCode.OK


async def store_call(address: str, tls: ClientTLS | None) -> grpc.StatusCode:
    """GetFlow on the store through the engine's own channel code (open_channel)."""
    settings = StoreClientSettings()
    channel = (
        open_channel(address, settings)
        if tls is None
        else open_channel(
            address, settings, credentials=channel_credentials(tls), options=channel_options(tls)
        )
    )
    try:
        await store_pb2_grpc.StoreServiceStub(channel).GetFlow(
            store_pb2.GetFlowRequest(namespace="ns", flow_id=str(uuid.uuid4())), timeout=TIMEOUT
        )
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    finally:
        await channel.close()
    return grpc.StatusCode.OK


# -- engine -> store: mutual TLS -----------------------------------------------------------------


async def test_the_store_answers_the_engines_certificate(stack: SecureStack) -> None:
    # The control for the refusals below: a well-formed call on the same server gets through
    # the handshake and the name check (the flow does not exist).
    assert await store_call(stack.store.address, engine_store_tls(stack.pki)) == (
        grpc.StatusCode.NOT_FOUND
    )


@pytest.mark.parametrize("case", ["no client certificate", "another CA", "expired", "plaintext"])
async def test_the_store_refuses_other_clients(stack: SecureStack, case: str) -> None:
    pki = stack.pki
    tls: ClientTLS | None = {
        "no client certificate": ClientTLS(pki.ca.cert_file),
        "another CA": engine_store_tls(pki, pki.engine_client_other_ca),
        "expired": engine_store_tls(pki, pki.engine_client_expired),
        "plaintext": None,
    }[case]
    # Refused in the handshake: the call never reaches the service.
    assert await store_call(stack.store.address, tls) == grpc.StatusCode.UNAVAILABLE


async def test_the_store_refuses_a_certificate_of_its_ca_with_another_name(
    stack: SecureStack,
) -> None:
    tls = engine_store_tls(stack.pki, stack.pki.intruder_client)
    channel = grpc.aio.secure_channel(stack.store.address, channel_credentials(tls))
    try:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await store_pb2_grpc.StoreServiceStub(channel).GetFlow(
                store_pb2.GetFlowRequest(namespace="ns", flow_id=str(uuid.uuid4())),
                timeout=TIMEOUT,
            )
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert rpc_status.from_rpc_error(caught.value).reason == "CLIENT_CERTIFICATE_NAME"
        # Health checks stay open to any client the handshake admits.
        assert await health(channel) == grpc.StatusCode.OK
    finally:
        await channel.close()


async def test_health_only_ports_answer_in_plaintext(stack: SecureStack) -> None:
    for server in (stack.store.grpc, stack.engine.grpc):
        assert server.health_port is not None
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.health_port}") as channel:
            await wait_until(functools.partial(_serving, channel), "SERVING on the health port")
            # Nothing else is served there.
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await store_pb2_grpc.StoreServiceStub(channel).GetFlow(
                    store_pb2.GetFlowRequest(namespace="ns", flow_id="x"), timeout=TIMEOUT
                )
            assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def _serving(channel: grpc.aio.Channel) -> bool:
    return await health(channel) == grpc.StatusCode.OK


# -- clients -> engine: TLS ----------------------------------------------------------------------


async def test_the_engine_refuses_plaintext_and_untrusted_certificates(stack: SecureStack) -> None:
    async with grpc.aio.insecure_channel(stack.engine_address) as plain:
        assert await health(plain) == grpc.StatusCode.UNAVAILABLE
    wrong_ca = grpc.ssl_channel_credentials(stack.pki.other_ca.cert_pem)
    async with grpc.aio.secure_channel(stack.engine_address, wrong_ca) as untrusted:
        assert await health(untrusted) == grpc.StatusCode.UNAVAILABLE
    # Health is open: TLS, no token.
    assert await health(stack.channel) == grpc.StatusCode.OK


async def test_a_flow_runs_end_to_end_over_tls_and_mutual_tls(
    stack: SecureStack, keys: Keys
) -> None:
    """The SDK with standard gRPC call credentials (a bearer token over TLS); the engine
    reaches the store over mutual TLS to store and run the flow."""
    token = keys.mint("e2e-manager", "manager", ["ns-e2e"])
    credentials = grpc.composite_channel_credentials(
        grpc.ssl_channel_credentials(stack.pki.ca.cert_pem),
        grpc.access_token_call_credentials(token),
    )
    async with FlowledgerClient(stack.engine_address, credentials=credentials) as sdk:
        created = await sdk.create_definition("ns-e2e", "hello", HELLO_DOCUMENT)
        await sdk.publish_definition("ns-e2e", "hello", created.version.version)
        started = await sdk.start_flow("ns-e2e", "hello", {"who": "tls"})

        async def completed() -> bool:
            view = await sdk.describe_flow("ns-e2e", started.flow_id)
            return bool(view.flow_fingerprint)

        await wait_until(completed, "the flow to complete over TLS")


# -- rotation ------------------------------------------------------------------------------------


def _install(leaf: Leaf, cert_file: Path, key_file: Path) -> None:
    """Rotate as a Secret volume does: new files renamed into place (new inodes)."""
    for source, target in ((leaf.key_pem, key_file), (leaf.cert_pem, cert_file)):
        staged = target.with_suffix(".new")
        staged.write_bytes(source)
        os.replace(staged, target)


async def test_a_rotated_server_certificate_is_served_to_new_connections(
    tmp_path: Path, pki: Pki
) -> None:
    v1, v2 = Authority(tmp_path, "servers-v1"), Authority(tmp_path, "servers-v2")
    names = ("localhost", "127.0.0.1")
    first, second, third = v1.issue("a", names), v2.issue("b", names), v1.issue("c", names)
    cert_file, key_file = tmp_path / "tls.crt", tmp_path / "tls.key"
    _install(first, cert_file, key_file)
    tls = store_tls(pki)
    tls = type(tls)(cert_file, key_file, tls.client_ca_file, tls.client_names)
    memory = MemoryEventStore()
    store = await serve_store(store_settings(insecure=False, tls=tls), memory)

    async def reachable(authority: Authority) -> bool:
        client = ClientTLS(authority.cert_file, pki.engine_client.cert_file,
                           pki.engine_client.key_file)
        return await store_call(store.address, client) == grpc.StatusCode.NOT_FOUND

    try:
        assert await reachable(v1)
        assert not await reachable(v2)
        _install(second, cert_file, key_file)
        assert await reachable(v2)
        assert not await reachable(v1)
        # Half a rotation (a certificate whose key has not arrived) is not served: the
        # previous pair stays until the files agree again.
        cert_file.write_bytes(third.cert_pem)
        assert await reachable(v2)
        key_file.write_bytes(third.key_pem)
        assert await reachable(v1)
    finally:
        await store.stop(grace=1.0)
        await memory.close()


async def test_a_token_sent_in_plaintext_never_reaches_the_engine(stack: SecureStack) -> None:
    """A token sent over plaintext to the TLS port never reaches the engine."""
    async with grpc.aio.insecure_channel(stack.engine_address) as plain:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await plain.unary_unary(
                "/flowledger.v1.EngineService/ListFlowRuns",
                request_serializer=engine_pb2.ListFlowRunsRequest.SerializeToString,
                response_deserializer=engine_pb2.ListFlowRunsResponse.FromString,
            )(engine_pb2.ListFlowRunsRequest(namespace="ns"), metadata=bearer("x"),
              timeout=TIMEOUT)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_the_engine_can_require_client_certificates_with_names(
    pki: Pki, keys: Keys, token_file: Path
) -> None:
    mutual = ServerTLS(pki.engine_server.cert_file, pki.engine_server.key_file,
                       pki.ca.cert_file, client_names=("engine.flowledger",))
    async with secure_stack(pki, keys, token_file, tls=mutual) as stack:
        token = keys.mint("cli", "viewer", ["ns"])
        request = engine_pb2.ListFlowRunsRequest(namespace="ns")

        async def list_with(leaf: Leaf | None) -> Outcome:
            credentials = grpc.ssl_channel_credentials(
                pki.ca.cert_pem,
                leaf.key_pem if leaf else None,
                leaf.cert_pem if leaf else None,
            )
            async with grpc.aio.secure_channel(stack.engine_address, credentials) as channel:
                return await call(channel, engine("ListFlowRuns"), request, token)

        assert (await list_with(pki.engine_client)).code == grpc.StatusCode.OK
        assert (await list_with(None)).code == grpc.StatusCode.UNAVAILABLE
        assert (await list_with(pki.engine_client_other_ca)).code == grpc.StatusCode.UNAVAILABLE
        named = await list_with(pki.intruder_client)
        assert (named.code, named.reason) == (
            grpc.StatusCode.PERMISSION_DENIED, "CLIENT_CERTIFICATE_NAME"
        )
