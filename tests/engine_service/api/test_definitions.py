"""Definitions over the engine API (SDK → engine → store, both backends): lifecycle, history,
documents in JSON and YAML, validation against the step types' schemas before anything is stored.
"""

from __future__ import annotations

import json

import pytest

from engine_service.fingerprint import definition_hash
from flowledger.client import FlowledgerClient
from flowledger.errors import FailedPrecondition, InvalidArgument, NotFound
from flowledger.types import DefinitionState
from tests.engine_service.api.conftest import HELLO_DOCUMENT, published

HELLO_YAML = """
steps:
  - id: greet
    type: hello.greet
    config: {name: world}
  - id: shout
    type: hello.shout
  - id: done
    type: hello.done
"""
# Another document of the same steps: a new version (the same document again is not one).
HELLO_YAML_EVERYONE = HELLO_YAML.replace("{name: world}", "{name: everyone}")


async def test_a_new_version_is_a_draft_with_its_steps_and_hash(
    client: FlowledgerClient, ns: str
) -> None:
    created = await client.create_definition(
        ns, "hello", HELLO_DOCUMENT, change_note="first", created_by="ada"
    )
    version = created.version
    assert not created.existed
    assert (version.namespace, version.name, version.version) == (ns, "hello", 1)
    assert version.state is DefinitionState.DRAFT
    assert version.definition_hash == definition_hash(["greet", "shout", "done"])
    assert [(s.id, s.type, s.config) for s in version.steps] == [
        ("greet", "hello.greet", {"name": "world"}),
        ("shout", "hello.shout", {}),
        ("done", "hello.done", {}),
    ]
    assert (version.change_note, version.created_by) == ("first", "ada")
    assert version.created_at is not None
    assert version.published_at is None
    assert await client.get_definition(ns, "hello", 1) == version


async def test_yaml_and_json_documents_store_the_same_definition(
    client: FlowledgerClient, ns: str
) -> None:
    from_yaml = await client.create_definition(ns, "hello", HELLO_YAML, format="yaml")
    from_json = await client.create_definition(ns, "hello", json.dumps(HELLO_DOCUMENT))
    assert from_yaml.version.steps == from_json.version.steps
    assert from_yaml.version.definition_hash == from_json.version.definition_hash
    # The same definition: the JSON document is the latest version again, so nothing is stored.
    assert (from_yaml.version.version, from_json.version.version) == (1, 1)
    assert (from_yaml.existed, from_json.existed) == (False, True)
    assert from_json.version == from_yaml.version


async def test_the_latest_document_again_is_that_version_not_a_new_one(
    client: FlowledgerClient, ns: str
) -> None:
    # A script that creates, publishes and starts, run twice (the README's Python block).
    first = await client.create_definition(ns, "hello", HELLO_DOCUMENT)
    await client.publish_definition(ns, "hello", first.version.version)
    again = await client.create_definition(ns, "hello", HELLO_DOCUMENT, change_note="rerun")
    assert again.existed
    assert (again.version.version, again.version.state) == (1, DefinitionState.PUBLISHED)
    changed = await client.create_definition(ns, "hello", HELLO_YAML_EVERYONE, format="yaml")
    assert (changed.existed, changed.version.version) == (False, 2)
    history = await client.list_definitions(ns, "hello")
    assert [v.version for v in history.versions] == [2, 1]


async def test_a_repeated_request_id_returns_the_same_version(
    client: FlowledgerClient, ns: str
) -> None:
    first = await client.create_definition(ns, "hello", HELLO_DOCUMENT, request_id="req-1")
    again = await client.create_definition(ns, "hello", HELLO_DOCUMENT, request_id="req-1")
    assert again.existed
    assert again.version == first.version
    history = await client.list_definitions(ns, "hello")
    assert [v.version for v in history.versions] == [1]


async def test_lifecycle_draft_publish_archive_rollback(
    client: FlowledgerClient, ns: str
) -> None:
    await client.create_definition(ns, "hello", HELLO_DOCUMENT)
    await client.create_definition(ns, "hello", HELLO_YAML_EVERYONE, format="yaml")
    with pytest.raises(NotFound):
        await client.get_definition(ns, "hello")  # nothing published yet

    v1 = await client.publish_definition(ns, "hello", 1, change_note="go", actor="ada")
    assert v1.state is DefinitionState.PUBLISHED
    assert v1.published_at is not None
    again = await client.publish_definition(ns, "hello", 1)  # idempotent
    assert again.state is DefinitionState.PUBLISHED
    v2 = await client.publish_definition(ns, "hello", 2, change_note="v2")
    assert (await client.get_definition(ns, "hello")).version == 2  # latest published

    archived = await client.archive_definition(ns, "hello", 2, change_note="bad")
    assert archived.state is DefinitionState.ARCHIVED
    assert (await client.archive_definition(ns, "hello", 2)).state is DefinitionState.ARCHIVED
    assert (await client.get_definition(ns, "hello")).version == 1

    back = await client.rollback_definition(ns, "hello", 2, change_note="fixed after all")
    assert back.state is DefinitionState.PUBLISHED
    assert (await client.get_definition(ns, "hello")).version == 2
    rolled = await client.rollback_definition(ns, "hello", 1, change_note="back to v1")
    assert rolled.state is DefinitionState.PUBLISHED
    assert (await client.get_definition(ns, "hello")).version == 1

    v2_now = await client.get_definition(ns, "hello", 2)
    states = [(h.state, h.change_note) for h in v2_now.history]
    assert states[-3:] == [
        (DefinitionState.PUBLISHED, "v2"),
        (DefinitionState.ARCHIVED, "bad"),
        (DefinitionState.PUBLISHED, "fixed after all"),
    ]
    assert v2.history[-1].state is DefinitionState.PUBLISHED


