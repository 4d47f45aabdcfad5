"""Event payloads ↔ JSON, compact variants, and the pure replay reducer."""

from __future__ import annotations

import json

import pytest

from engine_service.core.event_codec import decode, encode
from engine_service.core.events import (
    EVENT_TYPES,
    EngineEvent,
    FlowCompleted,
    FlowFailed,
    FlowInitialized,
    PropertyPreferenceAssigned,
    StepFailed,
    StepFinished,
    StepSignal,
    StepStarted,
    variant,
)
from engine_service.core.replay import FlowState, StepStatus, replay
from engine_service.core.state_json import state_from_json, state_to_json
from engine_service.definitions.samples import chem_flow
from engine_service.fingerprint import ENGINE_VERSION
from flowledger.canonical import parse_json
from flowledger.errors import InternalError
from flowledger_core.domain import EventType

H = "a" * 64
CHEM = chem_flow()
INIT = FlowInitialized(
    definition_name="chem",
    definition_version=2,
    definition_hash=CHEM.definition_hash,
    steps=CHEM.steps,
    input_hash=H,
    variables_hash=None,
    engine_version=ENGINE_VERSION,
)
ALL_EVENTS: list[EngineEvent] = [
    INIT,
    StepStarted("seed", 0, 1),
    StepSignal("seed", 0, "progress", {"pct": 50}),
    StepFinished("seed", 0, 1, (H,), (H, H), "f" * 64),
    StepFailed("split", 1, 1, "boom", "ValueError"),
    FlowCompleted("c" * 64),
    FlowFailed("split", 1, "boom", "ValueError"),
]


@pytest.mark.parametrize("event", ALL_EVENTS, ids=lambda e: type(e).__name__)
def test_events_round_trip_through_json(event: EngineEvent) -> None:
    new = encode(event)
    assert decode(new.type, new.payload_json) == event
    payload = parse_json(new.payload_json)
    assert payload["kind"] == type(event).__name__
    # The payload text is canonical: what Postgres re-formats parses back equal.
    assert decode(new.type, json.dumps(payload, indent=2)) == event


def test_variants() -> None:
    assert "".join(variant(e) for e in ALL_EVENTS) == "ISGFXCE"
    assert encode(INIT).type is EventType.FLOW_INITIALIZED


def test_flow_initialized_records_the_definition() -> None:
    payload = parse_json(encode(INIT).payload_json)
    assert payload["steps"][0] == {
        "id": "seed",
        "type": "chem.seed",
        "kind": "source",
        "config": {"text": "Hola"},
    }
    assert payload["engine_version"] == ENGINE_VERSION
    assert INIT.step_ids == ("seed", "split", "print_and_count")


def test_every_event_type_is_modelled() -> None:
    assert set(EVENT_TYPES.values()) == set(EventType)
    assert len({t.variant for t in EventType}) == len(EventType)  # one letter each


@pytest.mark.parametrize(
    ("etype", "payload"),
    [
        (EventType.STEP_STARTED, '{"kind": "StepFinished", "step_id": "s"}'),
        (EventType.STEP_STARTED, '{"kind": "StepStarted", "step_id": "s", "index": "0"}'),
        (EventType.STEP_STARTED, '{"kind": "StepStarted", "step_id": "s"}'),
        (EventType.FLOW_COMPLETED, "[]"),
    ],
)
def test_malformed_payloads_are_internal_errors(etype: EventType, payload: str) -> None:
    with pytest.raises(InternalError) as exc:
        decode(etype, payload)
    assert exc.value.reason == "CORRUPT_EVENT"


def _fold(*events: EngineEvent) -> FlowState:
    return replay(enumerate(events, start=1))


def test_replay_tracks_cursor_statuses_and_fingerprints() -> None:
    state = _fold(INIT, StepStarted("seed", 0, 1))
    assert state.cursor == 0
    assert [s.status for s in state.steps] == [
        StepStatus.RUNNING,
        StepStatus.PENDING,
        StepStatus.PENDING,
    ]
    state = replay([(3, StepFinished("seed", 0, 1, (H,), (H,), "1" * 64))], start=state)
    assert state.cursor == 1
    assert state.steps[0].status is StepStatus.FINISHED_OK
    assert state.step_fingerprints == ("1" * 64,)
    assert not state.terminal
    failed = replay(
        [
            (4, StepStarted("split", 1, 1)),
            (5, StepFailed("split", 1, 1, "no", "E")),
            (6, FlowFailed("split", 1, "no", "E")),
        ],
        start=state,
    )
    assert failed.failed
    assert failed.terminal
    assert failed.steps[1].status is StepStatus.FAILED
    assert failed.steps[1].reason == "no"
    assert failed.version == 6


