"""The SDK's own types: every wire enum value maps to an SDK value, and back; nothing generated
leaks out of the public API."""

from __future__ import annotations

import dataclasses
import inspect
import typing

from flowledger import _wire, client
from flowledger import types as t
from flowledger.v1 import common_pb2, engine_pb2
from flowledger_core.domain import EventType as StoreEventType


def _numbers(enum: typing.Any) -> set[int]:
    return {number for name, number in enum.items() if not name.endswith("_UNSPECIFIED")}


def test_every_wire_enum_value_has_an_sdk_value() -> None:
    assert set(_wire.DEFINITION_STATES) == _numbers(engine_pb2.DefinitionState)
    assert set(_wire.STEP_STATUSES) == _numbers(engine_pb2.StepStatus)
    assert set(_wire.FLOW_STATUSES) == _numbers(common_pb2.FlowStatus)
    assert set(_wire.EVENT_TYPES) == _numbers(common_pb2.EventType)
    assert {_wire.FLOW_STATUSES[n]: n for n in _wire.FLOW_STATUSES} == _wire.FLOW_STATUS_NUMBERS


def test_event_types_and_variants_match_the_store() -> None:
    assert {(e.value, e.variant) for e in t.EventType} == {
        (e.value, e.variant) for e in StoreEventType
    }


def test_the_public_api_returns_sdk_types_only() -> None:
    """Every public method of the client is annotated with flowledger.types (or builtins)."""
    hints_seen = 0
    for name, method in inspect.getmembers(client.FlowledgerClient, inspect.isfunction):
        if name.startswith("_"):
            continue
        text = str(inspect.signature(method).return_annotation)
        assert "pb2" not in text, (name, text)
        hints_seen += 1
    assert hints_seen >= 14
    for _, cls in inspect.getmembers(t, inspect.isclass):
        if dataclasses.is_dataclass(cls):
            params = getattr(cls, "__dataclass_params__", None)
            assert params is not None, cls
            assert params.frozen, cls
