"""The one table of who may call what, and the per-request rules that go with it.

:data:`PERMISSIONS` maps every full method name (``/package.Service/Method``) a token may call to
the roles that may call it. A method missing from the table is refused to every role (deny by
default): a new RPC is unusable until someone decides who may call it. Health checks are not in
the table: they are open (:data:`flowledger_core.server.tls.OPEN_METHODS`) and never authenticated.

Per request:

* **Tenant isolation.** A request with a ``namespace`` field outside the principal's namespaces
  is answered NOT_FOUND, as if nothing existed there: whether a namespace, a flow or a definition
  exists is not revealed to a token of another namespace.
* **Recorded actor.** The request's actor fields (``created_by``, ``actor``, ``started_by``,
  ``sent_by``, ``cancelled_by``, ``terminated_by``) are overwritten with the principal's
  subject: with authentication on, what the log records as who did something is who was
  authenticated, not free text from the caller.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from flowledger.errors import InvalidArgument, NotFound, PermissionDenied
from flowledger_core.server.auth import Principal, Role

__all__ = [
    "ACTOR_FIELDS",
    "PERMISSIONS",
    "authorize",
    "check_namespace",
    "roles_table",
    "stamp_actor",
]

_ENGINE = "/flowledger.v1.EngineService/"
_WORKER = "/flowledger.v1.WorkerService/"
_REFLECTION = "/grpc.reflection.v1alpha.ServerReflection/"

_READ = frozenset({Role.VIEWER, Role.MANAGER, Role.ADMIN})
_MANAGE = frozenset({Role.MANAGER, Role.ADMIN})
_WORK = frozenset({Role.WORKER, Role.ADMIN})
_ANY = frozenset(Role)


def _methods(
    prefix: str, roles: frozenset[Role], names: Iterable[str]
) -> dict[str, frozenset[Role]]:
    return {prefix + name: roles for name in names}


PERMISSIONS: Mapping[str, frozenset[Role]] = {
    # Reading: definitions, flows, their events and artifacts, verification.
    **_methods(_ENGINE, _READ, (
        "GetDefinitionVersion", "ListDefinitions", "DescribeFlow", "ListFlowRuns",
        "WatchFlow", "FetchArtifacts", "VerifyFlow",
    )),
    # Changing: definitions' lifecycle and flows' (executions stay immutable history).
    **_methods(_ENGINE, _MANAGE, (
        "CreateDefinitionVersion", "PublishDefinitionVersion", "ArchiveDefinitionVersion",
        "RollbackDefinition", "StartFlow", "SignalFlow", "CancelFlow", "TerminateFlow",
        "BranchFlow",
    )),
    # External step workers (worker.proto).
    **_methods(_WORKER, _WORK, ("PollTask", "CompleteTask", "FailTask", "Heartbeat")),
    # The schema is public (the protos are): any authenticated caller may reflect.
    **_methods(_REFLECTION, _ANY, ("ServerReflectionInfo",)),
}


def authorize(principal: Principal, method: str) -> None:
    """Raise PERMISSION_DENIED unless ``principal``'s role may call ``method``."""
    if principal.role in PERMISSIONS.get(method, ()):
        return
    allowed = sorted(r.value for r in PERMISSIONS.get(method, ()))
    who = f"roles {', '.join(allowed)}" if allowed else "no role"
    raise PermissionDenied(
        f"{principal.subject} (role {principal.role.value}) may not call {method}: "
        f"it is for {who}",
        reason="ROLE_NOT_ALLOWED",
        metadata={"method": method, "role": principal.role.value},
    )


def check_namespace(principal: Principal, request: Any) -> None:
    """NOT_FOUND when the request's ``namespace`` is not one of the principal's."""
    if "namespace" not in request.DESCRIPTOR.fields_by_name:
        return
    namespace: str = request.namespace
    if not namespace:
        raise InvalidArgument.field("namespace", "is required")
    if not principal.may_use(namespace):
        # The same answer whether or not anything exists there: no existence oracle.
        raise NotFound(f"namespace {namespace!r} not found", reason="NAMESPACE_NOT_FOUND")


ACTOR_FIELDS = ("created_by", "actor", "started_by", "sent_by", "cancelled_by", "terminated_by")
"""Request fields that record who did something; set to the authenticated subject."""


def stamp_actor(principal: Principal, request: Any) -> None:
    fields = request.DESCRIPTOR.fields_by_name
    for name in ACTOR_FIELDS:
        if name in fields:
            setattr(request, name, principal.subject)


def roles_table() -> str:
    """The table as Markdown (docs/security.md embeds it; a test checks they agree)."""
    roles = list(Role)
    lines = [
        "| method | " + " | ".join(r.value for r in roles) + " |",
        "|---|" + "---|" * len(roles),
    ]
    for method, allowed in PERMISSIONS.items():
        marks = " | ".join("yes" if r in allowed else "" for r in roles)
        lines.append(f"| `{method}` | {marks} |")
    return "\n".join(lines)
