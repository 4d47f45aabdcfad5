"""Limits: requests per subject per second (token bucket), message size, payload size and JSON
depth, each refused with its code and nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest

from flowledger.errors import ResourceExhausted
from flowledger.v1 import engine_pb2
from flowledger_core.server.auth_limits import MAX_BUCKETS, RateLimiter
from flowledger_core.server.auth_settings import RateLimit
from tests.engine_service.api.conftest import HELLO_DOCUMENT
from tests.security.helpers import Keys, Pki, SecureStack, auth_settings, call, engine, secure_stack

LIST = engine("ListFlowRuns")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_bucket_allows_a_burst_then_the_rate() -> None:
    clock = Clock()
    limiter = RateLimiter(RateLimit(per_second=2.0, burst=3), clock)
    for _ in range(3):
        limiter.take("a")
    with pytest.raises(ResourceExhausted) as caught:
        limiter.take("a")
    assert caught.value.reason == "RATE_LIMITED"
    assert caught.value.metadata["retry_after_ms"] == "500"
    limiter.take("b")  # another subject has its own bucket
    clock.now += 0.5  # one token back at 2/s
    limiter.take("a")
    with pytest.raises(ResourceExhausted):
        limiter.take("a")
    clock.now += 60  # refills up to the burst, not beyond
    for _ in range(3):
        limiter.take("a")
    with pytest.raises(ResourceExhausted):
        limiter.take("a")


def test_idle_buckets_are_dropped_past_the_bound() -> None:
    clock = Clock()
    limiter = RateLimiter(RateLimit(per_second=1.0, burst=1), clock)
    for i in range(MAX_BUCKETS):
        limiter.take(f"s{i}")
    clock.now += 10  # every bucket has refilled: idle
    limiter.take("busy")
    limiter.take("one-more")
    assert len(limiter._buckets) <= 2
    with pytest.raises(ResourceExhausted):
        limiter.take("busy")  # a bucket in use is kept


async def test_a_subject_over_its_rate_is_resource_exhausted(
    pki: Pki, keys: Keys, token_file: Path
) -> None:
    limited = auth_settings(keys, token_file, RateLimit(per_second=0.001, burst=3))
    async with secure_stack(pki, keys, token_file, auth=limited) as stack:
        eager = keys.mint("eager", "viewer", ["ns-a"])
        calm = keys.mint("calm", "viewer", ["ns-a"])
        request = engine_pb2.ListFlowRunsRequest(namespace="ns-a")
        codes = [(await call(stack.channel, LIST, request, eager)).code for _ in range(3)]
        assert codes == [grpc.StatusCode.OK] * 3
        over = await call(stack.channel, LIST, request, eager)
        assert (over.code, over.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED")
        assert (await call(stack.channel, LIST, request, calm)).code == grpc.StatusCode.OK


async def test_a_message_over_the_size_limit_is_refused(
    pki: Pki, keys: Keys, token_file: Path
) -> None:
    async with secure_stack(pki, keys, token_file, max_message_bytes=64 * 1024) as stack:
        admin = keys.mint("root", "admin", "*")
        request = engine_pb2.StartFlowRequest(
            namespace="ns-big", definition_name="hello", input_json=json.dumps("x" * 100_000)
        )
        outcome = await call(stack.channel, engine("StartFlow"), request, admin)
        assert outcome.code == grpc.StatusCode.RESOURCE_EXHAUSTED


async def _published(stack: SecureStack, admin: str, namespace: str) -> None:
    created = await call(stack.channel, engine("CreateDefinitionVersion"),
                         engine_pb2.CreateDefinitionVersionRequest(
                             namespace=namespace, name="hello",
                             document=json.dumps(HELLO_DOCUMENT)), admin)
    assert created.code == grpc.StatusCode.OK, created
    published = await call(stack.channel, engine("PublishDefinitionVersion"),
                           engine_pb2.PublishDefinitionVersionRequest(
                               namespace=namespace, name="hello", version=1), admin)
    assert published.code == grpc.StatusCode.OK, published


@pytest.mark.parametrize(
    ("case", "code"),
    [("oversized", grpc.StatusCode.RESOURCE_EXHAUSTED),
     ("deeply nested", grpc.StatusCode.INVALID_ARGUMENT)],
)
async def test_oversized_and_deep_payloads_are_refused_and_nothing_written(
    stack: SecureStack, keys: Keys, case: str, code: grpc.StatusCode
) -> None:
    admin = keys.mint("root", "admin", "*")
    namespace = f"ns-{case.replace(' ', '-')}"
    await _published(stack, admin, namespace)
    payload = (json.dumps("x" * (3 * 1024 * 1024)) if case == "oversized"
               else "[" * 200 + "]" * 200)
    start = engine_pb2.StartFlowRequest(namespace=namespace, definition_name="hello",
                                        input_json=payload)
    outcome = await call(stack.channel, engine("StartFlow"), start, admin)
    assert outcome.code == code, outcome
    listed = await call(stack.channel, LIST, engine_pb2.ListFlowRunsRequest(namespace=namespace),
                        admin)
    assert list(listed.response.flows) == []

