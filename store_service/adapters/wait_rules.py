"""The rules of waiting flows that both backends apply alike (pure: no storage).

A WAITING flow may carry a ``wake_at`` (engines claim it again once that has passed) and a
``task_queue`` (task workers claim it from there). Both are set only by an append that sets the
flow's status, which replaces them (``None`` clears them); so they mean nothing on an append
without ``new_status``, and a task queue means something only for a flow that waits.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from flowledger.errors import InvalidArgument
from flowledger_core.domain import Append, FlowStatus
from flowledger_core.limits import MAX_TASK_QUEUE_LENGTH, MAX_TASK_QUEUES_PER_CLAIM, TASK_QUEUE


def check_append_wait(cmd: Append) -> None:
    """InvalidArgument naming ``wake_at`` or ``task_queue`` when they do not fit the append."""
    if cmd.wake_at is not None:
        if cmd.new_status is None:
            raise InvalidArgument.field("wake_at", "is only allowed together with new_status")
        if not is_aware(cmd.wake_at):
            raise InvalidArgument.field("wake_at", "must be timezone-aware")
    if cmd.task_queue is not None:
        if cmd.new_status is None:
            raise InvalidArgument.field("task_queue", "is only allowed together with new_status")
        if cmd.new_status is not FlowStatus.WAITING:
            raise InvalidArgument.field("task_queue", "is only allowed with new_status WAITING")
        check_task_queue(cmd.task_queue, "task_queue")


def check_claim_queues(queues: Sequence[str]) -> None:
    if len(queues) > MAX_TASK_QUEUES_PER_CLAIM:
        raise InvalidArgument.field(
            "task_queues", f"at most {MAX_TASK_QUEUES_PER_CLAIM} task queues"
        )
    for i, queue in enumerate(queues):
        check_task_queue(queue, f"task_queues[{i}]")


def check_task_queue(queue: str, field: str) -> None:
    if not TASK_QUEUE.match(queue):
        raise InvalidArgument.field(
            field,
            f"must be 1..{MAX_TASK_QUEUE_LENGTH} characters of letters, digits and . _ : -",
        )


def is_aware(moment: datetime) -> bool:
    return moment.tzinfo is not None and moment.utcoffset() is not None
