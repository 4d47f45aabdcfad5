"""Undecodable request bodies on the secured engine (decision 0023): an unauthenticated caller is
refused UNAUTHENTICATED before its bytes are decoded; an admitted one gets INVALID_ARGUMENT
saying the request could not be decoded; neither logs a traceback, the second is counted."""

from __future__ import annotations

import logging

import grpc
import pytest
from google.protobuf.descriptor import MethodDescriptor
from grpc_health.v1 import health_pb2

from flowledger.v1 import engine_pb2, worker_pb2
from tests.security.helpers import Keys, SecureStack, bearer
from tests.security.raw_calls import CORRUPT, bad_utf8, methods, raw_call, undecodable_count

ENGINE_METHODS = methods(
    engine_pb2.DESCRIPTOR.services_by_name["EngineService"],
    worker_pb2.DESCRIPTOR.services_by_name["WorkerService"],
)


def _bodies(method: MethodDescriptor) -> list[bytes]:
    return [CORRUPT, bad_utf8(method)]


def _problems(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        f"{r.name}: {r.getMessage()}"
        for r in caplog.records
        if r.levelno >= logging.ERROR or r.exc_info
    ]


async def test_without_a_token_undecodable_bytes_are_unauthenticated_and_not_decoded(
    stack: SecureStack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    for method in ENGINE_METHODS:
        before = undecodable_count(method)
        for body in _bodies(method):
            outcome = await raw_call(stack.channel, method, body)
            assert (outcome.code, outcome.reason) == (
                grpc.StatusCode.UNAUTHENTICATED,
                "TOKEN_MISSING",
            ), method.full_name
            forged = await raw_call(stack.channel, method, body, bearer("not-a-token"))
            assert forged.code == grpc.StatusCode.UNAUTHENTICATED, method.full_name
        # Refused before decoding: nothing looked at the bytes.
        assert undecodable_count(method) == before, method.full_name
    assert _problems(caplog) == []


async def test_with_a_token_undecodable_bytes_are_invalid_argument_and_counted(
    stack: SecureStack, keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    admin = bearer(keys.mint("root", "admin", "*"))
    for method in ENGINE_METHODS:
        before = undecodable_count(method)
        for body in _bodies(method):
            outcome = await raw_call(stack.channel, method, body, admin)
            assert (outcome.code, outcome.reason) == (
                grpc.StatusCode.INVALID_ARGUMENT,
                "UNDECODABLE_REQUEST",
            ), (method.full_name, outcome)
            assert "could not be decoded" in outcome.details
            assert method.input_type.full_name in outcome.details
        assert undecodable_count(method) == before + 2, method.full_name
    assert _problems(caplog) == []


async def test_open_health_checks_answer_undecodable_bytes_invalid_argument(
    stack: SecureStack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    check = health_pb2.DESCRIPTOR.services_by_name["Health"].methods_by_name["Check"]
    outcome = await raw_call(stack.channel, check, CORRUPT)
    assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "could not be decoded" in outcome.details
    assert _problems(caplog) == []
