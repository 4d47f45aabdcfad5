"""AppendStream messages that carry several commands (`more`), over real gRPC on loopback, on
both backends: each command is answered on its own, answers share messages only with a client
that sent `more`, and a malformed message ends the stream with INVALID_ARGUMENT."""

from __future__ import annotations

import asyncio

import grpc
import grpc.aio
import pytest

from flowledger.errors import InvalidArgument
from flowledger.v1 import store_pb2
from tests.fixtures.store_server import RunningStore
from tests.store_service.helpers import create_flow, ev, ns, read_all
from tests.store_service.test_append_stream import BOUND, Stream, _metric, command


def message(*commands: tuple[int, store_pb2.AppendEventsRequest]) -> store_pb2.AppendStreamRequest:
    """One request message: the first command in its own fields, the others in `more`."""
    (rid, first), *rest = commands
    return store_pb2.AppendStreamRequest(
        request_id=rid, append=first,
        more=[store_pb2.AppendStreamRequest(request_id=r, append=c) for r, c in rest],
    )


async def answers_to(
    stream: Stream, count: int
) -> tuple[dict[int, store_pb2.AppendStreamResponse], int]:
    """Read until ``count`` commands are answered: the answers by request_id, and how many
    response messages carried them. An id answered twice fails the test."""
    answers: dict[int, store_pb2.AppendStreamResponse] = {}
    messages = 0
    while len(answers) < count:
        response = await stream.answer()
        messages += 1
        assert not any(a.more for a in response.more), "an answer in `more` carries more"
        for answer in (response, *response.more):
            assert answer.request_id not in answers, f"{answer.request_id} answered twice"
            answers[answer.request_id] = answer
    return answers, messages


async def test_each_command_of_a_message_is_answered_on_its_own(
    store_service: RunningStore,
) -> None:
    stub, space = store_service.stub, ns()
    flows = [(await create_flow(stub, space)).flow_id for _ in range(8)]
    stream = Stream(store_service)
    received = _metric("grpc_server_msg_received_total")
    sent = _metric("grpc_server_msg_sent_total")
    try:
        await stream.call.write(message(
            *((100 + i, command(space, f, 0, ev(flow=i))) for i, f in enumerate(flows))
        ))
        answers, messages = await answers_to(stream, len(flows))
        # A command that fails is answered in its place; the others are applied.
        await stream.call.write(message(
            (200, command(space, flows[0], 0, ev(n=2))),  # stale: flows[0] is at version 1
            (201, command(space, flows[1], 1, ev(n=2))),
        ))
        second, second_messages = await answers_to(stream, 2)
        await stream.call.done_writing()
        assert await stream.end() is None
    finally:
        stream.call.cancel()
    assert sorted(answers) == [100 + i for i in range(len(flows))]
    assert all(a.result.last_version == 1 for a in answers.values()), answers
    # They completed together, so their answers share messages.
    assert messages < len(flows)
    assert _metric("grpc_server_msg_received_total") == received + 2
    assert _metric("grpc_server_msg_sent_total") == sent + messages + second_messages
    assert second[200].WhichOneof("outcome") == "error"
    assert second[201].result.last_version == 2
    for i, flow_id in enumerate(flows):
        log = await read_all(stub, space, flow_id)
        assert [e.version for e in log] == ([1, 2] if i == 1 else [1])


async def test_a_client_that_never_sends_more_gets_one_answer_per_message(
    store_service: RunningStore,
) -> None:
    stub, space = store_service.stub, ns()
    flows = [(await create_flow(stub, space)).flow_id for _ in range(8)]
    stream = Stream(store_service)
    try:
        for i, flow_id in enumerate(flows):  # all in flight before any answer is read
            await stream.send(command(space, flow_id, 0, ev(flow=i)), request_id=i + 1)
        answers, messages = await answers_to(stream, len(flows))
        await stream.call.done_writing()
        assert await stream.end() is None
    finally:
        stream.call.cancel()
    assert sorted(answers) == list(range(1, len(flows) + 1))
    assert messages == len(flows)


@pytest.mark.parametrize(
    ("nested", "field"),
    [
        (store_pb2.AppendStreamRequest(request_id=1), "more[0].request_id"),  # reused
        (store_pb2.AppendStreamRequest(request_id=2, more=[store_pb2.AppendStreamRequest(
            request_id=3)]), "more[0].more"),
    ],
    ids=["request_id-reused-within-the-message", "more-nested-in-more"],
)
async def test_a_malformed_message_ends_the_stream_after_the_commands_before_it(
    store_service: RunningStore, nested: store_pb2.AppendStreamRequest, field: str
) -> None:
    stub, space = store_service.stub, ns()
    first, second = [(await create_flow(stub, space)).flow_id for _ in range(2)]
    request = message((1, command(space, first, 0, ev(n=1))))
    bad = request.more.add()
    bad.CopyFrom(nested)
    bad.append.CopyFrom(command(space, second, 0, ev(n=2)))
    stream = Stream(store_service)
    try:
        await stream.call.write(request)
        answered = await stream.answer()
        assert (answered.request_id, answered.result.last_version) == (1, 1)
        error = await stream.failed(grpc.StatusCode.INVALID_ARGUMENT)
    finally:
        stream.call.cancel()
    assert isinstance(error, InvalidArgument)
    assert [v.field for v in error.violations] == [field]
    assert [e.version for e in await read_all(stub, space, first)] == [1]
    assert await read_all(stub, space, second) == []  # the malformed command wrote nothing


async def test_answers_wait_for_no_one(store_service: RunningStore) -> None:
    """A lone command on a coalescing stream is answered without waiting for company."""
    stub, space = store_service.stub, ns()
    flows = [(await create_flow(stub, space)).flow_id for _ in range(2)]
    stream = Stream(store_service)
    try:
        await stream.call.write(message(
            (1, command(space, flows[0], 0, ev(n=1))), (2, command(space, flows[1], 0, ev(n=1)))
        ))
        await answers_to(stream, 2)
        await stream.send(command(space, flows[0], 1, ev(n=2)), request_id=3)
        alone = await asyncio.wait_for(stream.answer(), BOUND)
        await stream.call.done_writing()
        assert await stream.end() is None
    finally:
        stream.call.cancel()
    assert (alone.request_id, alone.result.last_version, len(alone.more)) == (3, 2, 0)
