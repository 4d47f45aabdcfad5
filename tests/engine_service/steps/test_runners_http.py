"""The ``http`` step runner against a real local HTTP server, through the in-process engine
(the memory store, and the Postgres store where the log matters: ``engine`` runs over both)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from engine_service.core.replay import StepStatus
from engine_service.definitions.builder import Flow
from engine_service.definitions.definition import FlowDefinition
from engine_service.run.engine import Engine
from engine_service.steps.context import StepContext, StepKind, StepResult, success
from engine_service.steps.plugins import build_registry
from engine_service.steps.registry import StepRegistry, StepType
from engine_service.steps.runners import install
from flowledger.canonical import JsonValue
from flowledger.errors import InvalidArgument
from flowledger_core.domain import Append, AppendResult, EventType, FlowFilter, Page
from flowledger_core.ports import EventStore
from store_service.adapters.memory import MemoryEventStore
from tests.engine_service.helpers import AppendFn, DelegatingStore, verify_independently
from tests.engine_service.steps.runners_server import (
    LOOPBACK,
    Answer,
    ScriptedServer,
    free_port,
    server,
)

__all__ = ["server"]  # the fixture

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "http.yaml"


def seed(ctx: StepContext) -> StepResult:
    return success({"id": 7, "n": 2})


@pytest.fixture
async def registry() -> AsyncIterator[StepRegistry]:
    """The runners and a source, closed (HTTP connections released) after the test."""
    registry = StepRegistry()
    install(registry, LOOPBACK)
    registry.register(StepType("t.seed", StepKind.SOURCE, seed))
    yield registry
    await registry.aclose()


@pytest.fixture
def memory_engine(memory_store: MemoryEventStore, registry: StepRegistry) -> Engine:
    return Engine(memory_store, registry=registry)


def call_flow(**config: JsonValue) -> FlowDefinition:
    return Flow("http").source("seed", "t.seed").transform("call", "http", **config).build()


async def test_fails_twice_then_answers_with_one_idempotency_key(
    engine: Engine, store: EventStore, server: ScriptedServer, ns: str
) -> None:
    server.script(Answer(503, "busy"), Answer(503, "busy"), Answer(200, {"order": 7}))
    run = await engine.start(
        call_flow(url=f"{server.url}/orders", retries=2, retry_backoff_ms=1), namespace=ns
    )
    state = await run.run_to_end()
    assert state.completed
    assert await run.event_variants() == "ISFSFC"  # one attempt: the retries are inside it
    assert await run.last_step_output("call") == [
        {"status": 200, "headers": {"content-type": "application/json"}, "body": {"order": 7}}
    ]
    keys = [seen.headers["idempotency-key"] for seen in server.seen]
    assert keys == [f"{run.flow_id}:call:1"] * 3
    assert all(seen.headers["user-agent"].startswith("flowledger/") for seen in server.seen)
    # The answer is an artifact: replaying, re-attaching and verifying never call again.
    await verify_independently(store, run)
    assert (await engine.verify(ns, run.flow_id)).ok
    again = await engine.attach(run.flow_id, namespace=ns)
    assert (await again.run_to_end()).completed
    assert len(server.seen) == 3


async def test_a_text_answer_and_the_response_modes(
    memory_engine: Engine, server: ScriptedServer
) -> None:
    server.script(Answer(200, "plain words", content_type="text/plain; charset=utf-8"))
    run = await memory_engine.run(call_flow(url=f"{server.url}/t"))
    assert await run.last_step_output("call") == [
        {"status": 200, "headers": {"content-type": "text/plain; charset=utf-8"},
         "body": "plain words"}
    ]  # fmt: skip

    server.script(Answer(200, {"a": 1}, headers={"X-Trace": "abc"}))
    run = await memory_engine.run(
        call_flow(url=f"{server.url}/t", response="text", response_headers=["X-Trace"])
    )
    assert await run.last_step_output("call") == [
        {"status": 200, "headers": {"x-trace": "abc"}, "body": '{"a": 1}'}
    ]

    server.script(Answer(200, "not json", content_type="text/plain"))
    run = await memory_engine.run(call_flow(url=f"{server.url}/t", response="json"))
    state = await run.state()
    assert state.failed
    call = state.step("call")
    assert call is not None
    assert call.error_type == "InvalidResponse"


async def test_url_query_headers_and_body_are_templated(
    memory_engine: Engine, server: ScriptedServer
) -> None:
    server.script(Answer(201, {"created": True}))
    flow = call_flow(
        method="POST",
        url="{{ input.base }}/orders/{{ results.seed[0].id }}",
        query={"tag": "{{ input.tag }}", "limit": 5},
        headers={"Authorization": "Bearer {{ variables.token }}"},
        body={
            "count": "{{ inputs[0].n }}",  # one whole placeholder keeps its type
            "label": "order-{{ results.seed[0].id }} x{{ inputs[0].n }}",
            "items": ["{{ input.items }}", "fixed"],
            "untouched": None,
        },
    )
    run = await memory_engine.run(
        flow,
        {"base": server.url, "tag": "a b&c", "items": [1, 2]},
        variables={"token": "s3cret"},
    )
    assert (await run.state()).completed
    [seen] = server.seen
    assert seen.method == "POST"
    assert seen.path == "/orders/7?limit=5&tag=a+b%26c"  # canonical params: names sorted
    assert seen.headers["authorization"] == "Bearer s3cret"
    assert seen.headers["content-type"] == "application/json"
    assert seen.json() == {
        "count": 2,
        "label": "order-7 x2",
        "items": [[1, 2], "fixed"],
        "untouched": None,
    }
    assert await run.last_step_output("call") == [
        {"status": 201, "headers": {"content-type": "application/json"}, "body": {"created": True}}
    ]


async def test_a_string_body_is_sent_as_text(memory_engine: Engine, server: ScriptedServer) -> None:
    run = await memory_engine.run(
        call_flow(method="PUT", url=f"{server.url}/t", body="n={{ inputs[0].n }}")
    )
    assert (await run.state()).completed
    [seen] = server.seen
    assert (seen.method, seen.body) == ("PUT", b"n=2")
    assert seen.headers["content-type"] == "text/plain; charset=utf-8"


async def test_an_unknown_placeholder_fails_the_step_clearly(
    memory_engine: Engine, server: ScriptedServer
) -> None:
    run = await memory_engine.run(call_flow(url=f"{server.url}/{{{{ input.nmae }}}}"), {"name": 1})
    call = (await run.state()).step("call")
    assert call is not None
    assert call.error_type == "TemplateError"
    assert "input.nmae" in (call.reason or "")
    assert server.seen == []  # nothing was sent


async def test_an_unexpected_status_is_a_recorded_step_failure(
    engine: Engine, server: ScriptedServer, ns: str
) -> None:
    server.script(Answer(404, {"error": "no such order"}))
    run = await engine.start(call_flow(url=f"{server.url}/orders/9", retries=3), namespace=ns)
    state = await run.run_to_end()
    assert state.failed
    assert await run.event_variants() == "ISFSXE"
    call = state.step("call")
    assert call is not None
    assert call.status is StepStatus.FAILED
    assert call.error_type == "HttpStatusError"
    assert "HTTP 404" in (call.reason or "")
    assert "no such order" in (call.reason or "")
    assert len(server.seen) == 1  # a 4xx is an answer, not a transient failure


async def test_expect_status_decides_what_succeeds(
    memory_engine: Engine, server: ScriptedServer
) -> None:
    server.script(Answer(503, "down"))
    run = await memory_engine.run(
        call_flow(url=f"{server.url}/t", retries=1, retry_backoff_ms=1)
    )
    call = (await run.state()).step("call")
    assert call is not None
    assert call.error_type == "HttpStatusError"
    assert "HTTP 503 (after 2 requests)" in (call.reason or "")
    assert len(server.seen) == 2

    server.seen.clear()
    server.script(Answer(503, {"state": "down"}))
    run = await memory_engine.run(
        call_flow(url=f"{server.url}/t", expect_status=[503], retries=2)
    )
    assert await run.last_step_output("call") == [
        {"status": 503, "headers": {"content-type": "application/json"}, "body": {"state": "down"}}
    ]
    assert len(server.seen) == 1  # expected, so not retried

    server.seen.clear()
    server.script(Answer(200, {}))
    run = await memory_engine.run(call_flow(url=f"{server.url}/t", expect_status=[204]))
    call = (await run.state()).step("call")
    assert call is not None
    assert call.error_type == "HttpStatusError"


async def test_a_silent_server_times_the_request_out(
    memory_engine: Engine, server: ScriptedServer
) -> None:
    server.script(Answer(hold=True))
    run = await memory_engine.run(call_flow(url=f"{server.url}/slow", timeout_seconds=0.2))
    call = (await run.state()).step("call")
    assert call is not None
    assert call.error_type == "Timeout"
    assert "0.2 s" in (call.reason or "")
    assert len(server.seen) == 1  # a timeout is not retried inside the attempt


async def test_a_refused_connection_is_retried_then_fails(memory_engine: Engine) -> None:
    url = f"http://127.0.0.1:{free_port()}/nobody"
    run = await memory_engine.run(call_flow(url=url, retries=1, retry_backoff_ms=1))
    call = (await run.state()).step("call")
    assert call is not None
    assert call.error_type == "HttpConnectionError"


async def test_an_oversized_answer_fails_the_step(
    memory_engine: Engine, server: ScriptedServer
) -> None:
    server.script(Answer(200, "x" * 5000, content_type="text/plain"))
    run = await memory_engine.run(call_flow(url=f"{server.url}/big", max_response_bytes=1000))
    call = (await run.state()).step("call")
    assert call is not None
    assert call.error_type == "ResponseTooLarge"


class Crash(BaseException):
    """The process dying after the call and before its StepFinished is stored."""


async def test_a_re_executed_attempt_sends_the_same_key(
    store: EventStore, registry: StepRegistry, server: ScriptedServer, ns: str
) -> None:
    crashed: list[str] = []

    async def die_before_recording(cmd: Append, inner: AppendFn) -> AppendResult:
        finishing = any(e.type is EventType.STEP_FINISHED for e in cmd.events)
        if finishing and ":s1:" in cmd.command_id and not crashed:
            crashed.append(cmd.command_id)
            raise Crash
        return await inner(cmd)

    doomed = Engine(DelegatingStore(store, die_before_recording), registry=registry)
    run = await doomed.start(call_flow(url=f"{server.url}/pay"), namespace=ns)
    with pytest.raises(Crash):
        await run.run_to_end()
    assert len(server.seen) == 1
    survivor = await Engine(store, registry=registry).attach(run.flow_id, namespace=ns)
    assert (await survivor.run_to_end()).completed
    keys = [seen.headers["idempotency-key"] for seen in server.seen]
    assert keys == [f"{run.flow_id}:call:1"] * 2  # the far side can tell it is the same call


@pytest.mark.parametrize(
    ("config", "fields"),
    [
        ({}, ["steps[1].config.url"]),
        ({"url": "ftp://x"}, ["steps[1].config.url"]),
        ({"url": "http://x", "method": "FETCH"}, ["steps[1].config.method"]),
        ({"url": "http://x", "timeout_seconds": 0}, ["steps[1].config.timeout_seconds"]),
        ({"url": "http://x", "retries": 11}, ["steps[1].config.retries"]),
        ({"url": "http://x", "expect_status": [99]}, ["steps[1].config.expect_status[0]"]),
        ({"url": "http://x", "response": "xml"}, ["steps[1].config.response"]),
        ({"url": "http://x", "colour": "red"}, ["steps[1].config.colour"]),
        ({"url": "http://x", "headers": {"A": 1}}, ["steps[1].config.headers.A"]),
        ({"url": "http://x", "headers": {"Host": "y"}}, ["steps[1].config.headers.Host"]),
        ({"url": "http://x", "body": {"a": ["{{ input. }}"]}}, ["steps[1].config.body.a[0]"]),
        ({"url": "http://x/{{ input.id"}, ["steps[1].config.url"]),
    ],
)
def test_a_bad_config_is_refused_with_its_field_path(
    config: dict[str, JsonValue], fields: list[str]
) -> None:
    document = {
        "name": "bad",
        "steps": [
            {"id": "seed", "type": "t.seed"},
            {"id": "call", "type": "http", "config": config},
        ],
    }
    registry = StepRegistry()
    install(registry, LOOPBACK)
    registry.register(StepType("t.seed", StepKind.SOURCE, seed))
    with pytest.raises(InvalidArgument) as exc:
        FlowDefinition.from_dict(document, registry)
    assert [v.field for v in exc.value.violations] == fields


async def test_a_bad_config_is_refused_before_anything_is_written(
    memory_engine: Engine, memory_store: MemoryEventStore, ns: str
) -> None:
    bad = Flow("bad").source("seed", "t.seed").transform("call", "http", url="http://x", retries=-1)
    with pytest.raises(InvalidArgument) as exc:
        await memory_engine.start(bad.build(), namespace=ns)
    assert [v.field for v in exc.value.violations] == ["steps[1].config.retries"]
    assert (await memory_store.list_flows(FlowFilter(ns), Page())).flows == ()


async def test_http_can_be_the_first_step(memory_engine: Engine, server: ScriptedServer) -> None:
    document = {
        "name": "fetch",
        "steps": [{"id": "fetch", "type": "http", "config": {"url": "{{ input.url }}"}}],
    }
    definition = FlowDefinition.from_dict(document, memory_engine.registry)
    assert definition.steps[0].kind is StepKind.SOURCE
    run = await memory_engine.run(definition, {"url": f"{server.url}/first"})
    assert (await run.state()).completed
    assert [seen.path for seen in server.seen] == ["/first"]


async def test_the_example_definition_runs(server: ScriptedServer) -> None:
    """examples/http.yaml, through the default registry (the runners are built in)."""
    server.script(Answer(200, {"id": 7, "status": "paid", "total": 42}), Answer(204, ""))
    # The runners as a replica installs them (over the default registry's), with loopback
    # allowed as flowctl up allows it (ENGINE_EGRESS_ALLOW).
    registry = build_registry((), LOOPBACK)
    definition = FlowDefinition.from_yaml(EXAMPLE.read_text(), registry)
    store = MemoryEventStore()
    try:
        run = await Engine(store, registry=registry).run(
            definition, {"base_url": server.url, "order_id": 7}
        )
        assert (await run.state()).completed, await run.state()
    finally:
        await registry.aclose()
        await store.close()
    fetch, update = server.seen
    assert (fetch.method, fetch.path) == ("GET", "/orders/7")
    assert (update.method, update.path) == ("PATCH", "/tables/orders/fields")
    assert update.json()["fields"] == {"status": "paid", "total": 42}
