"""The pieces the security tests share: test PKI, JWT keys, and the services over TLS with tokens.

:func:`secure_stack` runs, on loopback, the store (memory backend) with mutual TLS and a
client-name check, and an engine replica with TLS, bearer tokens (JWT and a static token file)
and mutual TLS towards the store: the configuration docs/security.md describes. Every call
helper takes a token and answers the status code (and ErrorInfo reason) instead of raising, so a
test can assert on refusals as compactly as on successes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from google.protobuf import message_factory
from google.protobuf.message import Message

from engine_service.server import EngineServer, serve
from flowledger import rpc_status
from flowledger.v1 import engine_pb2, worker_pb2
from flowledger_core.server.auth_settings import AuthSettings, JwtSettings, RateLimit
from flowledger_core.server.auth_tokens import token_sha256
from flowledger_core.server.tls import ClientTLS, ServerTLS
from store_service.adapters.memory import MemoryEventStore
from store_service.server import StoreServer
from store_service.server import serve as serve_store
from tests.engine_service.api.conftest import engine_settings, registry_for_tests
from tests.fixtures.store_server import store_settings
from tests.security.certs import Authority, Leaf

ISSUER = "https://issuer.test"
AUDIENCE = "flowledger-engine"
ENGINE_CLIENT_NAME = "engine.flowledger"
STATIC_TOKEN = "static-viewer-token-0123456789abcdef"
STATIC_SUBJECT = "small-install"
CALL_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Pki:
    """One CA for everything the deployment trusts, one it does not, and their leaves."""

    ca: Authority
    other_ca: Authority
    store: Leaf
    engine_server: Leaf
    engine_client: Leaf
    engine_client_expired: Leaf
    engine_client_other_ca: Leaf
    intruder_client: Leaf
    """Signed by the trusted CA, but for a name the store does not accept."""


def make_pki(directory: Path) -> Pki:
    ca, other = Authority(directory, "main"), Authority(directory, "other")
    loopback = ("localhost", "127.0.0.1")
    return Pki(
        ca=ca,
        other_ca=other,
        store=ca.issue("store", ("store.flowledger", *loopback)),
        engine_server=ca.issue("engine-server", ("engine.flowledger", *loopback)),
        engine_client=ca.issue("engine-client", (ENGINE_CLIENT_NAME,)),
        engine_client_expired=ca.issue("engine-expired", (ENGINE_CLIENT_NAME,), expired=True),
        engine_client_other_ca=other.issue("engine-client", (ENGINE_CLIENT_NAME,)),
        intruder_client=ca.issue("intruder", ("intruder.example",)),
    )


class Keys:
    """The issuer's signing key (the engine has its public half) and a stranger's."""

    def __init__(self, directory: Path) -> None:
        self.private = ec.generate_private_key(ec.SECP256R1())
        self.stranger = ec.generate_private_key(ec.SECP256R1())
        self.public_file = directory / "jwt-public.pem"
        self.public_file.write_bytes(
            self.private.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        self.jwks_file = directory / "jwks.json"
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.private.public_key()))
        self.jwks_file.write_text(json.dumps({"keys": [{**jwk, "kid": "k1", "use": "sig"}]}))

    def mint(
        self,
        subject: str,
        role: str,
        namespaces: list[str] | str,
        *,
        key: Any = None,
        algorithm: str = "ES256",
        expires_in: float = 600,
        headers: dict[str, Any] | None = None,
        drop: tuple[str, ...] = (),
        **claims: Any,
    ) -> str:
        now = int(time.time())
        payload = {
            "sub": subject, "role": role, "namespaces": namespaces, "iss": ISSUER,
            "aud": AUDIENCE, "iat": now, "exp": now + int(expires_in), **claims,
        }
        for name in drop:
            payload.pop(name)
        return jwt.encode(payload, key or self.private, algorithm=algorithm, headers=headers)


def write_token_file(path: Path, entries: list[tuple[str, str, str, Any]]) -> Path:
    """(token, subject, role, namespaces) entries, written as the static token file."""
    lines = ["tokens:"]
    for token, subject, role, namespaces in entries:
        lines += [
            f"  - sha256: {token_sha256(token)}",
            f"    subject: {subject}",
            f"    role: {role}",
            f"    namespaces: {json.dumps(namespaces)}",
        ]
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass
class SecureStack:
    store: StoreServer
    engine: EngineServer
    pki: Pki
    channel: grpc.aio.Channel
    """TLS to the engine (trusting the CA), no call credentials: tokens go per call."""

    @property
    def engine_address(self) -> str:
        return self.engine.address


def auth_settings(
    keys: Keys, token_file: Path, rate_limit: RateLimit | None = None
) -> AuthSettings:
    return AuthSettings(
        token_file=token_file,
        jwt=JwtSettings(issuer=ISSUER, audience=AUDIENCE, key_file=keys.public_file),
        rate_limit=rate_limit,
    )


def store_tls(pki: Pki) -> ServerTLS:
    return ServerTLS(pki.store.cert_file, pki.store.key_file, pki.ca.cert_file,
                     client_names=(ENGINE_CLIENT_NAME,))


def engine_store_tls(pki: Pki, leaf: Leaf | None = None) -> ClientTLS:
    leaf = leaf or pki.engine_client
    return ClientTLS(pki.ca.cert_file, leaf.cert_file, leaf.key_file)


@contextlib.asynccontextmanager
async def secure_stack(
    pki: Pki, keys: Keys, token_file: Path, *, database_url: str = "", **engine_overrides: Any
) -> AsyncIterator[SecureStack]:
    """The two services over mutual TLS; the store on Postgres at ``database_url`` if given,
    else in memory."""
    memory = None if database_url else MemoryEventStore()
    backend = {"database_url": database_url} if database_url else {}
    store = await serve_store(
        store_settings(insecure=False, tls=store_tls(pki), health_listen="127.0.0.1:0", **backend),
        memory,
    )
    try:
        settings = engine_settings(
            store.address,
            insecure=False,
            auth_disabled=False,
            tls=ServerTLS(pki.engine_server.cert_file, pki.engine_server.key_file),
            store_tls=engine_store_tls(pki),
            auth=auth_settings(keys, token_file),
            health_listen="127.0.0.1:0",
        )
        engine = await serve(
            dataclasses.replace(settings, **engine_overrides), registry=registry_for_tests()
        )
        try:
            channel = grpc.aio.secure_channel(
                engine.address, grpc.ssl_channel_credentials(pki.ca.cert_pem)
            )
            try:
                yield SecureStack(store, engine, pki, channel)
            finally:
                await channel.close()
        finally:
            await engine.stop(grace=1.0)
    finally:
        await store.stop(grace=1.0)
        if memory is not None:
            await memory.close()


# -- calls ---------------------------------------------------------------------------------------


def bearer(token: str | None) -> list[tuple[str, str]]:
    return [] if token is None else [("authorization", f"Bearer {token}")]


@dataclass(frozen=True)
class Outcome:
    code: grpc.StatusCode
    reason: str = ""
    message: str = ""
    response: Any = None


def _outcome(exc: grpc.aio.AioRpcError) -> Outcome:
    error = rpc_status.from_rpc_error(exc)
    return Outcome(exc.code(), error.reason, exc.details() or "")


_SERVICES = {
    "flowledger.v1.EngineService": engine_pb2.DESCRIPTOR.services_by_name["EngineService"],
    "flowledger.v1.WorkerService": worker_pb2.DESCRIPTOR.services_by_name["WorkerService"],
}


def request_class(method: str) -> type[Message]:
    service, _, name = method.strip("/").partition("/")
    descriptor = _SERVICES[service].methods_by_name[name]
    return message_factory.GetMessageClass(descriptor.input_type)


async def call(
    channel: grpc.aio.Channel, method: str, request: Message, token: str | None
) -> Outcome:
    """Call ``method`` (``/pkg.Service/Method``, unary or server-streaming) with ``token``."""
    service, _, name = method.strip("/").partition("/")
    descriptor = _SERVICES[service].methods_by_name[name]
    response_class = message_factory.GetMessageClass(descriptor.output_type)
    try:
        if descriptor.server_streaming:
            stream = channel.unary_stream(
                method, request_serializer=type(request).SerializeToString,
                response_deserializer=response_class.FromString,
            )(request, metadata=bearer(token), timeout=CALL_TIMEOUT_S)
            first = None
            async for item in stream:
                first = item
                break
            stream.cancel()
            return Outcome(grpc.StatusCode.OK, response=first)
        response = await channel.unary_unary(
            method, request_serializer=type(request).SerializeToString,
            response_deserializer=response_class.FromString,
        )(request, metadata=bearer(token), timeout=CALL_TIMEOUT_S)
    except grpc.aio.AioRpcError as exc:
        return _outcome(exc)
    return Outcome(grpc.StatusCode.OK, response=response)


def engine(name: str) -> str:
    return f"/flowledger.v1.EngineService/{name}"
