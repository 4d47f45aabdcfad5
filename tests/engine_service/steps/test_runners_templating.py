"""``{{ placeholders }}`` in step configs: JMESPath over the step's data."""

from __future__ import annotations

import pytest

from engine_service.steps.context import ArtifactValue, StepContext
from engine_service.steps.templating import (
    TemplateError,
    problems,
    render,
    render_string,
    render_text,
    template_data,
)
from flowledger.canonical import JsonValue

DATA: JsonValue = {
    "input": {"id": 7, "name": "ana", "tags": ["a", "b"], "ok": True, "zero": 0},
    "variables": {"region": "eu"},
    "results": {"seed": [{"n": 2}]},
    "inputs": [{"n": 2}],
    "params": {"url": "http://x"},
}


@pytest.mark.parametrize(
    ("template", "value"),
    [
        ("{{ input.id }}", 7),
        ("{{input.tags}}", ["a", "b"]),
        ("{{ input.ok }}", True),
        ("{{ input.zero }}", 0),
        ("{{ results.seed[0] }}", {"n": 2}),
        ("{{ inputs[0].n }}", 2),
        ("{{ length(input.tags) }}", 2),
        ("{{ input.missing || 'none' }}", "none"),
        ("id={{ input.id }}", "id=7"),
        ("{{ input.name }}-{{ variables.region }}", "ana-eu"),
        ("tags {{ input.tags }} ok={{ input.ok }}", 'tags ["a","b"] ok=true'),
        ("no placeholders", "no placeholders"),
        ("{{ '{{' }} literal", "{{ literal"),
        ("{{ params.url }}/v1", "http://x/v1"),
    ],
)
def test_render_string(template: str, value: JsonValue) -> None:
    assert render_string(template, DATA) == value


def test_render_walks_values_not_keys() -> None:
    config: JsonValue = {"{{ input.id }}": ["{{ input.id }}", {"n": "{{ inputs[0].n }}"}, None, 3]}
    assert render(config, DATA) == {"{{ input.id }}": [7, {"n": 2}, None, 3]}


def test_render_text_makes_values_text() -> None:
    assert render_text("{{ input.id }}", DATA) == "7"
    assert render_text("{{ input.tags }}", DATA) == '["a","b"]'


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{{ input.nmae }}", "{{ input.nmae }} is null"),
        ("x {{ results.other[0] }}", "{{ results.other[0] }} is null"),
        ("{{ input.[ }}", "{{ input.[ }}:"),
        ("{{ length(input.id) }}", "{{ length(input.id) }}:"),
    ],
)
def test_failures_name_the_placeholder(template: str, message: str) -> None:
    with pytest.raises(TemplateError) as exc:
        render_string(template, DATA)
    assert message in str(exc.value)


def test_problems_name_each_field_path() -> None:
    config: JsonValue = {
        "url": "http://x/{{ input.id }}",
        "body": {"a": ["ok", "{{ input.[ }}"], "b": "{{ }}", "c": "open {{ input.id"},
    }
    found = problems(config, "steps[1].config")
    assert [v.field for v in found] == [
        "steps[1].config.body.a[1]",
        "steps[1].config.body.b",
        "steps[1].config.body.c",
    ]
    assert "not valid JMESPath" in found[0].description
    assert "empty placeholder" in found[1].description
    assert "without a closing" in found[2].description


def test_template_data_is_the_steps_view() -> None:
    ctx = StepContext(
        flow_id="f",
        namespace="default",
        step_id="call",
        index=1,
        attempt=1,
        inputs=(ArtifactValue("h1", {"n": 2}),),
        params={"url": "http://x"},
        flow_input={"id": 7},
        variables={"region": "eu"},
        results={"seed": (ArtifactValue("h1", {"n": 2}),)},
    )
    assert template_data(ctx) == {
        "input": {"id": 7},
        "variables": {"region": "eu"},
        "results": {"seed": [{"n": 2}]},
        "inputs": [{"n": 2}],
        "params": {"url": "http://x"},
    }
