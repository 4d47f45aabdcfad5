"""The events-per-flow limit (``STORE_MAX_EVENTS_PER_FLOW``) on both backends alike.

An append that would take a flow's log past the limit is RESOURCE_EXHAUSTED (reason
``EVENTS_PER_FLOW_EXCEEDED``) and writes nothing: no event, no artifact, no command id, no change
of the flow. The log counts inherited and kept events too (branches, prunes); the append that
ends the flow may pass the limit by its one ending event, so a flow at its limit can always end
(an engine records why it failed, a cancel records FlowCancelled). The limit is judged only at
the version the flow is at: a stale or absurd expected_version is a conflict, an ended flow is
FLOW_ENDED.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import grpc
import grpc.aio
import pytest

from flowledger.canonical import content_hash
from flowledger.errors import FailedPrecondition, NotFound, ResourceExhausted, VersionConflict
from flowledger.v1 import store_pb2_grpc
from flowledger_core.domain import Append, EventType, FlowStatus, NewBranch, NewFlow, Prune
from flowledger_core.limits import DEFAULT_MAX_EVENTS_PER_FLOW
from flowledger_core.ports import EventStore
from flowledger_core.server import client_interceptors
from store_service.adapters.memory import MemoryEventStore
from store_service.server import serve
from store_service.settings import Limits, SettingsError, StoreSettings
from tests.fixtures.store_server import store_settings
from tests.store.conftest import BACKENDS, MAX_CONNECTIONS, MIN_CONNECTIONS
from tests.store.helpers import append, artifact, command_id, ev, new_flow, read_all, view
from tests.store_service import helpers as grpc_helpers

LIMIT = 5


@pytest.fixture(params=BACKENDS)
async def limited(request: pytest.FixtureRequest) -> AsyncIterator[EventStore]:
    """Each backend with a limit of five events per flow."""
    if request.param == "memory":
        memory = MemoryEventStore(max_events_per_flow=LIMIT)
        yield memory
        await memory.close()
        return
    from store_service.adapters.postgres import PostgresEventStore

    postgres = await PostgresEventStore.open(
        request.getfixturevalue("migrated_database_url"),
        min_connections=MIN_CONNECTIONS,
        max_connections=MAX_CONNECTIONS,
        max_events_per_flow=LIMIT,
    )
    yield postgres
    await postgres.close()


def _exceeded(exc: pytest.ExceptionInfo[ResourceExhausted]) -> None:
    assert exc.value.reason == "EVENTS_PER_FLOW_EXCEEDED"
    assert exc.value.metadata["limit"] == "max_events_per_flow"
    assert exc.value.metadata["max"] == str(LIMIT)


async def test_a_flow_fills_up_to_the_limit_and_no_further(limited: EventStore, ns: str) -> None:
    flow = await new_flow(limited, ns)
    await append(limited, ns, flow.flow_id, 0, ev(n=1), ev(n=2), ev(n=3))
    await append(limited, ns, flow.flow_id, 3, ev(n=4), ev(n=5))  # exactly the limit
    before = view(await read_all(limited, ns, flow.flow_id))
    cmd = command_id()
    with pytest.raises(ResourceExhausted) as caught:
        await append(
            limited, ns, flow.flow_id, 5, ev(n=6), artifacts=[artifact({"never": 1})], cmd=cmd
        )
    _exceeded(caught)
    # Nothing was written: events, artifact, flow head, counts.
    assert view(await read_all(limited, ns, flow.flow_id)) == before
    assert (await limited.get_flow(ns, flow.flow_id)).version == LIMIT
    assert (await limited.count_steps(ns, flow.flow_id)).events == LIMIT
    missing = await limited.get_artifacts(ns, [content_hash({"never": 1})])
    assert missing.found == ()
    # ... nor the command id: once a prune made room, the same id is a new command.
    await limited.prune(Prune(ns, flow.flow_id, 2, 5, command_id()))
    result = await append(limited, ns, flow.flow_id, 2, ev(n=6), cmd=cmd)
    assert (result.first_version, result.duplicate) == (3, False)


async def test_an_append_crossing_the_limit_is_refused_whole(limited: EventStore, ns: str) -> None:
    flow = await new_flow(limited, ns)
    await append(limited, ns, flow.flow_id, 0, ev(n=1), ev(n=2), ev(n=3))
    with pytest.raises(ResourceExhausted) as caught:
        await append(limited, ns, flow.flow_id, 3, ev(n=4), ev(n=5), ev(n=6))
    _exceeded(caught)
    assert len(await read_all(limited, ns, flow.flow_id)) == 3


async def test_the_append_that_ends_the_flow_may_pass_it_once(
    limited: EventStore, ns: str
) -> None:
    flow = await new_flow(limited, ns)
    await append(limited, ns, flow.flow_id, 0, *(ev(n=i) for i in range(LIMIT)))
    with pytest.raises(ResourceExhausted):
        await append(limited, ns, flow.flow_id, LIMIT, ev(n=99), status=FlowStatus.RUNNING)
    ended = await append(
        limited, ns, flow.flow_id, LIMIT, ev(EventType.FLOW_FAILED, error="too many events"),
        status=FlowStatus.FAILED,
    )  # fmt: skip
    assert ended.last_version == LIMIT + 1
    # Once ended, nothing more: not even another ending.
    with pytest.raises(FailedPrecondition) as ended_caught:
        await append(
            limited, ns, flow.flow_id, LIMIT + 1, ev(EventType.FLOW_CANCELLED),
            status=FlowStatus.CANCELLED,
        )  # fmt: skip
    assert ended_caught.value.reason == "FLOW_ENDED"
    assert (await limited.get_flow(ns, flow.flow_id)).version == LIMIT + 1


@pytest.mark.parametrize(
    ("status", "ending"),
    [
        (FlowStatus.COMPLETED, EventType.FLOW_COMPLETED),
        (FlowStatus.FAILED, EventType.FLOW_FAILED),
        (FlowStatus.CANCELLED, EventType.FLOW_CANCELLED),
    ],
)
async def test_past_the_limit_an_ending_adds_only_its_ending_event(
    limited: EventStore, ns: str, status: FlowStatus, ending: EventType
) -> None:
    """A terminal append that passes the limit may not carry more than the flow's ending: the
    log stays bounded by the limit plus one event."""
    flow = await new_flow(limited, ns)
    await append(limited, ns, flow.flow_id, 0, *(ev(n=i) for i in range(LIMIT)))
    other = EventType.FLOW_COMPLETED if ending is EventType.FLOW_FAILED else EventType.FLOW_FAILED
    for events in (
        [*(ev(n=i) for i in range(100)), ev(ending)],  # a flood, then the ending
        [ev(), ev(ending)],  # one event more than the ending
        [ev(ending), ev(ending)],  # endings only, but two of them
        [ev(other)],  # another status's ending
        [ev()],  # no ending at all
    ):
        with pytest.raises(ResourceExhausted) as caught:
            await append(limited, ns, flow.flow_id, LIMIT, *events, status=status)
        _exceeded(caught)
    assert (await limited.get_flow(ns, flow.flow_id)).version == LIMIT
    ended = await append(limited, ns, flow.flow_id, LIMIT, ev(ending), status=status)
    assert ended.last_version == LIMIT + 1
    after = await limited.get_flow(ns, flow.flow_id)
    assert (after.version, after.status) == (LIMIT + 1, status)


async def test_a_repeat_of_an_accepted_command_still_answers(limited: EventStore, ns: str) -> None:
    flow = await new_flow(limited, ns)
    cmd = command_id()
    first = await append(limited, ns, flow.flow_id, 0, *(ev(n=i) for i in range(LIMIT)), cmd=cmd)
    again = await append(limited, ns, flow.flow_id, 0, *(ev(n=i) for i in range(LIMIT)), cmd=cmd)
    assert again.duplicate
    assert (again.first_version, again.last_version) == (first.first_version, LIMIT)


async def test_inherited_events_count(limited: EventStore, ns: str) -> None:
    parent = await new_flow(limited, ns)
    await append(limited, ns, parent.flow_id, 0, *(ev(n=i) for i in range(4)))
    branch, _ = await limited.create_branch(NewBranch(ns, parent.flow_id, 4, "b"))
    await append(limited, ns, branch.flow_id, 4, ev(n=40))
    with pytest.raises(ResourceExhausted):
        await append(limited, ns, branch.flow_id, 5, ev(n=50))
    # The parent's own room is its own.
    await append(limited, ns, parent.flow_id, 4, ev(n=4))
    assert [e.version for e in await read_all(limited, ns, branch.flow_id)] == [1, 2, 3, 4, 5]


async def test_a_refused_append_does_not_hold_up_the_others(limited: EventStore, ns: str) -> None:
    """On Postgres the refused command never joins a group-commit batch; the rest commit."""
    full = await new_flow(limited, ns, "full")
    await append(limited, ns, full.flow_id, 0, *(ev(n=i) for i in range(LIMIT)))
    others = [await new_flow(limited, ns, f"o{i}") for i in range(8)]
    results = await asyncio.gather(
        append(limited, ns, full.flow_id, LIMIT, ev()),
        *(append(limited, ns, f.flow_id, 0, ev(), ev()) for f in others),
        return_exceptions=True,
    )
    assert isinstance(results[0], ResourceExhausted)
    assert all(not isinstance(r, BaseException) for r in results[1:]), results
    assert [(await limited.get_flow(ns, f.flow_id)).version for f in others] == [2] * 8


async def test_the_limit_is_judged_after_the_flow_and_its_version(
    limited: EventStore, ns: str
) -> None:
    """Not found, deleted, a stale (or absurd) expected_version and an ended flow come first:
    the limit is judged only at the version the flow is at."""
    huge = 2**63 - 1
    with pytest.raises(NotFound):
        await limited.append(Append(ns, str(uuid.uuid4()), huge, command_id(), (ev(),)))
    flow = await new_flow(limited, ns)
    await append(limited, ns, flow.flow_id, 0, ev(), ev())
    for claimed in (huge, LIMIT, 1):
        with pytest.raises(VersionConflict) as conflict:
            await append(limited, ns, flow.flow_id, claimed, *(ev(n=i) for i in range(LIMIT)))
        assert conflict.value.current_version == 2
        assert conflict.value.metadata["current_version"] == "2"
    branch, _ = await limited.create_branch(NewBranch(ns, flow.flow_id, 2, "b"))
    await limited.delete_branch(ns, branch.flow_id)
    with pytest.raises(FailedPrecondition) as deleted:
        await append(limited, ns, branch.flow_id, huge, ev())
    assert deleted.value.reason == "FLOW_DELETED"
    await append(limited, ns, flow.flow_id, 2, ev(EventType.FLOW_FAILED), status=FlowStatus.FAILED)
    with pytest.raises(FailedPrecondition) as ended:
        await append(limited, ns, flow.flow_id, 3, *(ev(n=i) for i in range(LIMIT)))
    assert ended.value.reason == "FLOW_ENDED"
    with pytest.raises(VersionConflict):
        await append(limited, ns, flow.flow_id, huge, ev())
    assert (await limited.get_flow(ns, flow.flow_id)).version == 3


async def test_a_create_call_whose_first_events_pass_the_limit_creates_nothing(
    limited: EventStore, ns: str
) -> None:
    new = NewFlow(ns, "too-big", flow_id=str(uuid.uuid4()))
    first = Append("", "", 0, command_id(), tuple(ev(n=i) for i in range(LIMIT + 1)))
    with pytest.raises(ResourceExhausted) as caught:
        await limited.create_flow_with(new, initial=first)
    _exceeded(caught)
    assert new.flow_id is not None
    with pytest.raises(NotFound):
        await limited.get_flow(ns, new.flow_id)
    # Exactly the limit is fine.
    fits = Append("", "", 0, command_id(), tuple(ev(n=i) for i in range(LIMIT)))
    created = await limited.create_flow_with(new, initial=fits)
    assert created.flow.version == LIMIT


# -- the setting, through the service ----------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
async def test_the_setting_reaches_both_backends_over_grpc(
    backend: str, request: pytest.FixtureRequest
) -> None:
    url = "memory:" if backend == "memory" else request.getfixturevalue("migrated_database_url")
    settings = store_settings(database_url=url, limits=Limits(max_events_per_flow=2))
    server = await serve(settings)  # opens the backend the settings name, with the limit
    try:
        channel = grpc.aio.insecure_channel(server.address, interceptors=client_interceptors())
        async with channel:
            stub, space = store_pb2_grpc.StoreServiceStub(channel), grpc_helpers.ns()
            flow = await grpc_helpers.create_flow(stub, space)
            two = (grpc_helpers.ev(n=1), grpc_helpers.ev(n=2))
            await grpc_helpers.append(stub, space, flow.flow_id, 0, *two)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await grpc_helpers.append(stub, space, flow.flow_id, 2, grpc_helpers.ev())
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            error = grpc_helpers.failure(caught.value)
            assert error.reason == "EVENTS_PER_FLOW_EXCEEDED"
            assert error.metadata["max"] == "2"
            assert len(await grpc_helpers.read_all(stub, space, flow.flow_id)) == 2
    finally:
        await server.stop(grace=1.0)


def test_the_setting_is_read_and_checked() -> None:
    base = {"DATABASE_URL": "memory:", "FLOWLEDGER_INSECURE": "1"}
    assert StoreSettings.from_env(base).limits.max_events_per_flow == DEFAULT_MAX_EVENTS_PER_FLOW
    read = StoreSettings.from_env({**base, "STORE_MAX_EVENTS_PER_FLOW": "250"})
    assert read.limits.max_events_per_flow == 250
    for bad in ("0", "-1", "many"):
        with pytest.raises(SettingsError, match="STORE_MAX_EVENTS_PER_FLOW"):
            StoreSettings.from_env({**base, "STORE_MAX_EVENTS_PER_FLOW": bad})
