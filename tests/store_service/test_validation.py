"""Request validation and proto ↔ domain conversion, without a server."""

from __future__ import annotations

import pytest

from flowledger.canonical import content_hash
from flowledger.errors import InvalidArgument, ResourceExhausted
from flowledger.v1 import common_pb2, store_pb2
from flowledger_core import domain
from flowledger_core.checks import MAX_REPORTED_VIOLATIONS
from flowledger_core.wire import store as convert
from store_service import validation
from store_service.settings import Limits

LIMITS = Limits()
FLOW = "0b4f5a3e-8e0f-4a52-9d55-2a6f3f1c9e10"


def append_request(
    *payloads: str, command_id: str = "c-1", expected_version: int = 0
) -> store_pb2.AppendEventsRequest:
    return store_pb2.AppendEventsRequest(
        namespace="ns", flow_id=FLOW, command_id=command_id, expected_version=expected_version,
        events=[common_pb2.NewEvent(type=common_pb2.EVENT_TYPE_STEP_STARTED, payload_json=p)
                for p in payloads],
    )


def violations(request: store_pb2.AppendEventsRequest) -> dict[str, str]:
    with pytest.raises(InvalidArgument) as caught:
        validation.check_append_events(request, LIMITS)
    return {v.field: v.description for v in caught.value.violations}


def test_a_valid_append_passes() -> None:
    value = {"rows": [1, 2.5, "é"], "nested": {"ok": True, "none": None}}
    request = append_request('{"a": 1}', '{"b": [1, 2, {"c": "ü"}]}')
    request.artifacts.append(common_pb2.NewArtifact(
        hash=content_hash(value), kind="json", payload_json='{"nested": {"none": null, "ok": '
        'true}, "rows": [1, 2.5, "\\u00e9"]}', metadata_json='{"src": "x"}', event_index=1,
    ))
    validation.check_append_events(request, LIMITS)


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        ("", "required"),
        ("{", "not valid JSON"),
        ('{"a": NaN}', "not valid JSON"),
        ('{"a": Infinity}', "not valid JSON"),
        ('{"a": 1e400}', "range of a double"),
        ('{"a": "\\u0000"}', "\\u0000"),
        ('{"\\u0000": 1}', "key"),
        ('{"a": "\\ud800"}', "unpaired surrogate"),
        ('{"a": ' + "[" * 100 + "]" * 100 + "}", "nested deeper"),
        ('{"a": ' + "[" * 5000 + "]" * 5000 + "}", "nested deeper"),
        ("[1, 2]", "JSON object"),
        ('"text"', "JSON object"),
    ],
)
def test_event_payload_problems(payload: str, fragment: str) -> None:
    found = violations(append_request(payload))
    assert list(found) == ["events[0].payload_json"]
    assert fragment in found["events[0].payload_json"]


def test_every_violation_is_collected() -> None:
    request = append_request("[]", "{}", "{", command_id="", expected_version=-2)
    request.events[1].type = common_pb2.EVENT_TYPE_UNSPECIFIED
    request.artifacts.append(common_pb2.NewArtifact(hash="F" * 64, kind="k", payload_json="1",
                                                    event_index=3))
    found = violations(request)
    assert set(found) == {
        "events[0].payload_json", "events[1].type", "events[2].payload_json", "command_id",
        "expected_version", "artifacts[0].hash", "artifacts[0].event_index",
    }


def test_artifact_hash_is_recomputed() -> None:
    request = append_request("{}")
    request.artifacts.append(common_pb2.NewArtifact(
        hash=content_hash({"a": 1}), kind="json", payload_json='{"a": 2}',
    ))
    found = violations(request)
    assert list(found) == ["artifacts[0].hash"]
    assert content_hash({"a": 2}) in found["artifacts[0].hash"]


def test_artifact_without_canonical_form() -> None:
    request = append_request("{}")
    request.artifacts.append(common_pb2.NewArtifact(
        hash="0" * 64, kind="json", payload_json=str(2**60),
    ))
    assert "canonical" in violations(request)["artifacts[0].payload_json"]


def test_reported_violations_are_capped_but_counted() -> None:
    request = append_request(*["[]"] * 200)
    with pytest.raises(InvalidArgument) as caught:
        validation.check_append_events(request, LIMITS)
    assert len(caught.value.violations) == MAX_REPORTED_VIOLATIONS
    assert "197 more" in caught.value.message


def test_limits_win_and_oversized_json_is_not_parsed() -> None:
    limits = Limits(max_payload_bytes=100, max_message_bytes=100 + 64 * 1024)
    request = append_request('{"a": "' + "x" * 200, "[]")  # oversized *and* malformed
    with pytest.raises(ResourceExhausted) as caught:
        validation.check_append_events(request, limits)
    found = {v.field: v.description for v in caught.value.violations}
    assert set(found) == {"events[0].payload_json", "events[1].payload_json"}
    assert "bytes" in found["events[0].payload_json"]
    assert caught.value.metadata == {"limit": "max_payload_bytes", "max": "100"}


@pytest.mark.parametrize(
    ("value", "ok"),
    [(FLOW, True), (FLOW.upper(), False), ("{" + FLOW + "}", False), (FLOW.replace("-", ""),
     False), ("", False), (FLOW + "\n", False)],
)
def test_uuids_must_be_canonical(value: str, ok: bool) -> None:
    request = store_pb2.GetFlowRequest(namespace="ns", flow_id=value)
    if ok:
        validation.check_get_flow(request, LIMITS)
    else:
        with pytest.raises(InvalidArgument):
            validation.check_get_flow(request, LIMITS)


@pytest.mark.parametrize(
    ("namespace", "ok"),
    [("tenant-1", True), ("a.b_c:d", True), ("x" * 128, True), ("x" * 129, False),
     ("", False), ("with space", False), ("ünï", False), ("a/b", False)],
)
def test_namespace_alphabet_and_length(namespace: str, ok: bool) -> None:
    request = store_pb2.GetFlowRequest(namespace=namespace, flow_id=FLOW)
    if ok:
        validation.check_get_flow(request, LIMITS)
    else:
        with pytest.raises(InvalidArgument):
            validation.check_get_flow(request, LIMITS)


def test_every_wire_enum_value_maps_to_the_domain_and_back() -> None:
    wire_types = {v for v in common_pb2.EventType.values() if v != 0}
    assert {convert.event_type_from_number(v) for v in wire_types} == set(domain.EventType)
    wire_statuses = {v for v in common_pb2.FlowStatus.values() if v != 0}
    assert {convert.flow_status_from_number(v) for v in wire_statuses} == set(domain.FlowStatus)
    assert convert.event_type_from_number(0) is None
    assert convert.event_type_from_number(999) is None
    for event_type in domain.EventType:
        number = common_pb2.EventType.Value(f"EVENT_TYPE_{event_type.name}")
        assert convert.event_type_from_number(number) is event_type


def test_conversion_applies_contract_defaults() -> None:
    new = convert.new_flow(store_pb2.CreateFlowRequest(namespace="ns", name="n"))
    assert new == domain.NewFlow(namespace="ns", name="n", flow_id=None, metadata_json="{}",
                                 created_by="", status=domain.FlowStatus.QUEUED)
    flt, page = convert.flow_query(store_pb2.ListFlowsRequest(namespace="ns"))
    assert page.size == 100
    assert flt.statuses == ()
    assert flt.name is None
    cmd = convert.append(append_request("{}"))
    assert cmd.new_status is None
    assert cmd.events[0].type is domain.EventType.STEP_STARTED
