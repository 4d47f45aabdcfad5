"""The first append of a flow made by its create call (``create_flow_with``): the rules both
backends apply alike (pure: no storage).

The create call fixes what an ordinary append names itself: the namespace and flow id are the
new flow's, the expected version is 0 (the flow is empty), and the fencing token is the lease
the same call took (0 without one). A caller that passes anything else there is refused, so the
command can never mean something other than "the first events of this new flow".
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import replace

from flowledger.errors import FieldViolation, InvalidArgument
from flowledger_core.domain import Append, Flow, FlowLease, FlowStatus


def check_initial(initial: Append, status: FlowStatus) -> None:
    """The fields an initial append may not choose (the rest is checked as for any append),
    and a new flow's ``status`` that takes no events (an ended flow accepts none)."""
    if status.terminal:
        raise InvalidArgument.field(
            "status", f"a flow created with an initial_append cannot start {status.value}"
        )
    if initial.expected_version != 0:
        raise InvalidArgument.field("initial_append.expected_version", "must be 0 (a new flow)")
    if initial.fencing_token != 0:
        raise InvalidArgument.field(
            "initial_append.fencing_token", "must be 0 (the create call's lease token is used)"
        )


def bind_initial(initial: Append, flow: Flow, lease: FlowLease | None) -> Append:
    """``initial`` as an append to ``flow`` under ``lease``."""
    return replace(
        initial,
        namespace=flow.namespace,
        flow_id=flow.flow_id,
        fencing_token=lease.fencing_token if lease is not None else 0,
    )


@contextlib.contextmanager
def as_initial() -> Iterator[None]:
    """Run an append's own checks on an initial append: the fields they name are renamed into
    the create call's (``events[0].type`` → ``initial_append.events[0].type``)."""
    try:
        yield
    except InvalidArgument as exc:
        if not exc.violations:
            raise
        fields = [
            FieldViolation(f"initial_append.{v.field}", v.description) for v in exc.violations
        ]
        message = "; ".join(f"{v.field}: {v.description}" for v in fields)
        raise InvalidArgument(message, reason=exc.reason, violations=fields) from exc
