"""The JSON Schema of a declarative definition document (each step's config is then checked
against its step type's own schema)."""

from __future__ import annotations

from typing import Any

from engine_service.definitions.conditions import MAX_EXPRESSION_LENGTH
from engine_service.steps.context import StepKind
from engine_service.steps.retry import RETRY_SCHEMA, TIMEOUT_SCHEMA

STEP_ID_PATTERN = r"^[a-z0-9_-]{1,64}$"
MAX_NAME_LENGTH = 256  # flows.name

# The shape of a declarative document; per-step configs are checked against their type's schema.
DOCUMENT_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["name", "steps"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": MAX_NAME_LENGTH},
        "version": {"type": "integer", "minimum": 0},
        "steps": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["id", "type"],
                "additionalProperties": False,
                "properties": {
                    "id": {"type": "string", "pattern": STEP_ID_PATTERN},
                    "type": {"type": "string", "minLength": 1, "maxLength": 128},
                    "kind": {"enum": [kind.value for kind in StepKind]},
                    "config": {"type": "object"},
                    "retry": RETRY_SCHEMA,
                    "timeout_ms": TIMEOUT_SCHEMA,
                    "step_timeout_ms": TIMEOUT_SCHEMA,
                    "continue_on_error": {"type": "boolean"},
                    "when": {"type": "string", "minLength": 1, "maxLength": MAX_EXPRESSION_LENGTH},
                    "compensate": {
                        "type": "object",
                        "required": ["type"],
                        "additionalProperties": False,
                        "properties": {
                            "type": {"type": "string", "minLength": 1, "maxLength": 128},
                            "config": {"type": "object"},
                        },
                    },
                    "commit": {"type": "boolean"},
                },
            },
        },
        "defaults": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"retry": RETRY_SCHEMA, "timeout_ms": TIMEOUT_SCHEMA},
        },
    },
}
