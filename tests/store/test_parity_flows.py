"""Flows: creation and idempotency, lookups, listing (pagination, filters), namespaces."""

from __future__ import annotations

import uuid

import pytest

from flowledger.errors import AlreadyExists, InvalidArgument, NotFound
from flowledger_core.domain import (
    Append,
    FlowFilter,
    FlowStatus,
    NewBranch,
    NewFlow,
    Page,
)
from flowledger_core.ports import EventStore
from tests.store.helpers import append, ev, flow_view, new_flow, read_all


async def test_create_generates_uuid4_and_starts_empty(store: EventStore, ns: str) -> None:
    flow, existed = await store.create_flow(
        NewFlow(ns, "order", metadata_json='{"b": [1, 2], "a": null}', created_by="alice")
    )
    assert not existed
    assert uuid.UUID(flow.flow_id).version == 4
    assert flow.flow_id == str(uuid.UUID(flow.flow_id))
    view = flow_view(flow)
    assert view == {
        "flow_id": flow.flow_id,
        "namespace": ns,
        "name": "order",
        "status": FlowStatus.QUEUED,
        "metadata": {"a": None, "b": [1, 2]},
        "parent_flow_id": None,
        "fork_version": 0,
        "version": 0,
        "generation": 0,
        "created_by": "alice",
        "deleted": False,
        "lease_token": 0,
        "wake_at": None,
        "task_queue": None,
    }
    assert flow_view(await store.get_flow(ns, flow.flow_id)) == view
    assert flow.created_at.tzinfo is not None


async def test_create_with_client_id_is_idempotent(store: EventStore, ns: str) -> None:
    fid = str(uuid.uuid4())
    first, existed = await store.create_flow(
        NewFlow(ns, "a", flow_id=fid.upper(), metadata_json='{"k": 1}')
    )
    assert (first.flow_id, existed) == (fid, False)
    again, existed = await store.create_flow(
        NewFlow(ns, "a", flow_id=fid, metadata_json='{ "k" : 1 }')
    )
    assert existed
    assert flow_view(again) == flow_view(first)
    assert again.created_at == first.created_at
    with pytest.raises(AlreadyExists):
        await store.create_flow(NewFlow(ns, "b", flow_id=fid, metadata_json='{"k": 1}'))
    with pytest.raises(AlreadyExists):
        await store.create_flow(NewFlow(ns, "a", flow_id=fid, metadata_json='{"k": 2}'))
    with pytest.raises(AlreadyExists):
        await store.create_flow(NewFlow(ns + "x", "a", flow_id=fid, metadata_json='{"k": 1}'))


