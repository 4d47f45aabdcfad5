"""Port values the store's wire cannot carry as they are: canonicalised or refused by the client.

The store port (:class:`flowledger_core.ports.EventStore`) and its wire (``store.proto``) differ in
a few places where proto3 has no way to say what the port says: an empty string or a zero *is*
"not set" on the wire, and a flow id must be in canonical lower-case form there. So that
:class:`engine_service.store_client.client.GrpcEventStore` answers as the backends do (the parity
suite, ``tests/store/test_parity_*``, runs over it), the client maps those values here, before the
request is built:

* a flow id the port accepts in any form :class:`uuid.UUID` reads (upper case, say) is sent in
  canonical form, as the backends store it; an id that is not a UUID is sent as it is, for the
  store to refuse (``InvalidArgument`` on the same field);
* ``Page(size=0)`` is refused (on the wire 0 means the default page size);
* a definition ``request_id`` of ``""`` is refused (on the wire ``""`` means none);
* an append's ``task_queue`` of ``""`` is refused (on the wire ``""`` means none), and so is a
  naive ``wake_at`` (the wire's Timestamp would read it as UTC).

The refusals name the same fields as the backends' (``store_service/adapters/*_rules.py``).
"""

from __future__ import annotations

import uuid

from flowledger.errors import InvalidArgument
from flowledger_core.domain import Append, NewDefinitionVersion, Page


def wire_uuid(value: str) -> str:
    """``value`` in canonical lower-case UUID form, or unchanged when it is not a UUID."""
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return value


def check_page(page: Page) -> None:
    if page.size == 0:
        raise InvalidArgument.field("page_size", "must be 1..1000, got 0")


def check_request_id(new: NewDefinitionVersion) -> None:
    if new.request_id == "":
        raise InvalidArgument.field("request_id", "must be 1..128 characters")


def check_append(cmd: Append, prefix: str = "") -> None:
    """In the backends' order: a misplaced ``wake_at`` (refused by the store) comes first.
    ``prefix`` goes before the field names (``initial_append.`` for a create call's append)."""
    if cmd.wake_at is not None:
        if cmd.new_status is None:
            return
        if cmd.wake_at.utcoffset() is None:
            raise InvalidArgument.field(f"{prefix}wake_at", "must be timezone-aware")
    if cmd.task_queue == "":
        raise InvalidArgument.field(
            f"{prefix}task_queue", "must be 1..128 characters of letters, digits and . _ : -"
        )
