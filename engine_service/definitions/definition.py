"""Flow definitions: an ordered list of steps, each naming a registered step type and its params.

Built in Python (see :mod:`engine_service.definitions.builder`) or from a declarative JSON/YAML
document::

    name: chem
    steps:
      - {id: seed, type: chem.seed, config: {text: Hola}}
      - {id: split, type: chem.split}
      - {id: print_and_count, type: chem.print_and_count}

In documents a step's params are called ``config`` (and validated against its type's JSON
Schema); in Python they are ``params``. Both are the same canonical JSON object, which is what
the step fingerprint hashes.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import yaml

from engine_service.definitions.conditions import problem as when_problem
from engine_service.definitions.schema import DOCUMENT_SCHEMA, MAX_NAME_LENGTH, STEP_ID_PATTERN
from engine_service.fingerprint import definition_hash
from engine_service.steps.builtin import BUILTIN_TYPES
from engine_service.steps.context import StepKind
from engine_service.steps.registry import StepRegistry, StepType
from engine_service.steps.retry import RetryPolicy
from engine_service.validation import compile_schema, raise_if_any, violations
from flowledger.canonical import JsonValue, canonical_bytes, parse_json
from flowledger.errors import FieldViolation, InvalidArgument
from flowledger_core.documents import DocumentError, DocumentFormat, load_document

_STEP_ID = re.compile(STEP_ID_PATTERN)

_DOCUMENT_VALIDATOR = compile_schema(DOCUMENT_SCHEMA, field="definition")


@dataclass(frozen=True)
class Compensation:
    """The step type (and its params) that undoes a finished step (saga, decision 0014)."""

    type: str
    params: Mapping[str, JsonValue] = field(default_factory=dict)

    def to_dict(self) -> dict[str, JsonValue]:
        return {"type": self.type, "config": dict(self.params)}


@dataclass(frozen=True)
class StepSpec:
    """One step of a definition. ``params`` is normalized to its canonical JSON value.
    ``retry``/``timeout_ms`` (per attempt)/``continue_on_error``: decision 0010."""

    id: str
    type: str
    kind: StepKind
    params: Mapping[str, JsonValue] = field(default_factory=dict)
    retry: RetryPolicy | None = None
    timeout_ms: int | None = None
    # The whole step: every attempt and the backoffs between them (StepTimeout past it).
    step_timeout_ms: int | None = None
    continue_on_error: bool = False
    when: str | None = None  # a JMESPath condition; false skips the step
    # Saga: what undoes this step once it finished, when the flow fails or is cancelled.
    compensate: Compensation | None = None
    # A commit step's side effect happens at most once: an attempt interrupted by a crash is
    # not run again but fails (CommitInterrupted), and the step is never retried.
    commit: bool = False

    def to_dict(self) -> dict[str, JsonValue]:
        """The document form; the failure-handling keys only when set, so that the
        FlowInitialized payload of a flow that uses none of them is what it always was."""
        row: dict[str, JsonValue] = {
            "id": self.id,
            "type": self.type,
            "kind": self.kind.value,
            "config": dict(self.params),
        }
        if self.retry is not None:
            row["retry"] = self.retry.to_dict()
        if self.timeout_ms is not None:
            row["timeout_ms"] = self.timeout_ms
        if self.step_timeout_ms is not None:
            row["step_timeout_ms"] = self.step_timeout_ms
        if self.continue_on_error:
            row["continue_on_error"] = True
        if self.when is not None:
            row["when"] = self.when
        if self.compensate is not None:
            row["compensate"] = self.compensate.to_dict()
        if self.commit:
            row["commit"] = True
        return row

    @classmethod
    def from_dict(cls, row: Mapping[str, Any], kind: StepKind | None = None) -> StepSpec:
        retry = row.get("retry")
        compensate = row.get("compensate")
        return cls(
            id=row["id"],
            type=row["type"],
            kind=kind if kind is not None else StepKind(row["kind"]),
            params=row.get("config", {}),
            retry=None if retry is None else RetryPolicy.from_dict(retry),
            timeout_ms=row.get("timeout_ms"),
            step_timeout_ms=row.get("step_timeout_ms"),
            continue_on_error=bool(row.get("continue_on_error", False)),
            when=row.get("when"),
            compensate=None
            if compensate is None
            else Compensation(compensate["type"], compensate.get("config", {})),
            commit=bool(row.get("commit", False)),
        )


@dataclass(frozen=True)
class FlowDefinition:
    """An ordered, validated list of steps.

    ``bindings`` holds step types that travel with the definition (functions handed to the
    builder directly); they are not part of its identity and are looked up before the engine's
    registry.
    """

    name: str
    steps: tuple[StepSpec, ...]
    version: int = 0
    bindings: Mapping[str, StepType] = field(default_factory=dict, compare=False, repr=False)
    # Per-definition defaults, copied into every step that sets none (so the steps, and
    # FlowInitialized, carry what applies); not part of the identity beyond that.
    default_retry: RetryPolicy | None = field(default=None, compare=False)
    default_timeout_ms: int | None = field(default=None, compare=False)
    # resolve()'s successes: id(registry) -> (the registry, its revision then, the types).
    _resolved: dict[
        int, tuple[weakref.ref[StepRegistry], int, tuple[StepType, ...]]
    ] = field(default_factory=dict, init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "steps", tuple(self.steps))
        found: list[FieldViolation] = []
        if not self.name or len(self.name) > MAX_NAME_LENGTH:
            found.append(FieldViolation("name", f"must have 1..{MAX_NAME_LENGTH} characters"))
        if self.version < 0:
            found.append(FieldViolation("version", "must be >= 0"))
        if not self.steps:
            found.append(FieldViolation("steps", "a flow needs at least one step (a Source)"))
        seen: set[str] = set()
        normalized: list[StepSpec] = []
        for index, spec in enumerate(self.steps):
            found.extend(_step_rule_violations(index, spec, seen))
            seen.add(spec.id)
            params, problem = canonical_params(spec.params)
            if problem:
                found.append(FieldViolation(f"steps[{index}].config", problem))
            retry = spec.retry if spec.retry is not None else self.default_retry
            timeout_ms = spec.timeout_ms if spec.timeout_ms is not None else self.default_timeout_ms
            found.extend(_policy_violations(f"steps[{index}]", retry, timeout_ms))
            step_timeout = spec.step_timeout_ms
            if step_timeout is not None and (
                isinstance(step_timeout, bool) or not isinstance(step_timeout, int)
                or step_timeout < 1
            ):
                found.append(FieldViolation(f"steps[{index}].step_timeout_ms", "must be >= 1"))
            if spec.when is not None and (why := when_problem(spec.when)):
                found.append(FieldViolation(f"steps[{index}].when", why))
            compensate = spec.compensate
            if compensate is not None:
                comp_params, problem = canonical_params(compensate.params)
                if problem:
                    found.append(FieldViolation(f"steps[{index}].compensate.config", problem))
                compensate = replace(compensate, params=comp_params)
            if spec.commit and spec.retry is not None and spec.retry.max_attempts > 1:
                found.append(
                    FieldViolation(f"steps[{index}].retry", "a commit step is never retried")
                )
            normalized.append(
                replace(
                    spec, params=params, retry=retry, timeout_ms=timeout_ms, compensate=compensate
                )
            )
        raise_if_any(found, "flow definition")
        object.__setattr__(self, "steps", tuple(normalized))

    @property
    def step_ids(self) -> tuple[str, ...]:
        return tuple(spec.id for spec in self.steps)

    @property
    def definition_hash(self) -> str:
        return definition_hash(self.step_ids)

    def index_of(self, step_id: str) -> int:
        for index, spec in enumerate(self.steps):
            if spec.id == step_id:
                return index
        raise InvalidArgument.field("step_id", f"no step {step_id!r} in flow {self.name!r}")

    def to_dict(self) -> dict[str, JsonValue]:
        """The canonical document form (``from_dict`` of it gives an equal definition)."""
        return {
            "name": self.name,
            "version": self.version,
            "steps": [s.to_dict() for s in self.steps],
        }

    def resolve(self, registry: StepRegistry) -> tuple[StepType, ...]:
        """The step type of every step, checking that each exists, has the declared kind and
        accepts its config. InvalidArgument names every offending field.

        A success is remembered per registry and its revision (a StartFlow resolves the same
        definition twice, and validating configs against JSON Schemas is not free)."""
        memo = self._resolved.get(id(registry))
        if memo is not None and memo[0]() is registry and memo[1] == registry.revision:
            return memo[2]
        revision = registry.revision
        resolved = self._resolve(registry)
        self._resolved[id(registry)] = (weakref.ref(registry), revision, resolved)
        return resolved

    def _resolve(self, registry: StepRegistry) -> tuple[StepType, ...]:
        found: list[FieldViolation] = []
        resolved: list[StepType] = []
        for index, spec in enumerate(self.steps):
            step_type = self._find(spec.type, registry)
            if step_type is None:
                found.append(_unknown_type(index, spec.type, registry))
                continue
            if spec.compensate is not None:
                found.extend(self._compensation_violations(index, spec.compensate, registry))
            if not step_type.allows(spec.kind) and spec.type not in BUILTIN_TYPES:
                found.append(
                    FieldViolation(
                        f"steps[{index}].kind",
                        f"step type {spec.type!r} is a {step_type.kind.value}, "
                        f"not a {spec.kind.value}",
                    )
                )
            found.extend(step_type.config_violations(dict(spec.params), f"steps[{index}].config"))
            resolved.append(step_type)
        raise_if_any(found, f"flow definition {self.name!r}")
        return tuple(resolved)

    def compensation_types(self, registry: StepRegistry) -> dict[int, StepType]:
        """The step type of each step's compensation, by step index (after :meth:`resolve`)."""
        found: dict[int, StepType] = {}
        for index, spec in enumerate(self.steps):
            if spec.compensate is not None:
                step_type = self._find(spec.compensate.type, registry)
                if step_type is None:
                    raise InvalidArgument.field(
                        f"steps[{index}].compensate.type",
                        f"unknown step type {spec.compensate.type!r}",
                    )
                found[index] = step_type
        return found

    def _find(self, name: str, registry: StepRegistry) -> StepType | None:
        # Built-in names are reserved: nothing may stand in for the engine's own steps.
        return BUILTIN_TYPES.get(name) or self.bindings.get(name) or registry.find(name)

    def _compensation_violations(
        self, index: int, compensate: Compensation, registry: StepRegistry
    ) -> list[FieldViolation]:
        at = f"steps[{index}].compensate"
        step_type = self._find(compensate.type, registry)
        if step_type is None:
            return [FieldViolation(f"{at}.type", f"unknown step type {compensate.type!r}")]
        if compensate.type in BUILTIN_TYPES:
            return [FieldViolation(f"{at}.type", "a compensation must be a step function")]
        return step_type.config_violations(dict(compensate.params), f"{at}.config")

    @classmethod
    def from_dict(cls, document: JsonValue, registry: StepRegistry) -> FlowDefinition:
        """Validate a declarative document (shape, rules, each config against its type's
        schema) and build the definition. Raises InvalidArgument naming each field path."""
        raise_if_any(violations(_DOCUMENT_VALIDATOR, document, ""), "flow definition")
        assert isinstance(document, dict)  # the schema guarantees it
        found: list[FieldViolation] = []
        specs: list[StepSpec] = []
        for index, step in enumerate(document["steps"]):
            step_type = BUILTIN_TYPES.get(step["type"]) or registry.find(step["type"])
            if step_type is None:
                found.append(_unknown_type(index, step["type"], registry))
                continue
            kind = StepKind(step["kind"]) if "kind" in step else step_type.default_kind(index == 0)
            if "kind" not in step and step["type"] in BUILTIN_TYPES and index == 0:
                kind = StepKind.SOURCE  # a flow may begin by waiting
            specs.append(StepSpec.from_dict(step, kind))
        raise_if_any(found, "flow definition")
        defaults = document.get("defaults", {})
        retry = defaults.get("retry")
        definition = cls(
            document["name"],
            tuple(specs),
            document.get("version", 0),
            default_retry=None if retry is None else RetryPolicy.from_dict(retry),
            default_timeout_ms=defaults.get("timeout_ms"),
        )
        definition.resolve(registry)
        return definition

    @classmethod
    def from_json(cls, text: str | bytes, registry: StepRegistry) -> FlowDefinition:
        try:
            decoded = text if isinstance(text, str) else text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidArgument.field("definition", f"not valid JSON: {exc}") from exc
        return cls.from_dict(_document(decoded, "json"), registry)

    @classmethod
    def from_yaml(cls, text: str, registry: StepRegistry) -> FlowDefinition:
        return cls.from_dict(_document(text, "yaml"), registry)


