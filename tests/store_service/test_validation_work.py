"""Validation and conversion of the definition and lease RPCs, without a server."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from google.protobuf.message import Message

from flowledger.errors import InvalidArgument, ResourceExhausted
from flowledger.v1 import store_pb2
from flowledger_core import domain
from flowledger_core.wire import store_work as convert_work
from store_service import validation_work
from store_service.settings import Limits

LIMITS = Limits()
FLOW = "0b4f5a3e-8e0f-4a52-9d55-2a6f3f1c9e10"
NOW = datetime(2026, 1, 2, 3, 4, 5, 678_000, tzinfo=UTC)


def put(**kw: str) -> store_pb2.PutDefinitionVersionRequest:
    fields = {"namespace": "ns", "name": "chem", "definition_json": '{"steps": []}',
              "definition_hash": "a" * 64} | kw  # fmt: skip
    return store_pb2.PutDefinitionVersionRequest(**fields)


def fields_of(
    check: Callable[[Any, Limits], None], request: Message, error: type[Exception] = InvalidArgument
) -> set[str]:
    with pytest.raises(error) as caught:
        check(request, LIMITS)
    assert isinstance(caught.value, InvalidArgument | ResourceExhausted)
    return {v.field for v in caught.value.violations}


@pytest.mark.parametrize(
    ("name", "ok"),
    [("chem", True), ("a.b_c-D9", True), ("x" * 128, True), ("x" * 129, False), ("", False),
     ("a:b", False), ("a b", False), ("ünï", False)],
)  # fmt: skip
def test_definition_names(name: str, ok: bool) -> None:
    if ok:
        validation_work.check_put_definition_version(put(name=name), LIMITS)
    else:
        assert fields_of(validation_work.check_put_definition_version, put(name=name)) == {"name"}


@pytest.mark.parametrize(
    ("text", "fragment"),
    [("", "required"), ("[]", "JSON object"), ("{", "not valid JSON"),
     ('{"n": 9007199254740993}', "canonical"), ('{"a": "\\u0000"}', "\\u0000")],
)  # fmt: skip
def test_definition_documents(text: str, fragment: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        validation_work.check_put_definition_version(put(definition_json=text), LIMITS)
    (violation,) = caught.value.violations
    assert violation.field == "definition_json"
    assert fragment in violation.description


def test_oversized_documents_are_resource_exhausted() -> None:
    limits = Limits(max_payload_bytes=100, max_message_bytes=100 + 64 * 1024)
    request = put(definition_json='{"a": "' + "x" * 200 + '"}')
    with pytest.raises(ResourceExhausted):
        validation_work.check_put_definition_version(request, limits)


def test_transitions_need_known_states() -> None:
    request = store_pb2.TransitionDefinitionVersionRequest(
        namespace="ns", name="chem", version=1, to_state=store_pb2.STORED_DEFINITION_STATE_DRAFT,
    )
    assert fields_of(validation_work.check_transition_definition_version, request) == {
        "from_states"
    }
    request.from_states.append(store_pb2.STORED_DEFINITION_STATE_PUBLISHED)
    validation_work.check_transition_definition_version(request, LIMITS)


@pytest.mark.parametrize(
    ("limit", "lease_ms", "bad"),
    [(1, 100, set()), (100, 600_000, set()), (0, 100, {"limit"}), (101, 100, {"limit"}),
     (1, 99, {"lease_ms"}), (1, 600_001, {"lease_ms"})],
)  # fmt: skip
def test_claim_ranges(limit: int, lease_ms: int, bad: set[str]) -> None:
    request = store_pb2.ClaimFlowsRequest(owner="r", limit=limit, lease_ms=lease_ms)
    if bad:
        assert fields_of(validation_work.check_claim_flows, request) == bad
    else:
        validation_work.check_claim_flows(request, LIMITS)


def test_claim_filters_are_bounded() -> None:
    request = store_pb2.ClaimFlowsRequest(
        owner="r", limit=1, lease_ms=100, flow_ids=[FLOW] * 1001
    )
    assert fields_of(validation_work.check_claim_flows, request, ResourceExhausted) == {"flow_ids"}


def test_every_wire_state_maps_to_the_domain_and_back() -> None:
    wire = {v for v in store_pb2.StoredDefinitionState.values() if v != 0}
    assert {convert_work.definition_state_from_number(v) for v in wire} == set(
        domain.DefinitionState
    )
    assert convert_work.definition_state_from_number(0) is None


def test_conversions_round_trip() -> None:
    stored = domain.StoredDefinition(
        "ns", "chem", 3, domain.DefinitionState.PUBLISHED, '{"a":1}', "b" * 64, "note", "alice",
        NOW, NOW, (domain.DefinitionTransition(domain.DefinitionState.DRAFT, "n", "alice", NOW),),
    )  # fmt: skip
    back = convert_work.stored_definition_from_pb(convert_work.stored_definition_to_pb(stored))
    assert back == stored
    draft = domain.StoredDefinition(
        "ns", "chem", 1, domain.DefinitionState.DRAFT, "{}", "b" * 64, "", "", NOW, None
    )
    assert convert_work.stored_definition_from_pb(convert_work.stored_definition_to_pb(draft)) == (
        draft
    )
    flow = domain.Flow(FLOW, "ns", "f", domain.FlowStatus.RUNNING, "{}", None, 0, 4, 0, "",
                       NOW, NOW, lease_token=7)  # fmt: skip
    lease = domain.FlowLease(flow, 7, NOW, "replica-a")
    assert convert_work.flow_lease_from_pb(convert_work.flow_lease_to_pb(lease)) == lease
    taken = domain.FlowLease(flow, 7, NOW, "replica-a", previous_owner="replica-b")
    assert convert_work.flow_lease_from_pb(convert_work.flow_lease_to_pb(taken)) == taken
    new = convert_work.new_definition_version(put())
    assert new.request_id is None
    name, page = convert_work.definition_query(
        store_pb2.ListStoredDefinitionVersionsRequest(namespace="ns")
    )
    assert (name, page) == (None, domain.Page(size=100, token=""))
    cmd = domain.DefinitionTransitionCommand(
        "ns", "chem", 2, domain.DefinitionState.ARCHIVED, (domain.DefinitionState.PUBLISHED,)
    )
    assert convert_work.definition_transition(convert_work.transition_request(cmd)) == cmd
    claim = domain.ClaimRequest("r", 5, 1000, ("ns",), (FLOW,))
    assert convert_work.claim_request(convert_work.claim_flows_request(claim)) == claim