def _finished(i: int, step_id: str) -> list[EngineEvent]:
    return [StepStarted(step_id, i, 1), StepFinished(step_id, i, 1, (H,), (H,), str(i) * 64)]


def test_completed_state_and_snapshot_round_trip() -> None:
    events: list[EngineEvent] = [INIT]
    for i, step_id in enumerate(INIT.step_ids):
        events += _finished(i, step_id)
    events.append(FlowCompleted("c" * 64))
    state = _fold(*events)
    assert state.completed
    assert state.flow_fingerprint == "c" * 64
    assert state.cursor == 3
    assert state_from_json(state_to_json(state)) == state
    # A snapshot taken midway, plus the tail, folds to the same state as the whole log.
    for cut in range(len(events) + 1):
        head = replay(enumerate(events[:cut], start=1))
        snapshot = state_from_json(state_to_json(head))
        tail = list(enumerate(events, start=1))[cut:]
        assert replay(tail, start=snapshot) == state


@pytest.mark.parametrize(
    "events",
    [
        [StepStarted("seed", 0, 1)],  # before FlowInitialized
        [INIT, INIT],
        [INIT, StepFinished("seed", 0, 1, (), (), H)],  # never started
        [INIT, StepStarted("split", 1, 1)],  # not the cursor
        [INIT, StepStarted("nope", 0, 1)],
        [INIT, FlowCompleted(H)],  # steps pending
        [INIT, StepStarted("seed", 0, 1), StepSignal("split", 1, "x", None)],
        [INIT, FlowFailed("seed", 0, "x", "y"), StepStarted("seed", 0, 1)],  # after the end
    ],
)
def test_replay_refuses_a_log_that_breaks_the_state_machine(events: list[EngineEvent]) -> None:
    with pytest.raises(InternalError) as exc:
        _fold(*events)
    assert exc.value.reason == "INVALID_TRANSITION"


def test_replay_refuses_version_gaps() -> None:
    with pytest.raises(InternalError):
        replay([(1, INIT), (3, StepStarted("seed", 0, 1))])


def test_unusable_snapshots_are_refused() -> None:
    for text in ['{"schema": "other/9"}', "[]", '{"schema": "flowledger.flow-state/1"}']:
        with pytest.raises(InternalError) as exc:
            state_from_json(text)
        assert exc.value.reason == "BAD_SNAPSHOT"


ASSIGNED = PropertyPreferenceAssigned({"split": {"x": 1}, "print_and_count": {}})


def test_params_assignment_round_trips_and_is_variant_p() -> None:
    new = encode(ASSIGNED)
    assert new.type is EventType.PROPERTY_PREFERENCE_ASSIGNED
    assert parse_json(new.payload_json) == {
        "kind": "PropertyPreferenceAssigned",
        "params": {"split": {"x": 1}, "print_and_count": {}},
    }
    assert decode(new.type, new.payload_json) == ASSIGNED
    assert variant(ASSIGNED) == "P"
    with pytest.raises(InternalError):
        decode(new.type, '{"kind": "PropertyPreferenceAssigned", "params": {"split": 1}}')


def test_replay_applies_assigned_params_to_steps_not_started() -> None:
    state = _fold(INIT, *_finished(0, "seed"), ASSIGNED)
    assert state.params_of(0) == {"text": "Hola"}
    assert state.params_of(1) == {"x": 1}
    assert state.params_of(2) == {}
    assert state_from_json(state_to_json(state)) == state
    later = replay([(5, PropertyPreferenceAssigned({"split": {"x": 2}}))], start=state)
    assert later.params_of(1) == {"x": 2}
    assert later.params_of(2) == {}


@pytest.mark.parametrize(
    "params",
    [{"seed": {}}, {"nope": {}}],  # seed has finished; nope is no step of the flow
)
def test_params_of_started_or_unknown_steps_break_the_log(
    params: dict[str, dict[str, int]],
) -> None:
    with pytest.raises(InternalError) as exc:
        _fold(INIT, *_finished(0, "seed"), PropertyPreferenceAssigned(params))
    assert exc.value.reason == "INVALID_TRANSITION"