def _document(text: str, fmt: DocumentFormat) -> Any:
    """A definition document's value, within the bounds of :mod:`flowledger_core.documents`."""
    try:
        return load_document(text, fmt)
    except DocumentError as exc:
        raise InvalidArgument.field("definition", str(exc)) from None
    except yaml.YAMLError as exc:
        raise InvalidArgument.field("definition", f"not valid YAML: {exc}") from exc
    except ValueError as exc:
        raise InvalidArgument.field("definition", f"not valid JSON: {exc}") from exc


def _step_rule_violations(index: int, spec: StepSpec, seen: set[str]) -> list[FieldViolation]:
    at = f"steps[{index}]"
    found: list[FieldViolation] = []
    if not _STEP_ID.match(spec.id):
        found.append(FieldViolation(f"{at}.id", "must be 1..64 characters of [a-z0-9_-]"))
    elif spec.id in seen:
        found.append(FieldViolation(f"{at}.id", f"duplicate step id {spec.id!r}"))
    if index == 0 and spec.kind is not StepKind.SOURCE:
        found.append(FieldViolation(f"{at}.kind", "the first step must be a source"))
    if index > 0 and spec.kind is StepKind.SOURCE:
        found.append(FieldViolation(f"{at}.kind", "only the first step may be a source"))
    return found


