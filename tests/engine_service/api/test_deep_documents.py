"""Hostile documents over the engine API (both store backends): definitions nested 10,000 deep in
JSON or YAML, YAML alias bombs and self-references, and 10,000-deep JSON in every other JSON field
a caller sends (flow input, signal payload, branch params, task outputs). Each is INVALID_ARGUMENT
on its field, answered at once, and writes nothing (flowledger_core.documents,
canonical.parse_json)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import grpc
import grpc.aio
import pytest

from flowledger import rpc_status
from flowledger.client import FlowledgerClient
from flowledger.types import FlowStatus
from flowledger.v1 import engine_pb2, engine_pb2_grpc, worker_pb2, worker_pb2_grpc
from flowledger.worker import TaskClient
from tests.engine_service.api.conftest import BOUND_S, HELLO_DOCUMENT, Stack, published

DEPTH = 10_000
DEEP_JSON = "[" * DEPTH + "]" * DEPTH


def _deep_config_json() -> str:
    """The hello document whose first step's config holds a 10,000-deep array."""
    text = json.dumps(HELLO_DOCUMENT)
    return text.replace('{"name": "world"}', '{"name": "world", "x": ' + DEEP_JSON + "}", 1)


def _billion_laughs() -> str:
    """462 bytes of YAML that stand for about 1.6 MB (the issue's probe)."""
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    previous = "a"
    for name in "bcdefgh":
        lines.append(f"{name}: &{name} [" + ",".join([f"*{previous}"] * 9) + "]")
        previous = name
    return "".join(f"x{line}\n" for line in lines) + (
        "steps:\n  - {id: greet, type: hello.greet, config: {name: world, x: *h}}\n"
    )


DOCUMENTS = {
    "json, 10,000 deep": (DEEP_JSON, engine_pb2.DEFINITION_FORMAT_JSON, "nested deeper than 64"),
    "json config, 10,000 deep": (
        _deep_config_json(),
        engine_pb2.DEFINITION_FORMAT_JSON,
        "nested deeper than 64",
    ),
    "yaml flow, 10,000 deep": (
        DEEP_JSON,
        engine_pb2.DEFINITION_FORMAT_YAML,
        "nested deeper than 64",
    ),
    "yaml block, 10,000 deep": (
        "steps:\n  " + "- " * DEPTH + "x\n",  # block sequences, compact notation
        engine_pb2.DEFINITION_FORMAT_YAML,
        "nested deeper than 64",
    ),
    "yaml alias bomb": (_billion_laughs(), engine_pb2.DEFINITION_FORMAT_YAML, "aliases"),
    "yaml self-reference": (
        "steps: &s\n  - {id: greet, type: hello.greet, config: {loop: *s}}\n",
        engine_pb2.DEFINITION_FORMAT_YAML,
        "refers to itself",
    ),
}


@pytest.fixture
async def channel(stack: Stack) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(stack.engine.address) as opened:
        yield opened


def _refusal(exc: grpc.aio.AioRpcError) -> tuple[grpc.StatusCode, list[str], str]:
    error = rpc_status.from_rpc_error(exc)
    return exc.code(), [v.field for v in error.violations], error.message


def test_the_alias_bomb_is_small() -> None:
    assert len(_billion_laughs().encode()) < 600


@pytest.mark.parametrize("case", sorted(DOCUMENTS))
async def test_a_hostile_definition_document_is_invalid_argument_and_not_stored(
    channel: grpc.aio.Channel, client: FlowledgerClient, ns: str, case: str
) -> None:
    text, fmt, says = DOCUMENTS[case]
    stub = engine_pb2_grpc.EngineServiceStub(channel)
    request = engine_pb2.CreateDefinitionVersionRequest(
        namespace=ns, name="hello", document=text, format=fmt
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.CreateDefinitionVersion(request, timeout=BOUND_S)
    code, fields, message = _refusal(refused.value)
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["document"]), message
    assert says in message
    assert (await client.list_definitions(ns)).versions == ()


