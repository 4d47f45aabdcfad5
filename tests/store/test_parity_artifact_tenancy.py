"""Artifacts are stored once for all namespaces but read per namespace (migration 0009).

A namespace reads an artifact only when an accepted append of one of its flows offered it; any
other hash is missing to it, exactly as a hash nobody stored. Branches (same namespace) read
their parent's.
"""

from __future__ import annotations

import uuid

import pytest

from flowledger.canonical import content_hash
from flowledger.errors import VersionConflict
from flowledger_core.domain import Append, NewBranch, NewFlow
from flowledger_core.ports import EventStore
from tests.store.helpers import append, artifact, ev, new_flow


def _other(ns: str) -> str:
    return f"{ns}-other"


async def test_another_namespaces_artifact_is_missing(store: EventStore, ns: str) -> None:
    secret = artifact({"tenant": "b", "secret": uuid.uuid4().hex})
    flow = await new_flow(store, _other(ns))
    await append(store, _other(ns), flow.flow_id, 0, ev(), artifacts=[secret])
    never = content_hash({"never": uuid.uuid4().hex})

    lookup = await store.get_artifacts(ns, [secret.hash, never])

    assert lookup.found == ()
    assert lookup.missing == (secret.hash, never)  # indistinguishable from a hash never stored
    assert [a.hash for a in (await store.get_artifacts(_other(ns), [secret.hash])).found] == [
        secret.hash
    ]


async def test_offering_a_stored_artifact_makes_it_readable(store: EventStore, ns: str) -> None:
    shared = artifact({"shared": uuid.uuid4().hex})
    b = await new_flow(store, _other(ns))
    first = await append(store, _other(ns), b.flow_id, 0, ev(), artifacts=[shared])
    a = await new_flow(store, ns)
    assert (await store.get_artifacts(ns, [shared.hash])).found == ()

    await append(store, ns, a.flow_id, 0, ev(), artifacts=[shared])

    [stored] = (await store.get_artifacts(ns, [shared.hash])).found
    assert stored.produced_in_seq == first.seqs[0]  # still deduplicated: the first writer's row


async def test_a_refused_append_references_nothing(store: EventStore, ns: str) -> None:
    shared = artifact({"refused": uuid.uuid4().hex})
    b = await new_flow(store, _other(ns))
    await append(store, _other(ns), b.flow_id, 0, ev(), artifacts=[shared])
    a = await new_flow(store, ns)
    await append(store, ns, a.flow_id, 0, ev())

    with pytest.raises(VersionConflict):
        await append(store, ns, a.flow_id, 0, ev(), artifacts=[shared])

    assert (await store.get_artifacts(ns, [shared.hash])).missing == (shared.hash,)


async def test_create_with_initial_append_references_its_artifacts(
    store: EventStore, ns: str
) -> None:
    value = artifact({"input": uuid.uuid4().hex})
    b = await new_flow(store, _other(ns))
    await append(store, _other(ns), b.flow_id, 0, ev(), artifacts=[value])
    initial = Append(ns, "", 0, "init", (ev(),), (value,))

    created = await store.create_flow_with(NewFlow(ns, "f"), initial=initial)

    assert created.initial is not None
    assert [a.hash for a in (await store.get_artifacts(ns, [value.hash])).found] == [value.hash]


async def test_a_branch_reads_its_parents_artifacts(store: EventStore, ns: str) -> None:
    produced = artifact({"parent output": uuid.uuid4().hex})
    parent = await new_flow(store, ns)
    await append(store, ns, parent.flow_id, 0, ev(), ev(), artifacts=[produced])
    branch, _ = await store.create_branch(NewBranch(ns, parent.flow_id, 1, "b"))
    await append(store, ns, branch.flow_id, 1, ev())

    assert [a.hash for a in (await store.get_artifacts(ns, [produced.hash])).found] == [
        produced.hash
    ]
    # Another namespace does not, through the branch or otherwise.
    assert (await store.get_artifacts(_other(ns), [produced.hash])).found == ()