async def test_create_rejects_a_malformed_flow_id(store: EventStore, ns: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        await store.create_flow(NewFlow(ns, "a", flow_id="not-a-uuid"))
    assert [v.field for v in err.value.violations] == ["flow_id"]


async def test_initial_status_is_kept(store: EventStore, ns: str) -> None:
    flow = await new_flow(store, ns, status=FlowStatus.RUNNING)
    assert (await store.get_flow(ns, flow.flow_id)).status is FlowStatus.RUNNING


async def test_unknown_flow_is_not_found(store: EventStore, ns: str) -> None:
    missing = str(uuid.uuid4())
    with pytest.raises(NotFound):
        await store.get_flow(ns, missing)
    with pytest.raises(NotFound):
        await read_all(store, ns, missing)
    with pytest.raises(NotFound):
        await store.count_steps(ns, missing)
    with pytest.raises(NotFound):
        await append(store, ns, missing, 0)


async def test_namespace_isolation(store: EventStore, ns: str) -> None:
    other = ns + "-other"
    flow = await new_flow(store, ns)
    await append(store, ns, flow.flow_id, 0, ev())
    fid = flow.flow_id
    with pytest.raises(NotFound):
        await store.get_flow(other, fid)
    with pytest.raises(NotFound):
        await read_all(store, other, fid)
    with pytest.raises(NotFound):
        await store.count_steps(other, fid)
    with pytest.raises(NotFound):
        await store.append(Append(other, fid, 1, "x-1", (ev(),)))
    with pytest.raises(NotFound):
        await store.create_branch(NewBranch(other, fid, 1, "b"))
    with pytest.raises(NotFound):
        await store.delete_branch(other, fid)
    with pytest.raises(NotFound):
        await store.save_snapshot(other, fid, 1, "{}")
    with pytest.raises(NotFound):
        await store.load_snapshot(other, fid)
    assert (await store.list_flows(FlowFilter(other), Page())).flows == ()
    # Nothing written through the other namespace.
    assert (await store.get_flow(ns, fid)).version == 1


async def test_list_is_newest_first_and_pages_without_gaps(store: EventStore, ns: str) -> None:
    created = [(await new_flow(store, ns, name=f"f{i}")).flow_id for i in range(7)]
    await new_flow(store, ns + "-other")
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = await store.list_flows(FlowFilter(ns), Page(size=3, token=token))
        seen.extend(f.flow_id for f in page.flows)
        pages += 1
        token = page.next_token
        if not token:
            break
        assert len(page.flows) == 3
    assert pages == 3
    assert seen == list(reversed(created))
    # A flow created while paging lands in front, never inside later pages.
    first = await store.list_flows(FlowFilter(ns), Page(size=2))
    late = await new_flow(store, ns, name="late")
    rest = await store.list_flows(FlowFilter(ns), Page(size=100, token=first.next_token))
    assert late.flow_id not in [f.flow_id for f in rest.flows]
    assert [f.flow_id for f in first.flows + rest.flows] == list(reversed(created))


async def test_list_exact_page_has_no_next_token(store: EventStore, ns: str) -> None:
    for i in range(4):
        await new_flow(store, ns, name=f"f{i}")
    page = await store.list_flows(FlowFilter(ns), Page(size=4))
    assert len(page.flows) == 4
    assert page.next_token == ""


async def test_list_filters(store: EventStore, ns: str) -> None:
    a = await new_flow(store, ns, name="alpha")
    b = await new_flow(store, ns, name="beta", status=FlowStatus.RUNNING)
    await append(store, ns, a.flow_id, 0, ev(), status=FlowStatus.COMPLETED)
    br, _ = await store.create_branch(NewBranch(ns, a.flow_id, 1, "alpha-branch"))
    gone, _ = await store.create_branch(NewBranch(ns, a.flow_id, 0, "gone"))
    await store.delete_branch(ns, gone.flow_id)

    async def ids(**kw: object) -> set[str]:
        page = await store.list_flows(FlowFilter(ns, **kw), Page())  # type: ignore[arg-type]
        return {f.flow_id for f in page.flows}

    assert await ids() == {a.flow_id, b.flow_id, br.flow_id}
    assert await ids(include_deleted=True) == {a.flow_id, b.flow_id, br.flow_id, gone.flow_id}
    assert await ids(statuses=(FlowStatus.COMPLETED,)) == {a.flow_id}
    assert await ids(statuses=(FlowStatus.RUNNING, FlowStatus.QUEUED)) == {b.flow_id, br.flow_id}
    assert await ids(name="beta") == {b.flow_id}
    assert await ids(parent_flow_id=a.flow_id) == {br.flow_id}
    assert await ids(parent_flow_id=a.flow_id, include_deleted=True) == {
        br.flow_id,
        gone.flow_id,
    }


@pytest.mark.parametrize("token", ["garbage", "!!!", "bWVtOjE=", "\x00"])
async def test_list_rejects_a_malformed_page_token(store: EventStore, ns: str, token: str) -> None:
    await new_flow(store, ns)
    with pytest.raises(InvalidArgument) as err:
        await store.list_flows(FlowFilter(ns), Page(size=10, token=token))
    assert [v.field for v in err.value.violations] == ["page_token"]


async def test_list_rejects_a_zero_page_size(store: EventStore, ns: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        await store.list_flows(FlowFilter(ns), Page(size=0))
    assert [v.field for v in err.value.violations] == ["page_size"]


async def test_a_malformed_flow_id_is_invalid(store: EventStore, ns: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        await store.get_flow(ns, "nope")
    assert [v.field for v in err.value.violations] == ["flow_id"]
    with pytest.raises(InvalidArgument) as err:
        await store.create_branch(NewBranch(ns, "nope", 0, "b"))
    assert [v.field for v in err.value.violations] == ["parent_flow_id"]


@pytest.mark.parametrize(
    ("namespace", "name"),
    [("", "a"), ("n" * 129, "a"), ("ok", "x" * 257)],
    ids=["empty-namespace", "long-namespace", "long-name"],
)
async def test_out_of_range_names_are_invalid(store: EventStore, namespace: str, name: str) -> None:
    with pytest.raises(InvalidArgument):
        await store.create_flow(NewFlow(namespace, name))



def _ids(base: str) -> tuple[str, ...]:
    """Four ids under a random 6-digit start (flow ids are unique across namespaces)."""
    return (
        f"{base}3d-0000-4000-8000-000000000001",
        f"{base}3d-0000-4000-8000-000000000002",
        f"{base}3e-ffff-4fff-bfff-ffffffffffff",
        f"{base}ff-ffff-4fff-bfff-ffffffffffff",
    )


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        ("", (0, 1, 2, 3)),
        ("{base}3", (0, 1, 2)),
        ("{base}3d", (0, 1)),
        ("{base}3d-", (0, 1)),
        ("{base}3d-0000-4000-8000-000000000002", (1,)),
        ("{base}3e-f", (2,)),
        ("{base}f", (3,)),
        ("{base}0", ()),
    ],
)
async def test_list_by_id_prefix(
    store: EventStore, ns: str, prefix: str, expected: tuple[int, ...]
) -> None:
    base = uuid.uuid4().hex[:6]
    ids = _ids(base)
    for flow_id in ids:
        await store.create_flow(NewFlow(ns, "order", flow_id=flow_id))
    other = f"{base}3d-0000-4000-8000-0000000000ff"
    await store.create_flow(NewFlow(ns + "-other", "order", flow_id=other))  # never crosses
    listed = await store.list_flows(FlowFilter(ns, flow_id_prefix=prefix.format(base=base)), Page())
    assert sorted(f.flow_id for f in listed.flows) == [ids[i] for i in expected]


@pytest.mark.parametrize(
    "prefix", ["0A1B", "0a1b2c3d0", "g", "0a1b2c3d-0000-4000-8000-0000000000011", " 0"]
)
async def test_an_id_prefix_that_cannot_begin_an_id_is_invalid(
    store: EventStore, ns: str, prefix: str
) -> None:
    await new_flow(store, ns)
    with pytest.raises(InvalidArgument) as caught:
        await store.list_flows(FlowFilter(ns, flow_id_prefix=prefix), Page())
    assert any(v.field == "flow_id_prefix" for v in caught.value.violations)
