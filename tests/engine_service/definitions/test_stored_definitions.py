"""Declarative documents → validated definitions → stored versions → flows started from them,
with the sample step types found through the ``flowledger.steps`` entry point."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from engine_service.definitions.samples import CHEM_DOCUMENT, chem_flow
from engine_service.definitions.stored import (
    definition_of,
    document_json,
    new_version,
    parse_definition,
)
from engine_service.run.engine import Engine
from engine_service.steps.plugins import default_registry
from flowledger.canonical import parse_json
from flowledger.errors import FailedPrecondition, InternalError, InvalidArgument
from flowledger_core.domain import (
    DefinitionState,
    DefinitionTransitionCommand,
    StoredDefinition,
)
from flowledger_core.ports import EventStore
from tests.engine_service.run.test_engine import GOLDEN

CHEM_YAML = """
name: chem
steps:
  - {id: seed, type: chem.seed, config: {text: Hola}}
  - {id: split, type: chem.split}
  - {id: print_and_count, type: chem.print_and_count}
"""


def test_the_default_registry_has_the_samples_through_the_entry_point() -> None:
    names = default_registry().names()
    assert {"chem.seed", "chem.split", "chem.print_and_count", "hello.greet"} <= set(names)


@pytest.mark.parametrize("document", [CHEM_DOCUMENT, CHEM_YAML, document_json(chem_flow())])
def test_documents_parse_to_the_same_definition(document: object) -> None:
    definition = parse_definition(document, default_registry())
    assert definition == chem_flow()
    assert parse_json(document_json(definition)) == {
        "name": "chem",
        "steps": [
            {"id": "seed", "type": "chem.seed", "kind": "source", "config": {"text": "Hola"}},
            {"id": "split", "type": "chem.split", "kind": "transform", "config": {}},
            {
                "id": "print_and_count",
                "type": "chem.print_and_count",
                "kind": "sink",
                "config": {},
            },
        ],
    }


def test_invalid_documents_name_the_field() -> None:
    bad = CHEM_YAML.replace("{text: Hola}", "{text: 3}")
    with pytest.raises(InvalidArgument) as exc:
        parse_definition(bad, default_registry())
    assert [v.field for v in exc.value.violations] == ["steps[0].config.text"]
    unknown = {"name": "x", "steps": [{"id": "a", "type": "no.such"}]}
    with pytest.raises(InvalidArgument) as exc:
        parse_definition(unknown, default_registry())
    assert exc.value.violations[0].field == "steps[0].type"


def _stored(state: DefinitionState, **changes: str) -> StoredDefinition:
    definition = chem_flow()
    return StoredDefinition(
        namespace="default",
        name="chem",
        version=4,
        state=state,
        definition_json=changes.get("definition_json", document_json(definition)),
        definition_hash=changes.get("definition_hash", definition.definition_hash),
        change_note="",
        created_by="alice",
        created_at=datetime.now(UTC),
        published_at=None,
    )


def test_stored_versions_read_back_and_only_published_ones_start() -> None:
    definition = definition_of(_stored(DefinitionState.DRAFT))
    assert definition.steps == chem_flow().steps
    assert definition.version == 4
    with pytest.raises(InternalError) as exc:
        definition_of(_stored(DefinitionState.PUBLISHED, definition_hash="0" * 64))
    assert exc.value.reason == "CORRUPT_DEFINITION"
    with pytest.raises(InternalError):
        definition_of(_stored(DefinitionState.PUBLISHED, definition_json='{"steps": 1}'))


async def test_a_flow_started_from_a_stored_version(store: EventStore, ns: str) -> None:
    engine = Engine(store)  # the default registry: the samples come from the entry point
    definition = parse_definition(CHEM_YAML, engine.registry)
    stored, existed = await store.put_definition_version(
        new_version(definition, ns, change_note="first", created_by="alice", request_id="r1")
    )
    assert not existed
    assert stored.state is DefinitionState.DRAFT
    assert stored.definition_hash == GOLDEN["chem"].definition_hash
    with pytest.raises(FailedPrecondition) as exc:
        await engine.start_stored(stored)
    assert exc.value.reason == "DEFINITION_NOT_PUBLISHED"

    published = await store.transition_definition_version(
        DefinitionTransitionCommand(
            ns, "chem", stored.version, DefinitionState.PUBLISHED, (DefinitionState.DRAFT,)
        )
    )
    latest = await store.get_definition_version(ns, "chem")
    assert latest.version == published.version
    run = await engine.start_stored(latest, idempotency_key="k", started_by="bob")
    assert not run.existed
    final = await run.run_to_end()
    assert final.flow_fingerprint == GOLDEN["chem"].flow
    assert final.init is not None
    recorded = (final.init.definition_name, final.init.definition_version)
    assert recorded == ("chem", stored.version)
    assert final.init.definition_hash == stored.definition_hash
    assert (await store.get_flow(ns, run.flow_id)).created_by == "bob"
    again = await engine.start_stored(latest, idempotency_key="k", started_by="bob")
    assert again.existed
    assert again.flow_id == run.flow_id

    archived = await store.transition_definition_version(
        DefinitionTransitionCommand(
            ns,
            "chem",
            stored.version,
            DefinitionState.ARCHIVED,
            (DefinitionState.DRAFT, DefinitionState.PUBLISHED),
        )
    )
    with pytest.raises(FailedPrecondition) as exc:
        await engine.start_stored(archived)
    assert exc.value.reason == "DEFINITION_ARCHIVED"
