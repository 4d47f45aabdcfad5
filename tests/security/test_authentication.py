"""Authentication: bearer tokens (JWT, static token file) on the real engine over TLS; health
stays open; roles are checked only once the caller is known."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from collections.abc import Callable
from pathlib import Path

import grpc
import grpc.aio
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import REGISTRY, generate_latest

from flowledger.errors import PermissionDenied, Unauthenticated
from flowledger.v1 import engine_pb2
from flowledger_core.server.auth import Principal, Role
from flowledger_core.server.auth_policy import authorize
from flowledger_core.server.auth_settings import AuthSettings, JwtSettings
from flowledger_core.server.auth_tokens import Authenticator, FileError
from tests.security.helpers import (
    AUDIENCE,
    ISSUER,
    STATIC_SUBJECT,
    STATIC_TOKEN,
    Keys,
    SecureStack,
    bearer,
    call,
    engine,
    write_token_file,
)

LIST = engine("ListFlowRuns")


def list_request(namespace: str = "ns-a") -> engine_pb2.ListFlowRunsRequest:
    return engine_pb2.ListFlowRunsRequest(namespace=namespace)


async def test_a_valid_token_is_admitted(stack: SecureStack, keys: Keys) -> None:
    outcome = await call(stack.channel, LIST, list_request(), keys.mint("v", "viewer", ["ns-a"]))
    assert outcome.code == grpc.StatusCode.OK


async def test_the_static_token_file_is_accepted(stack: SecureStack) -> None:
    outcome = await call(stack.channel, LIST, list_request(), STATIC_TOKEN)
    assert outcome.code == grpc.StatusCode.OK


def _hs256(secret: bytes, claims: dict[str, object]) -> str:
    """An HMAC token made by hand (PyJWT refuses to key HMAC with a PEM key, as an attacker
    would not)."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps(claims).encode())
    mac = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(mac)}"


ADMIN_CLAIMS = {"sub": "v", "role": "admin", "namespaces": "*", "iss": ISSUER, "aud": AUDIENCE,
                "exp": 4102444800}


def _bad_token(keys: Keys, case: str) -> tuple[str | None, str]:
    ns = ["ns-a"]
    makers: dict[str, Callable[[], str | None]] = {
        "no token": lambda: None,
        "bad signature": lambda: keys.mint("v", "viewer", ns, key=keys.stranger),
        "expired": lambda: keys.mint("v", "viewer", ns, expires_in=-3600),
        "wrong audience": lambda: keys.mint("v", "viewer", ns, aud="someone-else"),
        "wrong issuer": lambda: keys.mint("v", "viewer", ns, iss="https://evil.test"),
        "no expiry": lambda: keys.mint("v", "viewer", ns, drop=("exp",)),
        "unknown role": lambda: keys.mint("v", "root", ns),
        "no namespaces": lambda: keys.mint("v", "viewer", ns, drop=("namespaces",)),
        "alg none": lambda: jwt.encode(ADMIN_CLAIMS, "", algorithm="none"),
        # Key confusion: an HMAC token keyed with the public key's bytes.
        "HS256 with the public key": lambda: _hs256(keys.public_file.read_bytes(), ADMIN_CLAIMS),
        "another algorithm's key": lambda: keys.mint(
            "v", "viewer", ns, algorithm="RS256",
            key=rsa.generate_private_key(public_exponent=65537, key_size=2048),
        ),
        "unknown static token": lambda: "not-a-known-token",
    }
    reasons = {"no token": "TOKEN_MISSING", "expired": "TOKEN_EXPIRED"}
    return makers[case](), reasons.get(case, "TOKEN_INVALID")


@pytest.mark.parametrize(
    "case",
    ["no token", "bad signature", "expired", "wrong audience", "wrong issuer", "no expiry",
     "unknown role", "no namespaces", "alg none", "HS256 with the public key",
     "another algorithm's key", "unknown static token"],
)
async def test_bad_tokens_are_unauthenticated(stack: SecureStack, keys: Keys, case: str) -> None:
    token, reason = _bad_token(keys, case)
    outcome = await call(stack.channel, LIST, list_request(), token)
    assert (outcome.code, outcome.reason) == (grpc.StatusCode.UNAUTHENTICATED, reason)


