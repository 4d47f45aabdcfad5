"""Opaque keyset tokens of ``list_flows``: the (created_at, flow_id) of the last flow returned."""

from __future__ import annotations

import base64
import re
import uuid
from datetime import UTC, datetime, timedelta

from flowledger.errors import InvalidArgument

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_TOKEN = re.compile(r"v1\.(-?\d{1,19})\.([0-9a-f-]{36})")


def encode(created_at: datetime, flow_id: str) -> str:
    # Whole microseconds (timestamptz's precision) so the position round-trips exactly.
    micros = (created_at - _EPOCH) // timedelta(microseconds=1)
    return base64.urlsafe_b64encode(f"v1.{micros}.{flow_id}".encode()).decode().rstrip("=")


def decode(token: str) -> tuple[datetime, str] | None:
    """The position after which the next page starts; None for the first page."""
    if not token:
        return None
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode("ascii")
        m = _TOKEN.fullmatch(text)
        if m is None:
            raise ValueError(text)
        return _EPOCH + timedelta(microseconds=int(m[1])), str(uuid.UUID(m[2]))
    except (ValueError, OverflowError):
        raise InvalidArgument.field(
            "page_token", "is not a token returned by a previous ListFlows call"
        ) from None