def _policy_violations(
    at: str, retry: RetryPolicy | None, timeout_ms: int | None
) -> list[FieldViolation]:
    found = [] if retry is None else retry.violations(f"{at}.retry")
    if timeout_ms is not None and not (
        isinstance(timeout_ms, int) and not isinstance(timeout_ms, bool) and timeout_ms >= 1
    ):
        found.append(FieldViolation(f"{at}.timeout_ms", "must be an integer >= 1"))
    return found


def canonical_params(params: object) -> tuple[dict[str, JsonValue], str]:
    """Params as the JSON value their canonical form parses to (a deep copy, so later changes
    by the caller cannot alter a definition), or a problem description."""
    if not isinstance(params, Mapping):
        return {}, "must be a JSON object"
    try:
        value = parse_json(canonical_bytes(dict(params)).decode("utf-8"))
    except Exception as exc:  # rfc8785 raises several types for values JSON cannot carry
        return {}, f"not representable as canonical JSON: {exc}"
    assert isinstance(value, dict)
    return value, ""


def _unknown_type(index: int, name: str, registry: StepRegistry) -> FieldViolation:
    known = ", ".join(sorted({*registry.names(), *BUILTIN_TYPES})) or "none"
    return FieldViolation(f"steps[{index}].type", f"unknown step type {name!r} (known: {known})")


def definition_from_text(
    text: str, registry: StepRegistry, content_type: str = ""
) -> FlowDefinition:
    """JSON when it parses as JSON (or ``content_type`` says so), else YAML."""
    if "json" in content_type:
        return FlowDefinition.from_json(text, registry)
    if "yaml" in content_type:
        return FlowDefinition.from_yaml(text, registry)
    try:
        document = load_document(text, "json")
    except DocumentError as exc:
        raise InvalidArgument.field("definition", str(exc)) from None
    except ValueError:
        return FlowDefinition.from_yaml(text, registry)
    return FlowDefinition.from_dict(document, registry)


def steps_from_dicts(rows: Sequence[Mapping[str, Any]]) -> tuple[StepSpec, ...]:
    """StepSpecs from the ``steps`` rows of :meth:`FlowDefinition.to_dict` (kind included)."""
    return tuple(StepSpec.from_dict(row) for row in rows)
