"""Flow definitions: the rules, declarative documents and their field-path errors, the builder."""

from __future__ import annotations

import json

import pytest

from engine_service.definitions.builder import Flow
from engine_service.definitions.definition import FlowDefinition, StepSpec, definition_from_text
from engine_service.definitions.samples import CHEM_DOCUMENT, chem_flow, seed, split
from engine_service.steps.context import StepContext, StepKind, StepResult, success
from engine_service.steps.registry import StepRegistry
from flowledger.errors import InvalidArgument


def fields(exc: pytest.ExceptionInfo[InvalidArgument]) -> list[str]:
    return [v.field for v in exc.value.violations]


def counting_registry(parent: StepRegistry) -> StepRegistry:
    registry = parent.child()

    @registry.step(
        "test.repeat",
        kind=StepKind.TRANSFORM,
        config_schema={
            "type": "object",
            "required": ["count"],
            "additionalProperties": False,
            "properties": {
                "count": {"type": "integer", "minimum": 1},
                "label": {"type": "string"},
            },
        },
    )
    def repeat(ctx: StepContext) -> StepResult:
        return success(*ctx.input_payloads * int(ctx.params["count"]))

    return registry


def test_declarative_document_equals_the_built_definition(registry: StepRegistry) -> None:
    from_doc = FlowDefinition.from_dict(CHEM_DOCUMENT, registry)
    assert from_doc == chem_flow()
    assert from_doc.definition_hash == chem_flow().definition_hash
    # to_dict is the canonical storage form and reads back to an equal definition.
    assert FlowDefinition.from_dict(from_doc.to_dict(), registry) == from_doc


def test_yaml_and_json_documents(registry: StepRegistry) -> None:
    yaml_text = """
name: chem
steps:
  - {id: seed, type: chem.seed, config: {text: Hola}}
  - {id: split, type: chem.split}
  - {id: print_and_count, type: chem.print_and_count}
"""
    assert FlowDefinition.from_yaml(yaml_text, registry) == chem_flow()
    assert FlowDefinition.from_json(json.dumps(CHEM_DOCUMENT), registry) == chem_flow()
    assert definition_from_text(yaml_text, registry) == chem_flow()
    assert definition_from_text(json.dumps(CHEM_DOCUMENT), registry) == chem_flow()


def test_config_errors_name_the_field_path(registry: StepRegistry) -> None:
    reg = counting_registry(registry)
    document = {
        "name": "bad",
        "steps": [
            {"id": "seed", "type": "chem.seed", "config": {}},
            {"id": "twice", "type": "test.repeat", "config": {"count": "2", "colour": 1}},
        ],
    }
    with pytest.raises(InvalidArgument) as exc:
        FlowDefinition.from_dict(document, reg)
    assert sorted(fields(exc)) == [
        "steps[0].config.text",
        "steps[1].config.colour",
        "steps[1].config.count",
    ]
    assert "steps[0].config.text" in exc.value.message


