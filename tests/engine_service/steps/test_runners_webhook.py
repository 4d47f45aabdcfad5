"""The ``field_update`` step runner against a real local HTTP server that checks signatures."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import AsyncIterator

import pytest

from engine_service.definitions.builder import Flow
from engine_service.definitions.definition import FlowDefinition
from engine_service.run.engine import Engine
from engine_service.steps.context import StepContext, StepKind, StepResult, success
from engine_service.steps.registry import StepRegistry, StepType
from engine_service.steps.runners import install
from engine_service.steps.webhook import sign
from flowledger.canonical import JsonValue, canonical_bytes
from flowledger.errors import InvalidArgument
from flowledger_core.ports import EventStore
from tests.engine_service.steps.runners_server import LOOPBACK, Answer, ScriptedServer, server

__all__ = ["server"]  # the fixture

SECRET = "a-webhook-secret-of-some-length"


def price(ctx: StepContext) -> StepResult:
    return success({"total": 42.5, "currency": "EUR"})


@pytest.fixture
async def registry() -> AsyncIterator[StepRegistry]:
    registry = StepRegistry()
    install(registry, LOOPBACK)
    registry.register(StepType("t.price", StepKind.SOURCE, price))
    yield registry
    await registry.aclose()


def update_flow(**config: JsonValue) -> FlowDefinition:
    base: dict[str, JsonValue] = {
        "record_id": "{{ input.row }}",
        "fields": {"total": "{{ inputs[0].total }}", "note": "paid in {{ inputs[0].currency }}"},
    }
    return (
        Flow("update")
        .source("price", "t.price")
        .sink("update", "field_update", **{**base, **config})
        .build()
    )


async def test_sends_the_record_signed_and_records_what_it_set(
    engine: Engine, server: ScriptedServer, ns: str
) -> None:
    server.secret = SECRET  # the server answers 401 to a body whose signature is wrong
    server.script(Answer(204, ""))
    run = await engine.start(
        update_flow(url=f"{server.url}/hook", secret=SECRET), {"row": "r-17"}, namespace=ns
    )
    state = await run.run_to_end()
    assert state.completed
    [seen] = server.seen
    assert seen.method == "PATCH"
    assert seen.headers["content-type"] == "application/json"
    assert seen.headers["idempotency-key"] == f"{run.flow_id}:update:1"
    body = {
        "record_id": "r-17",
        "fields": {"total": 42.5, "note": "paid in EUR"},
        "flow_id": run.flow_id,
        "step_id": "update",
    }
    assert seen.body == canonical_bytes(body)  # exactly the canonical bytes that were signed
    expected = hmac.new(SECRET.encode(), seen.body, hashlib.sha256).hexdigest()
    assert seen.headers["x-flowledger-signature"] == f"sha256={expected}"
    assert await run.last_step_output("update") == [
        {"status": 204, "record_id": "r-17", "fields": {"total": 42.5, "note": "paid in EUR"}}
    ]


async def test_a_wrong_secret_is_refused_by_the_receiver(
    engine: Engine, server: ScriptedServer, ns: str
) -> None:
    server.secret = SECRET
    run = await engine.start(
        update_flow(url=f"{server.url}/hook", secret="not-the-secret"), {"row": 1}, namespace=ns
    )
    state = await run.run_to_end()
    assert state.failed
    update = state.step("update")
    assert update is not None
    assert update.error_type == "HttpStatusError"
    assert "HTTP 401" in (update.reason or "")


async def test_the_secret_can_come_from_the_engine_environment(
    engine: Engine, server: ScriptedServer, ns: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.secret = SECRET
    flow = update_flow(url=f"{server.url}/hook", secret_env="T_WEBHOOK_SECRET", method="POST")
    monkeypatch.delenv("T_WEBHOOK_SECRET", raising=False)
    missing = await (await engine.start(flow, {"row": 1}, namespace=ns)).run_to_end()
    update = missing.step("update")
    assert update is not None
    assert update.error_type == "MissingSecret"
    assert server.seen == []

    monkeypatch.setenv("T_WEBHOOK_SECRET", SECRET)
    run = await engine.start(flow, {"row": 2}, namespace=ns)
    assert (await run.run_to_end()).completed
    [seen] = server.seen
    assert seen.method == "POST"
    assert seen.json()["record_id"] == 2  # a whole placeholder keeps the number
    assert seen.headers["x-flowledger-signature"] == sign(SECRET, seen.body)
    assert SECRET not in str(await run.events())  # not in the log


async def test_without_a_secret_nothing_is_signed(
    engine: Engine, store: EventStore, server: ScriptedServer, ns: str
) -> None:
    server.script(Answer(500, "oops"), Answer(200, {"ok": True}))
    run = await engine.start(
        update_flow(url=f"{server.url}/hook", retries=1, retry_backoff_ms=1), {"row": 3},
        namespace=ns,
    )
    assert (await run.run_to_end()).completed
    assert len(server.seen) == 2
    assert all("x-flowledger-signature" not in seen.headers for seen in server.seen)
    assert len({seen.headers["idempotency-key"] for seen in server.seen}) == 1


async def test_a_record_id_must_render_to_a_string_or_an_integer(
    engine: Engine, server: ScriptedServer, ns: str
) -> None:
    run = await engine.start(
        update_flow(url=f"{server.url}/hook"), {"row": {"not": "an id"}}, namespace=ns
    )
    update = (await run.run_to_end()).step("update")
    assert update is not None
    assert update.error_type == "TemplateError"
    assert server.seen == []


@pytest.mark.parametrize(
    ("config", "fields"),
    [
        ({"url": "http://x", "fields": {"a": 1}}, ["steps[1].config.record_id"]),
        ({"url": "http://x", "record_id": "1", "fields": {}}, ["steps[1].config.fields"]),
        ({"url": "http://x", "record_id": "1", "fields": {"a": 1}, "method": "GET"},
         ["steps[1].config.method"]),
        ({"url": "http://x", "record_id": "1", "fields": {"a": 1}, "secret": "s",
          "secret_env": "S"}, ["steps[1].config.secret_env"]),
        ({"url": "http://x", "record_id": "{{ ]", "fields": {"a": 1}},
         ["steps[1].config.record_id"]),
        ({"url": "http://x", "record_id": "1", "fields": {"a": "{{ input.[ }}"}},
         ["steps[1].config.fields.a"]),
    ],
)  # fmt: skip
def test_a_bad_config_is_refused_with_its_field_path(
    config: dict[str, JsonValue], fields: list[str]
) -> None:
    document = {
        "name": "bad",
        "steps": [
            {"id": "price", "type": "t.price"},
            {"id": "update", "type": "field_update", "config": config},
        ],
    }
    registry = StepRegistry()
    install(registry, LOOPBACK)
    registry.register(StepType("t.price", StepKind.SOURCE, price))
    with pytest.raises(InvalidArgument) as exc:
        FlowDefinition.from_dict(document, registry)
    assert [v.field for v in exc.value.violations] == fields