@pytest.mark.parametrize("header", ["Basic dXNlcjpwYXNz", "Bearer", "Bearer    ", "token abc"])
async def test_a_malformed_authorization_header_is_unauthenticated(
    stack: SecureStack, header: str
) -> None:
    stub: grpc.aio.UnaryUnaryMultiCallable[
        engine_pb2.ListFlowRunsRequest, engine_pb2.ListFlowRunsResponse
    ] = stack.channel.unary_unary(
        LIST, request_serializer=engine_pb2.ListFlowRunsRequest.SerializeToString,
        response_deserializer=engine_pb2.ListFlowRunsResponse.FromString,
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub(list_request(), metadata=[("authorization", header)], timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_health_is_open_and_reflection_is_not(stack: SecureStack, keys: Keys) -> None:
    reply = await health_pb2_grpc.HealthStub(stack.channel).Check(
        health_pb2.HealthCheckRequest(service="flowledger.v1.EngineService"), timeout=10
    )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING

    async def reflect(token: str | None) -> grpc.StatusCode:
        stub = reflection_pb2_grpc.ServerReflectionStub(stack.channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        try:
            async for _ in stub.ServerReflectionInfo(iter([request]), metadata=bearer(token),
                                                     timeout=10):
                pass
        except grpc.aio.AioRpcError as exc:
            return exc.code()
        return grpc.StatusCode.OK

    assert await reflect(None) == grpc.StatusCode.UNAUTHENTICATED
    assert await reflect(keys.mint("w", "worker", ["ns-a"])) == grpc.StatusCode.OK


async def test_a_method_not_served_is_unimplemented_and_leaves_no_metric(
    stack: SecureStack, keys: Keys
) -> None:
    """The surface is public; what matters is that arbitrary method names grow nothing."""
    method = f"/flowledger.v1.EngineService/NoSuchMethod{uuid.uuid4().hex}"
    stub: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = stack.channel.unary_unary(method)
    for token in (None, keys.mint("a", "admin", "*")):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub(b"", metadata=bearer(token), timeout=10)
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert method.rsplit("/", 1)[1] not in generate_latest(REGISTRY).decode()


def test_a_method_missing_from_the_table_is_denied_to_every_role() -> None:
    for role in Role:
        who = Principal("p", role, None, "jwt")
        with pytest.raises(PermissionDenied):
            authorize(who, "/flowledger.v1.EngineService/DeleteEverything")


# -- the authenticator on its own (files, key sets, reloads) -------------------------------------


def test_jwks_keys_are_picked_by_kid(keys: Keys) -> None:
    auth = Authenticator(AuthSettings(
        jwt=JwtSettings(issuer=ISSUER, audience=AUDIENCE, jwks_file=keys.jwks_file)
    ))
    good = keys.mint("s", "manager", ["a", "b"], headers={"kid": "k1"})
    found = auth.authenticate(bearer(good))
    assert (found.subject, found.role) == ("s", Role.MANAGER)
    assert found.namespaces == frozenset({"a", "b"})
    for bad in (keys.mint("s", "manager", ["a"], headers={"kid": "k2"}),
                keys.mint("s", "manager", ["a"], key=keys.stranger, headers={"kid": "k1"})):
        with pytest.raises(Unauthenticated) as caught:
            auth.authenticate(bearer(bad))
        assert caught.value.reason == "TOKEN_INVALID"


def test_the_token_file_is_reloaded_and_a_broken_one_ignored(tmp_path: Path) -> None:
    path = write_token_file(tmp_path / "tokens.yaml", [("first-token", "one", "viewer", "*")])
    auth = Authenticator(AuthSettings(token_file=path))
    assert auth.authenticate(bearer("first-token")).subject == "one"
    staged = write_token_file(tmp_path / "staged.yaml",
                              [("second-token", "two", "admin", ["x"])])
    staged.replace(path)
    assert auth.authenticate(bearer("second-token")).namespaces == frozenset({"x"})
    with pytest.raises(Unauthenticated):
        auth.authenticate(bearer("first-token"))  # revoked by the new file
    path.write_text("tokens: [oops")  # broken: the last good file stays in force
    assert auth.authenticate(bearer("second-token")).subject == "two"


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("tokens: nope", "a list under 'tokens'"),
        ("tokens:\n  - sha256: abc\n    subject: s\n    role: viewer\n    namespaces: '*'",
         "64 hex digits"),
        (json.dumps({"tokens": [{"sha256": "a" * 64, "subject": "s", "role": "god",
                                 "namespaces": "*"}]}), "'role'"),
        (json.dumps({"tokens": [{"sha256": "a" * 64, "subject": "s", "role": "viewer",
                                 "namespaces": []}]}), "'namespaces'"),
    ],
)
def test_a_bad_token_file_is_refused_at_start(tmp_path: Path, content: str, problem: str) -> None:
    path = tmp_path / "tokens.yaml"
    path.write_text(content)
    with pytest.raises(FileError) as caught:
        Authenticator(AuthSettings(token_file=path))
    assert problem in str(caught.value)
    assert str(path) in str(caught.value)


def test_tokens_are_never_stored_in_the_file(tmp_path: Path) -> None:
    token = f"secret-{uuid.uuid4()}"
    path = write_token_file(tmp_path / "t.yaml", [(token, STATIC_SUBJECT, "viewer", "*")])
    assert token not in path.read_text()
