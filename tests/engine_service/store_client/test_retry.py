"""The retry arithmetic and the channel configuration of the store client (no network)."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from engine_service.store_client.channel import STORE_SERVICE, channel_options
from engine_service.store_client.retry import RetryBudget, StoreClientSettings, is_transient
from flowledger.errors import (
    Aborted,
    DeadlineExceeded,
    InternalError,
    NotFound,
    Unavailable,
    VersionConflict,
)

SETTINGS = StoreClientSettings(
    call_timeout=2.0,
    retry_budget=10.0,
    initial_backoff=0.1,
    max_backoff=1.0,
    backoff_multiplier=2.0,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_only_unavailable_and_deadline_exceeded_are_transient() -> None:
    assert is_transient(Unavailable("x"))
    assert is_transient(DeadlineExceeded("x"))
    assert not is_transient(VersionConflict("f", 1, 2))
    assert not is_transient(Aborted("serialization failures past the budget"))
    assert not is_transient(NotFound("x"))
    assert not is_transient(InternalError("x"))


def test_backoff_grows_exponentially_up_to_the_cap_with_full_jitter() -> None:
    budget = RetryBudget(SETTINGS, what="t", clock=FakeClock(), rng=lambda: 0.999999)
    ceilings = []
    for _ in range(6):
        ceilings.append(round(budget.next_delay(), 3))
        budget._failures += 1  # what backoff() does, without sleeping
    assert ceilings == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert RetryBudget(SETTINGS, what="t", rng=lambda: 0.0).next_delay() == 0.0


def test_attempt_deadline_is_the_call_timeout_or_what_is_left() -> None:
    clock = FakeClock()
    budget = RetryBudget(SETTINGS, what="t", clock=clock)
    assert budget.attempt_timeout() == 2.0
    clock.now += 9.5
    assert budget.attempt_timeout() == pytest.approx(0.5)
    budget.reset()
    assert budget.attempt_timeout() == 2.0
    assert budget.remaining() == 10.0


async def test_backoff_raises_unavailable_once_the_budget_cannot_cover_the_wait() -> None:
    clock = FakeClock()
    budget = RetryBudget(SETTINGS, what="GetFlow", clock=clock, rng=lambda: 0.0)
    await budget.backoff(DeadlineExceeded("slow"))  # a zero wait: returns at once
    clock.now += 10.0
    with pytest.raises(Unavailable) as info:
        await budget.backoff(DeadlineExceeded("slow"))
    assert info.value.reason == "UNAVAILABLE"
    assert info.value.metadata["attempts"] == "2"
    assert info.value.metadata["last_code"] == "DEADLINE_EXCEEDED"
    assert "GetFlow" in info.value.message
    assert isinstance(info.value.__cause__, DeadlineExceeded)


def test_exhaustion_keeps_the_reason_and_metadata_of_an_unavailable_store() -> None:
    budget = RetryBudget(SETTINGS, what="t")
    error = budget.exhausted(
        Unavailable("db down", reason="DATABASE_UNAVAILABLE", metadata={"k": "v"})
    )
    assert error.reason == "DATABASE_UNAVAILABLE"
    assert error.metadata["k"] == "v"


@pytest.mark.parametrize(
    "change",
    [
        {"call_timeout": 0.0},
        {"retry_budget": -1.0},
        {"max_backoff": float("inf")},
        {"backoff_multiplier": 0.5},
        {"keepalive_time": 0.0},
        {"max_receive_message_bytes": 0},
    ],
)
def test_settings_refuse_nonsense(change: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(change))):
        replace(SETTINGS, **change)


def test_channel_retries_unavailable_only_and_extra_options_win() -> None:
    options = dict(channel_options(SETTINGS, [("grpc.max_reconnect_backoff_ms", 5)]))
    assert options["grpc.enable_retries"] == 1
    assert options["grpc.max_reconnect_backoff_ms"] == 5
    config = json.loads(options["grpc.service_config"])
    (method,) = config["methodConfig"]
    assert method["name"] == [{"service": STORE_SERVICE}]
    assert method["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]  # never ABORTED
    assert "retryThrottling" in config
    assert options["grpc.keepalive_time_ms"] == 330_000
    assert "grpc.keepalive_time_ms" not in dict(
        channel_options(replace(SETTINGS, keepalive_time=None))
    )
