"""Definitions kept in the store (``put_definition_version``) and flows started from them.

What the store keeps for a version is the canonical JSON of the *validated* definition, without a
version number (the store assigns it)::

    {"name": "chem", "steps": [{"id": "seed", "type": "chem.seed", "kind": "source",
                                "config": {"text": "Hola"}}, ...]}

Every step's kind is spelled out, so reading a version back needs no registry and gives exactly
the steps a flow runs; ``definition_hash`` is that of the ordered step ids (decision 0003). A flow
started from a stored version records its name, version number and definition_hash in
FlowInitialized.
"""

from __future__ import annotations

from engine_service.definitions.definition import (
    FlowDefinition,
    definition_from_text,
    steps_from_dicts,
)
from engine_service.steps.registry import StepRegistry
from flowledger.canonical import JsonValue, canonical_bytes, parse_json
from flowledger.errors import FailedPrecondition, FlowledgerError, InternalError
from flowledger_core.domain import DefinitionState, NewDefinitionVersion, StoredDefinition


def document_json(definition: FlowDefinition) -> str:
    """The canonical JSON text the store keeps for ``definition`` (no version number)."""
    document = definition.to_dict()
    document.pop("version", None)
    return canonical_bytes(document).decode("utf-8")


def new_version(
    definition: FlowDefinition,
    namespace: str,
    *,
    change_note: str = "",
    created_by: str = "",
    request_id: str | None = None,
) -> NewDefinitionVersion:
    """The ``put_definition_version`` command for a definition already validated (by
    :meth:`FlowDefinition.from_dict` / :func:`parse_definition`, or ``definition.resolve``)."""
    return NewDefinitionVersion(
        namespace=namespace,
        name=definition.name,
        definition_json=document_json(definition),
        definition_hash=definition.definition_hash,
        change_note=change_note,
        created_by=created_by,
        request_id=request_id,
    )


def parse_definition(
    document: JsonValue | str, registry: StepRegistry, content_type: str = ""
) -> FlowDefinition:
    """A declarative document (a parsed dict, or JSON/YAML text) as a validated definition:
    its shape, its rules and every step's ``config`` against its type's JSON Schema.
    InvalidArgument names each offending field path (``steps[1].config.count``)."""
    if isinstance(document, str):
        return definition_from_text(document, registry, content_type)
    return FlowDefinition.from_dict(document, registry)


def definition_of(stored: StoredDefinition) -> FlowDefinition:
    """The runnable definition of a stored version, its version number included. InternalError
    (reason CORRUPT_DEFINITION) when the stored text is not a definition or does not hash to
    the recorded definition_hash: it was validated before it was stored."""
    try:
        document = parse_json(stored.definition_json)
        definition = FlowDefinition(
            stored.name, steps_from_dicts(document["steps"]), stored.version
        )
    except (ValueError, KeyError, TypeError, FlowledgerError) as exc:
        raise _corrupt(stored, str(getattr(exc, "message", exc))) from exc
    if definition.definition_hash != stored.definition_hash:
        raise _corrupt(
            stored,
            f"its steps hash to {definition.definition_hash}, not the recorded "
            f"{stored.definition_hash}",
        )
    return definition


def startable(stored: StoredDefinition) -> FlowDefinition:
    """The definition of a version flows may start from: PUBLISHED only (a draft is not
    released yet, an archived version is withdrawn); FailedPrecondition otherwise."""
    if stored.state is not DefinitionState.PUBLISHED:
        reason = (
            "DEFINITION_ARCHIVED"
            if stored.state is DefinitionState.ARCHIVED
            else "DEFINITION_NOT_PUBLISHED"
        )
        raise FailedPrecondition(
            f"definition {stored.name!r} version {stored.version} is {stored.state.value}: only "
            "a published version can be started",
            reason=reason,
            metadata={
                "name": stored.name,
                "version": str(stored.version),
                "state": stored.state.value,
            },
        )
    return definition_of(stored)


def _corrupt(stored: StoredDefinition, detail: str) -> InternalError:
    return InternalError(
        f"stored definition {stored.name!r} version {stored.version} is unusable: {detail}",
        reason="CORRUPT_DEFINITION",
        metadata={"name": stored.name, "version": str(stored.version)},
    )
