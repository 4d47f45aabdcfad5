"""Who is calling: roles, the authenticated principal of a call, and how handlers see it.

The authorization interceptor (:mod:`flowledger_core.server.auth_interceptor`) authenticates every
call that is not a health check, checks it against the one table of role x method
(:mod:`flowledger_core.server.auth_policy`) and sets the principal for the rest of the call, where
:func:`current_principal` returns it. With authentication disabled it returns None.
"""

from __future__ import annotations

import contextvars
import enum
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "ALL_NAMESPACES",
    "MAX_SUBJECT_LENGTH",
    "Principal",
    "Role",
    "current_principal",
    "principal",
    "set_principal",
]

ALL_NAMESPACES = "*"
"""The ``namespaces`` value of a principal that may use every namespace."""

MAX_SUBJECT_LENGTH = 256
"""A subject is recorded as ``created_by`` / ``started_by`` / ...: keep it printable and short."""


class Role(enum.StrEnum):
    """What a principal may do; :data:`~flowledger_core.server.auth_policy.PERMISSIONS` says
    where."""

    VIEWER = "viewer"
    """Reads definitions, flows, events and artifacts."""
    MANAGER = "manager"
    """Also creates, publishes, archives and rolls back definitions; starts, signals, cancels
    and branches flows."""
    ADMIN = "admin"
    """Everything, including the worker RPCs and whatever deletes history."""
    WORKER = "worker"
    """External step workers: polls, completes, fails and heartbeats tasks; nothing else."""


@dataclass(frozen=True)
class Principal:
    """An authenticated caller. ``namespaces`` None means every namespace."""

    subject: str
    role: Role
    namespaces: frozenset[str] | None
    source: str
    """How it was authenticated: ``jwt`` or ``token`` (the static token file)."""

    def may_use(self, namespace: str) -> bool:
        return self.namespaces is None or namespace in self.namespaces


def principal(subject: object, role: object, namespaces: object, source: str) -> Principal:
    """A principal from untrusted claim values; raises ValueError naming the bad claim."""
    if not isinstance(subject, str) or not subject:
        raise ValueError("'sub' must be a non-empty string")
    if len(subject) > MAX_SUBJECT_LENGTH or not subject.isprintable():
        raise ValueError(f"'sub' must be at most {MAX_SUBJECT_LENGTH} printable characters")
    try:
        parsed_role = Role(role) if isinstance(role, str) else None
    except ValueError:
        parsed_role = None
    if parsed_role is None:
        raise ValueError(f"'role' must be one of {', '.join(r.value for r in Role)}")
    return Principal(subject, parsed_role, _namespaces(namespaces), source)


def _namespaces(value: object) -> frozenset[str] | None:
    if value == ALL_NAMESPACES:
        return None
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise ValueError("'namespaces' must be a list of namespaces or \"*\"")
    items = list(value)
    if not items or not all(isinstance(n, str) and n for n in items):
        raise ValueError("'namespaces' must be a non-empty list of non-empty strings, or \"*\"")
    if ALL_NAMESPACES in items:
        raise ValueError("'namespaces': write \"*\" alone, not inside a list")
    return frozenset(items)


_CURRENT: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "flowledger_principal", default=None
)


def current_principal() -> Principal | None:
    """The principal of the call being handled; None when authentication is disabled."""
    return _CURRENT.get()


def set_principal(value: Principal | None) -> contextvars.Token[Principal | None]:
    """Set by the interceptor for the call (each call runs in its own task)."""
    return _CURRENT.set(value)
