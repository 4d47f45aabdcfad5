"""Versioned definitions on both backends: numbering, idempotency, lifecycle, listing, isolation."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from flowledger.canonical import canonical_bytes, content_hash
from flowledger.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from flowledger_core.domain import (
    DefinitionState,
    DefinitionTransitionCommand,
    NewDefinitionVersion,
    Page,
    StoredDefinition,
)
from flowledger_core.ports import EventStore

DRAFT, PUBLISHED, ARCHIVED = (
    DefinitionState.DRAFT,
    DefinitionState.PUBLISHED,
    DefinitionState.ARCHIVED,
)


def doc(n: int = 0, name: str = "chem") -> dict[str, Any]:
    return {"name": name, "steps": [{"id": f"s{n}", "type": "chem.seed", "config": {"n": n}}]}


async def put(
    store: EventStore, ns: str, name: str = "chem", n: int = 0, **kw: Any
) -> tuple[StoredDefinition, bool]:
    document = doc(n, name)
    return await store.put_definition_version(
        NewDefinitionVersion(
            ns, name, canonical_bytes(document).decode(), content_hash([f"s{n}"]), **kw
        )
    )


async def move(
    store: EventStore,
    ns: str,
    version: int,
    to: DefinitionState,
    *from_states: DefinitionState,
    name: str = "chem",
    note: str = "",
) -> StoredDefinition:
    return await store.transition_definition_version(
        DefinitionTransitionCommand(ns, name, version, to, from_states, note, actor="carol")
    )


async def test_versions_are_numbered_without_gaps_under_concurrent_puts(
    store: EventStore, ns: str
) -> None:
    start = asyncio.Event()

    async def putter(i: int) -> StoredDefinition:
        await start.wait()
        stored, existed = await put(store, ns, n=i, change_note=f"put {i}")
        assert not existed
        return stored

    tasks = [asyncio.create_task(putter(i)) for i in range(16)]
    start.set()
    stored = await asyncio.wait_for(asyncio.gather(*tasks), 60)
    assert sorted(s.version for s in stored) == list(range(1, 17))
    listed = await store.list_definition_versions(ns, "chem", Page(size=100))
    assert [v.version for v in listed.versions] == list(range(16, 0, -1))
    assert not listed.next_token
    for s in stored:  # each version holds the document of the put that numbered it
        got = await store.get_definition_version(ns, "chem", s.version)
        assert got == s
        assert got.change_note == f"put {_n(got)}"
        assert got.state is DRAFT
        assert got.published_at is None
        assert [(h.state, h.change_note, h.actor) for h in got.history] == [
            (DRAFT, got.change_note, "")
        ]


def _n(stored: StoredDefinition) -> int:
    value: int = json.loads(stored.definition_json)["steps"][0]["config"]["n"]
    return value


async def test_request_id_makes_a_put_idempotent(store: EventStore, ns: str) -> None:
    first, existed = await put(store, ns, request_id="r-1", created_by="alice")
    assert (first.version, existed) == (1, False)
    again, existed = await put(store, ns, request_id="r-1", created_by="alice")
    assert (again, existed) == (first, True)
    with pytest.raises(AlreadyExists) as err:
        await put(store, ns, n=2, request_id="r-1")
    assert err.value.reason == "REQUEST_ID_REUSED"
    # Without a request id a put of another document is a new version (the latest document
    # again is that version: test_the_latest_document_again_is_that_version); the same id under
    # another name is new.
    assert (await put(store, ns, n=3))[0].version == 2
    assert (await put(store, ns, n=4))[0].version == 3
    other, existed = await put(store, ns, name="other", request_id="r-1")
    assert (other.version, existed) == (1, False)

    start = asyncio.Event()

    async def racer() -> tuple[StoredDefinition, bool]:
        await start.wait()
        return await put(store, ns, n=9, request_id="r-race")

    tasks = [asyncio.create_task(racer()) for _ in range(8)]
    start.set()
    results = await asyncio.wait_for(asyncio.gather(*tasks), 60)
    assert {s.version for s, _ in results} == {4}
    assert sorted(existed for _, existed in results) == [False] + [True] * 7
    listed = await store.list_definition_versions(ns, "chem", Page())
    assert [v.version for v in listed.versions] == [4, 3, 2, 1]


async def test_the_latest_document_again_is_that_version(store: EventStore, ns: str) -> None:
    v1, _ = await put(store, ns, n=1, created_by="alice")
    again, existed = await put(store, ns, n=1, created_by="bob", change_note="same")
    assert (again, existed) == (v1, True)
    # In whatever state it is: a published latest version is answered as it is.
    published = await move(store, ns, 1, PUBLISHED, DRAFT)
    assert await put(store, ns, n=1) == (published, True)
    # Another document is a new version; an older document than the latest is one too.
    v2, existed = await put(store, ns, n=2)
    assert (v2.version, existed) == (2, False)
    v3, existed = await put(store, ns, n=1)
    assert (v3.version, v3.state, existed) == (3, DRAFT, False)
    # An archived latest version is not answered: the same document becomes a new DRAFT.
    await move(store, ns, 3, ARCHIVED, DRAFT)
    v4, existed = await put(store, ns, n=1)
    assert (v4.version, v4.state, existed) == (4, DRAFT, False)
    listed = await store.list_definition_versions(ns, "chem", Page())
    assert [v.version for v in listed.versions] == [4, 3, 2, 1]


async def test_lifecycle_draft_published_archived_and_rollback(store: EventStore, ns: str) -> None:
    v1, _ = await put(store, ns, change_note="first", created_by="alice")
    with pytest.raises(NotFound) as err:
        await store.get_definition_version(ns, "chem")  # nothing published yet
    assert err.value.reason == "DEFINITION_NOT_FOUND"

    published = await move(store, ns, 1, PUBLISHED, DRAFT, note="ship it")
    assert published.state is PUBLISHED
    assert published.published_at is not None
    assert await store.get_definition_version(ns, "chem") == published
    archived = await move(store, ns, 1, ARCHIVED, PUBLISHED, note="retire")
    assert archived.state is ARCHIVED
    assert archived.published_at == published.published_at  # when it was last published
    with pytest.raises(NotFound):
        await store.get_definition_version(ns, "chem")

    # Publishing an archived version is refused unless the caller allows it (a rollback).
    with pytest.raises(FailedPrecondition) as refused:
        await move(store, ns, 1, PUBLISHED, DRAFT)
    assert refused.value.reason == "TRANSITION_NOT_ALLOWED"
    assert refused.value.metadata["current_state"] == "archived"
    assert await store.get_definition_version(ns, "chem", 1) == archived  # nothing changed
    rolled_back = await move(store, ns, 1, PUBLISHED, ARCHIVED, note="roll back")
    assert rolled_back.state is PUBLISHED
    assert published.published_at is not None
    assert rolled_back.published_at is not None
    assert rolled_back.published_at > published.published_at

    history = rolled_back.history
    assert [(h.state, h.change_note, h.actor) for h in history] == [
        (DRAFT, "first", "alice"),
        (PUBLISHED, "ship it", "carol"),
        (ARCHIVED, "retire", "carol"),
        (PUBLISHED, "roll back", "carol"),
    ]
    assert [h.at for h in history] == sorted(h.at for h in history)
    assert history[0].at == v1.created_at
    assert history[-1].at == rolled_back.published_at
    # Everything else about the version is as it was put.
    assert (rolled_back.definition_json, rolled_back.definition_hash, rolled_back.created_at) == (
        v1.definition_json, v1.definition_hash, v1.created_at,
    )  # fmt: skip


async def test_transitions_to_the_current_state_are_idempotent(store: EventStore, ns: str) -> None:
    await put(store, ns)
    archived = await move(store, ns, 1, ARCHIVED, DRAFT)
    assert await move(store, ns, 1, ARCHIVED, DRAFT) == archived  # no new history entry
    published = await move(store, ns, 1, PUBLISHED, ARCHIVED)
    # Already published and PUBLISHED not allowed as a source: unchanged.
    assert await move(store, ns, 1, PUBLISHED, DRAFT, ARCHIVED) == published
    # Allowed as a source: published again, which makes it the latest published right now.
    again = await move(store, ns, 1, PUBLISHED, PUBLISHED)
    assert len(again.history) == len(published.history) + 1
    assert again.published_at is not None
    assert published.published_at is not None
    assert again.published_at > published.published_at


async def test_latest_published_is_the_most_recently_published(store: EventStore, ns: str) -> None:
    for n in range(3):
        await put(store, ns, n=n)
    await move(store, ns, 1, PUBLISHED, DRAFT)
    await move(store, ns, 3, PUBLISHED, DRAFT)
    await move(store, ns, 2, PUBLISHED, DRAFT)
    assert (await store.get_definition_version(ns, "chem")).version == 2
    await move(store, ns, 1, PUBLISHED, PUBLISHED)  # a rollback to version 1
    assert (await store.get_definition_version(ns, "chem")).version == 1
    await move(store, ns, 1, ARCHIVED, PUBLISHED)
    assert (await store.get_definition_version(ns, "chem")).version == 2


async def test_listing_latest_per_name_and_history_per_name(store: EventStore, ns: str) -> None:
    for name, count in (("b-flow", 2), ("a.flow", 3), ("C_flow", 1), ("d", 1)):
        for n in range(count):
            await put(store, ns, name=name, n=n)
    await move(store, ns, 1, PUBLISHED, DRAFT, name="a.flow")

    seen: list[tuple[str, int]] = []
    token = ""
    pages = 0
    while True:
        page = await store.list_definition_versions(ns, None, Page(size=3, token=token))
        seen.extend((v.name, v.version) for v in page.versions)
        pages += 1
        if not page.next_token:
            break
        token = page.next_token
    # The latest version of every name (by version number, whatever its state), by code point.
    assert seen == [("C_flow", 1), ("a.flow", 3), ("b-flow", 2), ("d", 1)]
    assert pages == 2

    first = await store.list_definition_versions(ns, "a.flow", Page(size=2))
    assert [v.version for v in first.versions] == [3, 2]
    second = await store.list_definition_versions(
        ns, "a.flow", Page(size=2, token=first.next_token)
    )
    assert [v.version for v in second.versions] == [1]
    assert second.versions[0].state is PUBLISHED
    assert [h.state for h in second.versions[0].history] == [DRAFT, PUBLISHED]
    assert not second.next_token
    empty = await store.list_definition_versions(ns, "nobody", Page())
    assert empty.versions == ()

    with pytest.raises(InvalidArgument) as err:
        await store.list_definition_versions(ns, None, Page(token="garbage!"))
    assert {v.field for v in err.value.violations} == {"page_token"}
    with pytest.raises(InvalidArgument):  # a per-name token does not resume a by-name listing
        await store.list_definition_versions(ns, None, Page(size=2, token=first.next_token))
    with pytest.raises(InvalidArgument):
        await store.list_definition_versions(ns, "a.flow", Page(size=0))


async def test_namespaces_are_isolated(store: EventStore, ns: str) -> None:
    other = f"{ns}-other"
    await put(store, ns, n=1)
    await put(store, ns, n=2)
    theirs, _ = await put(store, other, request_id="r")
    assert theirs.version == 1
    mine, existed = await put(store, ns, request_id="r")
    assert (mine.version, existed) == (3, False)
    await move(store, ns, 1, PUBLISHED, DRAFT)
    with pytest.raises(NotFound):
        await store.get_definition_version(other, "chem")
    with pytest.raises(NotFound):
        await store.get_definition_version(other, "chem", 2)
    with pytest.raises(NotFound):
        await move(store, other, 2, PUBLISHED, DRAFT)
    listed = await store.list_definition_versions(other, None, Page())
    assert [(v.namespace, v.version) for v in listed.versions] == [(other, 1)]


async def test_documents_are_kept_canonical_and_bad_input_is_refused(
    store: EventStore, ns: str
) -> None:
    text = '{"steps": [{"id": "a", "n": 1.0, "s": "\\u00e9"}], "name": "x"}'
    stored, _ = await store.put_definition_version(NewDefinitionVersion(ns, "x", text, "f" * 64))
    expected = canonical_bytes({"name": "x", "steps": [{"id": "a", "n": 1, "s": "é"}]}).decode()
    assert stored.definition_json == expected
    assert (await store.get_definition_version(ns, "x", 1)).definition_json == expected

    bad = [
        (NewDefinitionVersion(ns, "x", "[1]", "f" * 64), "definition_json"),
        (NewDefinitionVersion(ns, "x", "{", "f" * 64), "definition_json"),
        (NewDefinitionVersion(ns, "x", '{"a": "\\u0000"}', "f" * 64), "definition_json"),
        (NewDefinitionVersion(ns, "x", "{}", "F" * 64), "definition_hash"),
        (NewDefinitionVersion(ns, "", "{}", "f" * 64), "name"),
        (NewDefinitionVersion(ns, "x" * 129, "{}", "f" * 64), "name"),
        (NewDefinitionVersion(ns, "x", "{}", "f" * 64, request_id=""), "request_id"),
    ]
    for new, field in bad:
        with pytest.raises(InvalidArgument) as err:
            await store.put_definition_version(new)
        assert [v.field for v in err.value.violations] == [field]
    assert [
        v.version for v in (await store.list_definition_versions(ns, "x", Page())).versions
    ] == [1]
    with pytest.raises(NotFound):
        await store.get_definition_version(ns, "x", 2)
    with pytest.raises(InvalidArgument):
        await store.get_definition_version(ns, "x", -1)
