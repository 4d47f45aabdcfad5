"""A guard against a store that refuses appends without its log moving on."""

from __future__ import annotations

from flowledger.errors import Aborted

# Refused appends in a row, with a log that did not move on, before a run gives up.
MAX_FUTILE_APPENDS = 5


class Progress:
    """Detects a loop that makes no progress: an append refused (conflict, duplicate) must be
    explained by a log that moved on; a store that says otherwise would loop us forever."""

    def __init__(self, flow_id: str) -> None:
        self._flow_id = flow_id
        self._failed_at: int | None = None
        self._futile = 0

    def failed(self, version: int) -> None:
        self._failed_at = version

    def check(self, version: int) -> None:
        if self._failed_at is None:
            return
        self._futile = self._futile + 1 if version <= self._failed_at else 0
        self._failed_at = None
        if self._futile >= MAX_FUTILE_APPENDS:
            raise Aborted(
                f"flow {self._flow_id}: {self._futile} appends in a row were refused although "
                "the log did not move on; giving up",
                reason="NO_PROGRESS",
                metadata={"flow_id": self._flow_id},
            )
