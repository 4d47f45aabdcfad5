"""Versioned definitions as the engine API serves them: parse, validate, store, transition.

A document (JSON or YAML) is parsed and every step's config validated against its step type's
JSON Schema *before* anything reaches the store; violations name the request field as sent
(``document.steps[1].config.count``). What is stored is the canonical JSON of the validated
definition (:mod:`engine_service.definitions.stored`), so reading a version back needs no registry
and always gives the steps a flow ran.

Lifecycle (the store enforces it atomically, these are the allowed source states):
publish DRAFT→PUBLISHED, archive DRAFT|PUBLISHED→ARCHIVED, rollback PUBLISHED|ARCHIVED→PUBLISHED
(again, which makes it the latest published version).

What StartFlow resolves is cached briefly (:mod:`engine_service.definitions.cache`, which says
why that is safe); a transition made here forgets it at once.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import yaml

from engine_service.definitions.cache import DEFAULT_TTL_S, DefinitionCache
from engine_service.definitions.definition import FlowDefinition, StepSpec
from engine_service.definitions.stored import definition_of, new_version
from engine_service.steps.registry import StepRegistry
from flowledger.canonical import JsonValue
from flowledger.errors import FieldViolation, InvalidArgument
from flowledger_core.documents import DocumentError, load_document
from flowledger_core.domain import (
    DefinitionPage,
    DefinitionState,
    DefinitionTransitionCommand,
    Page,
    StoredDefinition,
)
from flowledger_core.ports import EventStore


class DocumentFormat(enum.Enum):
    JSON = "json"
    YAML = "yaml"


@dataclass(frozen=True)
class DefinitionChange:
    """Who changes a version's state, and why."""

    namespace: str
    name: str
    version: int
    change_note: str = ""
    actor: str = ""


_PUBLISH_FROM = (DefinitionState.DRAFT,)
_ARCHIVE_FROM = (DefinitionState.DRAFT, DefinitionState.PUBLISHED)
_ROLLBACK_FROM = (DefinitionState.PUBLISHED, DefinitionState.ARCHIVED)


class Definitions:
    """Definition operations over the storage port, validated with the engine's registry."""

    def __init__(
        self, store: EventStore, registry: StepRegistry, *, cache_ttl: float = DEFAULT_TTL_S
    ) -> None:
        self._store = store
        self._registry = registry
        self._cache = DefinitionCache(cache_ttl)

    async def create(
        self,
        namespace: str,
        name: str,
        document: str,
        fmt: DocumentFormat,
        *,
        change_note: str = "",
        created_by: str = "",
        request_id: str | None = None,
    ) -> tuple[StoredDefinition, bool]:
        """Store a new DRAFT version; (version, existed)."""
        definition = parse_document(document, fmt, name, self._registry)
        return await self._store.put_definition_version(
            new_version(
                definition, namespace, change_note=change_note, created_by=created_by,
                request_id=request_id,
            )
        )

    async def publish(self, change: DefinitionChange) -> StoredDefinition:
        return await self._transition(change, DefinitionState.PUBLISHED, _PUBLISH_FROM)

    async def archive(self, change: DefinitionChange) -> StoredDefinition:
        return await self._transition(change, DefinitionState.ARCHIVED, _ARCHIVE_FROM)

    async def rollback(self, change: DefinitionChange) -> StoredDefinition:
        return await self._transition(change, DefinitionState.PUBLISHED, _ROLLBACK_FROM)

    async def get(self, namespace: str, name: str, version: int = 0) -> StoredDefinition:
        return await self._store.get_definition_version(namespace, name, version)

    async def list(self, namespace: str, name: str | None, page: Page) -> DefinitionPage:
        return await self._store.list_definition_versions(namespace, name, page)

    async def startable(
        self, namespace: str, name: str, version: int = 0
    ) -> tuple[StoredDefinition, FlowDefinition]:
        """The version a flow may start from (0 = latest published) and its definition.
        NotFound when unknown; FailedPrecondition unless PUBLISHED."""
        return await self._cache.startable(
            namespace, name, version, lambda: self.get(namespace, name, version)
        )

    async def _transition(
        self,
        change: DefinitionChange,
        to_state: DefinitionState,
        from_states: tuple[DefinitionState, ...],
    ) -> StoredDefinition:
        # Forgotten before and after: a start racing with the transition re-reads the store.
        self._cache.forget(change.namespace, change.name)
        try:
            return await self._store.transition_definition_version(
                DefinitionTransitionCommand(
                    namespace=change.namespace,
                    name=change.name,
                    version=change.version,
                    to_state=to_state,
                    from_states=from_states,
                    change_note=change.change_note,
                    actor=change.actor,
                )
            )
        finally:
            self._cache.forget(change.namespace, change.name)


# -- documents -----------------------------------------------------------------------------------


def parse_document(
    text: str, fmt: DocumentFormat, name: str, registry: StepRegistry
) -> FlowDefinition:
    """The validated definition of a document; InvalidArgument with ``document.…`` paths.

    The document's ``name`` may be left out (the request's name is used) but must not differ;
    its ``version`` may not be given (the store numbers versions).
    """
    document = _load(text, fmt)
    found: list[FieldViolation] = []
    if not isinstance(document, dict):
        raise InvalidArgument.field("document", "must be a mapping with a 'steps' list")
    if "name" in document and document["name"] != name:
        found.append(FieldViolation("document.name", f"must be the request's name {name!r} "
                                    "(or be left out)"))
    if "version" in document:
        found.append(FieldViolation("document.version", "is assigned by the store; remove it"))
    if found:
        raise InvalidArgument(f"invalid definition document: {found[0].field}: "
                              f"{found[0].description}", violations=found)
    try:
        return FlowDefinition.from_dict({**document, "name": name}, registry)
    except InvalidArgument as exc:
        raise _under_document(exc) from exc


def _load(text: str, fmt: DocumentFormat) -> JsonValue:
    """The document's value, within the bounds of :mod:`flowledger_core.documents` (depth, YAML
    alias expansion)."""
    try:
        return load_document(text, "yaml" if fmt is DocumentFormat.YAML else "json")
    except DocumentError as exc:
        raise InvalidArgument.field("document", str(exc)) from None
    except yaml.YAMLError as exc:
        raise InvalidArgument.field("document", f"is not valid YAML: {exc}") from exc
    except ValueError as exc:
        raise InvalidArgument.field("document", f"is not valid JSON: {exc}") from exc


def _under_document(exc: InvalidArgument) -> InvalidArgument:
    """The same violations, with paths relative to the request (``document.steps[0].id``)."""
    violations = [FieldViolation(_document_path(v.field), v.description) for v in exc.violations]
    if not violations:
        return InvalidArgument(f"invalid definition document: {exc.message}",
                               violations=[FieldViolation("document", exc.message)])
    first = violations[0]
    more = f" (and {len(violations) - 1} more)" if len(violations) > 1 else ""
    return InvalidArgument(
        f"invalid definition document: {first.field}: {first.description}{more}",
        violations=violations,
    )


def _document_path(field: str) -> str:
    if field in ("", "(root)", "definition", "document"):
        return "document"
    return f"document{field}" if field.startswith("[") else f"document.{field}"


def stored_steps(stored: StoredDefinition) -> tuple[StepSpec, ...]:
    """The steps of a stored version (InternalError CORRUPT_DEFINITION when unreadable)."""
    return definition_of(stored).steps