async def test_aliases_within_the_bound_are_ordinary_yaml(
    client: FlowledgerClient, ns: str
) -> None:
    document = (
        "defaults: {retry: &retry {max_attempts: 2, initial_interval_ms: 10}}\n"
        "steps:\n"
        "  - {id: greet, type: hello.greet, config: &cfg {name: world}}\n"
        "  - {id: shout, type: hello.shout, retry: *retry}\n"
        "  - {id: done, type: hello.done}\n"
    )
    created = await client.create_definition(ns, "hello", document, format="yaml")
    assert created.version.steps[0].config == {"name": "world"}


async def test_deep_json_in_start_signal_and_branch_fields_is_invalid_argument(
    channel: grpc.aio.Channel, client: FlowledgerClient, ns: str
) -> None:
    await published(client, ns, "hello")
    stub = engine_pb2_grpc.EngineServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as start:
        await stub.StartFlow(
            engine_pb2.StartFlowRequest(
                namespace=ns, definition_name="hello", input_json=DEEP_JSON
            ),
            timeout=BOUND_S,
        )
    assert _refusal(start.value)[:2] == (grpc.StatusCode.INVALID_ARGUMENT, ["input_json"])
    assert (await client.list_flows(ns)).flows == ()

    flow_id = (await client.start_flow(ns, "hello", {"name": "ana"})).flow_id
    ended = await client.wait_for_flow(ns, flow_id, within=BOUND_S)
    assert ended.status is FlowStatus.COMPLETED
    with pytest.raises(grpc.aio.AioRpcError) as signal:
        await stub.SignalFlow(
            engine_pb2.SignalFlowRequest(
                namespace=ns, flow_id=flow_id, name="go", payload_json=DEEP_JSON
            ),
            timeout=BOUND_S,
        )
    assert _refusal(signal.value)[:2] == (grpc.StatusCode.INVALID_ARGUMENT, ["payload_json"])
    with pytest.raises(grpc.aio.AioRpcError) as branch:
        await stub.BranchFlow(
            engine_pb2.BranchFlowRequest(
                namespace=ns, flow_id=flow_id, at_step="shout", params_json={"shout": DEEP_JSON}
            ),
            timeout=BOUND_S,
        )
    code, fields, _ = _refusal(branch.value)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert fields == ["params_json.shout"]
    assert [f.flow_id for f in (await client.list_flows(ns)).flows] == [flow_id]
    assert (await client.describe_flow(ns, flow_id)).flow.version == ended.flow.version


async def test_deep_task_outputs_are_invalid_argument_and_the_task_stays_leased(
    stack: Stack, channel: grpc.aio.Channel, client: FlowledgerClient, ns: str
) -> None:
    queue = f"q-{ns}"
    document = {
        "steps": [
            {"id": "greet", "type": "hello.greet", "config": {"name": "world"}},
            {"id": "work", "type": "task", "config": {"queue": queue}},
            {"id": "done", "type": "hello.done"},
        ]
    }
    await published(client, ns, "tasked", document)
    flow_id = (await client.start_flow(ns, "tasked", {"name": "ana"})).flow_id
    async with TaskClient(stack.engine.address, timeout=BOUND_S) as tasks:
        task = await tasks.poll(ns, [queue], "w1", wait_ms=int(BOUND_S * 1000))
        assert task is not None
        stub = worker_pb2_grpc.WorkerServiceStub(channel)
        request = worker_pb2.CompleteTaskRequest(
            namespace=ns, flow_id=flow_id, task_id=task.task_id, lease_token=task.lease_token,
            outputs_json=[DEEP_JSON],
        )  # fmt: skip
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.CompleteTask(request, timeout=BOUND_S)
        code, fields, message = _refusal(refused.value)
        assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["outputs_json[0]"]), message
        # Nothing was recorded: the same lease completes the task with a good output.
        assert await tasks.complete(task, [{"message": "HI"}]) is False
    view = await client.wait_for_flow(ns, flow_id, within=BOUND_S)
    assert view.status is FlowStatus.COMPLETED