async def test_wrong_state_transitions_are_failed_preconditions(
    client: FlowledgerClient, ns: str
) -> None:
    await client.create_definition(ns, "hello", HELLO_DOCUMENT)
    with pytest.raises(FailedPrecondition):
        await client.rollback_definition(ns, "hello", 1)  # a draft cannot be rolled back to
    await client.archive_definition(ns, "hello", 1)
    with pytest.raises(FailedPrecondition):
        await client.publish_definition(ns, "hello", 1)  # archived: roll back instead
    assert (await client.get_definition(ns, "hello", 1)).state is DefinitionState.ARCHIVED


async def test_unknown_definitions_and_versions_are_not_found(
    client: FlowledgerClient, ns: str
) -> None:
    with pytest.raises(NotFound):
        await client.get_definition(ns, "nope", 1)
    await client.create_definition(ns, "hello", HELLO_DOCUMENT)
    with pytest.raises(NotFound):
        await client.get_definition(ns, "hello", 7)
    with pytest.raises(NotFound):
        await client.publish_definition(ns, "hello", 7)


async def test_listing_shows_latest_versions_and_one_history(
    client: FlowledgerClient, ns: str
) -> None:
    await published(client, ns, "alpha")
    await client.create_definition(ns, "alpha", HELLO_YAML_EVERYONE, format="yaml")
    await client.create_definition(ns, "beta", HELLO_DOCUMENT)
    latest = await client.list_definitions(ns)
    assert sorted((v.name, v.version) for v in latest.versions) == [("alpha", 2), ("beta", 1)]
    history = await client.list_definitions(ns, "alpha", page_size=1)
    assert [v.version for v in history.versions] == [2]
    rest = await client.list_definitions(ns, "alpha", page_token=history.next_page_token)
    assert [v.version for v in rest.versions] == [1]
    assert not rest.next_page_token


@pytest.mark.parametrize(
    ("document", "field"),
    [
        # config against the step type's JSON Schema: the path names the offending field
        ({"steps": [{"id": "greet", "type": "hello.greet", "config": {"name": 7}}]},
         "document.steps[0].config.name"),
        ({"steps": [{"id": "greet", "type": "hello.greet"},
                    {"id": "shout", "type": "hello.shout", "config": {"loud": True}}]},
         "document.steps[1].config.loud"),
        ({"steps": [{"id": "greet", "type": "hello.greet"},
                    {"id": "x", "type": "no.such.type"}]}, "document.steps[1].type"),
        ({"steps": [{"id": "Bad Id", "type": "hello.greet"}]}, "document.steps[0].id"),
        ({"steps": []}, "document.steps"),
        ({"name": "other", "steps": [{"id": "greet", "type": "hello.greet"}]}, "document.name"),
        ({"version": 3, "steps": [{"id": "greet", "type": "hello.greet"}]}, "document.version"),
        ("{not json", "document"),
        ("[1, 2]", "document"),
    ],
)
async def test_invalid_documents_name_the_field_and_store_nothing(
    client: FlowledgerClient, ns: str, document: object, field: str
) -> None:
    text = document if isinstance(document, str) else json.dumps(document)
    with pytest.raises(InvalidArgument) as info:
        await client.create_definition(ns, "hello", text)
    assert field in [v.field for v in info.value.violations], info.value.violations
    assert field in info.value.message
    assert (await client.list_definitions(ns)).versions == ()


async def test_invalid_yaml_is_invalid_argument(client: FlowledgerClient, ns: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        await client.create_definition(ns, "hello", "steps: [unclosed", format="yaml")
    assert [v.field for v in info.value.violations] == ["document"]


@pytest.mark.parametrize(
    ("name", "namespace", "field"),
    [("", None, "name"), ("bad name!", None, "name"), ("ok", "", "namespace"),
     ("ok", "bad ns", "namespace")],
)
async def test_malformed_requests_are_invalid_argument(
    client: FlowledgerClient, ns: str, name: str, namespace: str | None, field: str
) -> None:
    with pytest.raises(InvalidArgument) as info:
        await client.create_definition(ns if namespace is None else namespace, name,
                                       HELLO_DOCUMENT)
    assert field in [v.field for v in info.value.violations]
    with pytest.raises(InvalidArgument):
        await client.publish_definition(ns, "hello", 0)


OPTIONS_YAML = """
steps:
  - id: greet
    type: hello.greet
    config: {name: world}
    retry: {max_attempts: 3, initial_interval_ms: 10}
    step_timeout_ms: 60000
    compensate: {type: hello.done}
  - id: pause
    type: wait
    config: {seconds: 1}
  - id: shout
    type: hello.shout
    when: "input != null"
    commit: true
"""


async def test_a_version_shows_each_step_whole_with_its_options(
    client: FlowledgerClient, ns: str
) -> None:
    version = (await client.create_definition(ns, "opts", OPTIONS_YAML, format="yaml")).version
    greet, pause, shout = (s.spec for s in version.steps)
    assert greet["retry"] == {
        "max_attempts": 3, "initial_interval_ms": 10, "backoff_multiplier": 2.0,
        "max_interval_ms": 60000, "non_retryable": [],
    }  # fmt: skip
    assert greet["step_timeout_ms"] == 60000
    assert greet["compensate"] == {"type": "hello.done", "config": {}}
    assert pause == {"id": "pause", "type": "wait", "kind": "transform", "config": {"seconds": 1}}
    assert (shout["when"], shout["commit"]) == ("input != null", True)