@pytest.mark.parametrize(
    ("document", "field"),
    [
        ({"steps": []}, "name"),
        ({"name": "x", "steps": []}, "steps"),
        ({"name": "x", "steps": [{"id": "A!", "type": "chem.seed"}]}, "steps[0].id"),
        ({"name": "x", "steps": [{"id": "a"}]}, "steps[0].type"),
        ({"name": "x", "steps": [{"id": "a", "type": "chem.seed", "when": 1}]}, "steps[0].when"),
        ({"name": "x", "steps": [{"id": "a", "type": "nope"}]}, "steps[0].type"),
        ({"name": "x", "steps": [{"id": "a", "type": "chem.split"}]}, "steps[0].kind"),
        (
            {
                "name": "x",
                "steps": [
                    {"id": "a", "type": "chem.seed", "config": {"text": "t"}},
                    {"id": "a", "type": "chem.split"},
                ],
            },
            "steps[1].id",
        ),
        (
            {
                "name": "x",
                "steps": [
                    {"id": "a", "type": "chem.seed", "config": {"text": "t"}},
                    {"id": "b", "type": "chem.seed", "config": {"text": "t"}},
                ],
            },
            "steps[1].kind",
        ),
        (
            {"name": "x", "steps": [{"id": "a", "type": "chem.seed", "config": []}]},
            "steps[0].config",
        ),
        ("not an object", "(root)"),
    ],
)
def test_invalid_documents(registry: StepRegistry, document: object, field: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        FlowDefinition.from_dict(document, registry)
    assert field in fields(exc)


def test_unparseable_text_is_invalid_argument(registry: StepRegistry) -> None:
    with pytest.raises(InvalidArgument) as exc:
        FlowDefinition.from_json("{not json", registry)
    assert fields(exc) == ["definition"]
    with pytest.raises(InvalidArgument) as exc:
        FlowDefinition.from_yaml("steps: [unclosed", registry)
    assert fields(exc) == ["definition"]


def test_rules_hold_for_definitions_built_in_code() -> None:
    with pytest.raises(InvalidArgument) as exc:
        Flow("x").transform("a", split).build()
    assert fields(exc) == ["steps[0].kind"]
    with pytest.raises(InvalidArgument) as exc:
        Flow("x").build()
    assert fields(exc) == ["steps"]
    with pytest.raises(InvalidArgument) as exc:
        Flow("x").source("s", seed, text="t").source("t", seed, text="u").build()
    assert fields(exc) == ["steps[1].kind"]
    with pytest.raises(InvalidArgument) as exc:
        Flow("x").source("x" * 65, seed, text="t").build()
    assert fields(exc) == ["steps[0].id"]


def test_params_are_canonical_and_copied() -> None:
    params = {"text": "Hola", "n": 1.0, "nested": {"b": [1]}}
    definition = Flow("x").source("s", seed, **params).build()
    params["nested"]["b"].append(2)  # type: ignore[index]
    assert definition.steps[0].params == {"text": "Hola", "n": 1, "nested": {"b": [1]}}
    with pytest.raises(InvalidArgument) as exc:
        FlowDefinition("x", (StepSpec("s", "t", StepKind.SOURCE, {"x": float("nan")}),))
    assert fields(exc) == ["steps[0].config"]


def test_reordering_steps_changes_the_definition_hash() -> None:
    a = Flow("x").source("s", seed, text="t").transform("p", split).sink("q", split).build()
    b = Flow("x").source("s", seed, text="t").transform("q", split).sink("p", split).build()
    assert a.definition_hash != b.definition_hash
    # Params and types do not enter the definition hash (they enter step fingerprints).
    c = Flow("y").source("s", seed, text="other").transform("p", split).sink("q", seed).build()
    assert c.definition_hash == a.definition_hash


def test_builder_binds_plain_functions_and_uses_registered_names(registry: StepRegistry) -> None:
    definition = (
        Flow("x", registry=registry).source("s", seed, text="t").transform("p", split).build()
    )
    # Functions registered in the builder's registry are referred to by their names.
    assert [s.type for s in definition.steps] == ["chem.seed", "chem.split"]
    assert definition.bindings == {}
    unregistered = Flow("x").source("s", seed, text="t").build()
    assert unregistered.steps[0].type == "engine_service.definitions.samples.seed"
    assert unregistered.bindings["engine_service.definitions.samples.seed"].fn is seed
    # The binding travels with the definition: it resolves with an empty registry.
    assert unregistered.resolve(StepRegistry())[0].fn is seed


def test_builder_numbers_functions_that_share_a_name() -> None:
    definition = (
        Flow("x")
        .source("s", lambda ctx: success(1))
        .transform("t", lambda ctx: success(2))
        .sink("u", split)
        .transform("v", split)
        .build()
    )
    types = [s.type for s in definition.steps]
    assert len(set(types)) == 4
    assert types[1] == types[0] + "#2"


def test_resolve_is_remembered_until_the_registry_grows() -> None:
    """A success is reused while the registry is at the same revision; a type added since
    (here: a child registry's own type shadowing its parent's) is seen at once."""
    parent = StepRegistry()
    parent.step("t.step", kind=StepKind.SOURCE)(seed)
    child = StepRegistry(parent)
    definition = FlowDefinition("memo", (StepSpec("a", "t.step", StepKind.SOURCE),))
    first = definition.resolve(child)
    assert first[0].fn is seed
    assert definition.resolve(child) is first  # remembered: the same tuple
    child.step("t.step", kind=StepKind.SOURCE)(split)
    assert definition.resolve(child)[0].fn is split
    # Another registry is resolved on its own, and a failure is never remembered.
    empty = StepRegistry()
    with pytest.raises(InvalidArgument):
        definition.resolve(empty)
    empty.step("t.step", kind=StepKind.SOURCE)(seed)
    assert definition.resolve(empty)[0].fn is seed
