"""Pure helpers of the in-memory store: request checks, flow construction, page tokens."""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from flowledger.canonical import content_hash, parse_json
from flowledger.errors import InvalidArgument
from flowledger_core.domain import Append, Flow, FlowFilter, NewBranch, NewFlow
from store_service.adapters.flow_rules import checked_prefix
from store_service.adapters.wait_rules import check_append_wait

_CURSOR = re.compile(r"mem:(0|[1-9][0-9]{0,18})\Z")


def flow_uuid(value: str, field: str = "flow_id") -> str:
    """Lower-case canonical UUID text (as Postgres prints it), or InvalidArgument on `field`."""
    try:
        return str(uuid.UUID(value))
    except (ValueError, AttributeError, TypeError):
        raise InvalidArgument.field(field, f"must be a UUID, got {value!r:.80}") from None


def flow_id_or_new(flow_id: str | None) -> str:
    return flow_uuid(flow_id) if flow_id else str(uuid.uuid4())


def check_json(text: str, field: str) -> None:
    try:
        value = parse_json(text or "{}")
    except ValueError:
        raise InvalidArgument.field(field, "must be valid JSON") from None
    check_storable(value)


def check_storable(value: Any) -> None:
    """Refuse what jsonb refuses (NUL characters, lone surrogates), as Postgres would."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str) and not _storable_text(item):
            raise InvalidArgument(
                "a value could not be stored: it contains text Postgres cannot store, "
                "such as \\u0000",
                reason="UNSTORABLE_VALUE",
            )


def _storable_text(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\x00" not in text


def check_command_id(command_id: str) -> None:
    # Length only, as the Postgres adapter checks; the character set is the gRPC layer's job.
    if not 1 <= len(command_id) <= 128:
        raise InvalidArgument.field("command_id", "must be 1..128 characters")


def check_chunk_size(chunk_size: int) -> None:
    if not 1 <= chunk_size <= 10_000:
        raise InvalidArgument.field("chunk_size", "must be 1..10000")


def check_append(cmd: Append) -> None:
    """The stateless checks of an append (the Postgres adapter makes the same before its tx)."""
    flow_uuid(cmd.flow_id)
    if not cmd.events:
        raise InvalidArgument.field("events", "an append needs at least one event")
    check_command_id(cmd.command_id)
    if cmd.expected_version < 0:
        raise InvalidArgument.field("expected_version", "must be >= 0")
    check_append_wait(cmd)
    for i, art in enumerate(cmd.artifacts):
        if not 0 <= art.event_index < len(cmd.events):
            raise InvalidArgument.field(
                f"artifacts[{i}].event_index", "must point at an event of this append"
            )
        try:
            actual = content_hash(parse_json(art.payload_json))
        except (ValueError, TypeError):
            raise InvalidArgument.field(
                f"artifacts[{i}].payload_json", "is not hashable JSON"
            ) from None
        if actual != art.hash:
            raise InvalidArgument.field(
                f"artifacts[{i}].hash", "must be the sha256 of the payload's canonical JSON"
            )
    # After the per-field checks, as Postgres refuses these only when the row is written.
    for i, event in enumerate(cmd.events):
        check_json(event.payload_json, f"events[{i}].payload_json")
    for i, art in enumerate(cmd.artifacts):
        check_storable(parse_json(art.payload_json))
        if art.metadata_json is not None:
            check_json(art.metadata_json, f"artifacts[{i}].metadata_json")


def appended(flow: Flow, cmd: Append, version: int, now: datetime) -> Flow:
    """The flow after ``cmd`` was appended: its new head, and the status the command set, which
    replaces wake_at and task_queue too (None clears them)."""
    if cmd.new_status is None:
        return replace(flow, version=version, updated_at=now)
    return replace(
        flow, version=version, updated_at=now, status=cmd.new_status, wake_at=cmd.wake_at,
        task_queue=cmd.task_queue,
    )  # fmt: skip


def new_flow(
    new: NewFlow | NewBranch, flow_id: str, parent_flow_id: str | None, fork_version: int
) -> Flow:
    """The flow a create call would make (checked as the flows table's constraints would)."""
    if not 1 <= len(new.namespace) <= 128:
        raise InvalidArgument.field("namespace", "must be 1..128 characters")
    if len(new.name) > 256:
        raise InvalidArgument.field("name", "must be at most 256 characters")
    check_json(new.metadata_json, "metadata_json")
    now = datetime.now(UTC)
    return Flow(
        flow_id=flow_id,
        namespace=new.namespace,
        name=new.name,
        status=new.status,
        metadata_json=new.metadata_json or "{}",
        parent_flow_id=parent_flow_id,
        fork_version=fork_version,
        version=fork_version,
        generation=0,
        created_by=new.created_by,
        created_at=now,
        updated_at=now,
    )


def same_creation(existing: Flow, candidate: Flow) -> bool:
    """Whether a repeated create call asks for the flow that exists (its status and version may
    have moved on since: a retry after the flow started must still be recognised)."""
    return (
        existing.namespace == candidate.namespace
        and existing.name == candidate.name
        and parse_json(existing.metadata_json) == parse_json(candidate.metadata_json)
        and existing.created_by == candidate.created_by
        and existing.parent_flow_id == candidate.parent_flow_id
        and existing.fork_version == candidate.fork_version
    )


def matches(flow: Flow, flt: FlowFilter) -> bool:
    return (
        flow.namespace == flt.namespace
        and (not flt.statuses or flow.status in flt.statuses)
        and (flt.name is None or flow.name == flt.name)
        and (
            flt.parent_flow_id is None
            or flow.parent_flow_id == flow_uuid(flt.parent_flow_id, "parent_flow_id")
        )
        and (flt.include_deleted or not flow.deleted)
        and (not flt.flow_id_prefix or flow.flow_id.startswith(checked_prefix(flt)))
    )



def flow_key(flow: Flow) -> tuple[datetime, str]:
    """The listing order (descending): newest first, ties by flow id."""
    return (flow.created_at, flow.flow_id)


def encode_page_token(last: Flow) -> str:
    raw = f"{last.created_at.isoformat()}|{last.flow_id}".encode()
    return base64.urlsafe_b64encode(raw).decode()


def decode_page_token(token: str) -> tuple[datetime, str] | None:
    if not token:
        return None
    try:
        created, flow_id = base64.urlsafe_b64decode(token.encode()).decode().split("|")
        when = datetime.fromisoformat(created)
        if when.tzinfo is None:
            raise ValueError("naive timestamp")
        return (when, str(uuid.UUID(flow_id)))
    except (ValueError, binascii.Error, UnicodeError):
        raise InvalidArgument.field("page_token", "is not a page token of this store") from None


def decode_cursor(cursor: str) -> int:
    """The seq after which a subscription resumes (cursors are ``mem:<seq>``)."""
    if not cursor:
        return 0
    m = _CURSOR.match(cursor)
    if m is None:
        raise InvalidArgument.field("after_cursor", "is not a cursor of this store")
    return int(m.group(1))
