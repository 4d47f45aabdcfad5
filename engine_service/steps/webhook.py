"""The ``field_update`` step type: tell a record store to set fields of one record (seed Flows v2's
"tabular" field-update webhook).

Config (``url``, ``record_id``, ``headers`` and ``fields`` values may hold placeholders)::

    url: https://tables.example.com/hooks/field-update     (required)
    record_id: "{{ input.row_id }}"                         (required)
    fields: {status: shipped, total: "{{ results.price[0].total }}"}   (required)
    method: PATCH | POST | PUT                              (PATCH)
    headers: {name: value}
    secret: <literal>  or  secret_env: WEBHOOK_SECRET       # sign the body (not both)
    timeout_seconds: 30
    retries: 0
    retry_backoff_ms: 100
    expect_status: [200, 204]                               # default: any 2xx

It sends the canonical JSON (RFC 8785) of ``{"record_id", "fields", "flow_id", "step_id"}``;
with a secret, ``X-Flowledger-Signature: sha256=<hex HMAC-SHA256 of exactly those bytes>``.
``secret`` is stored in the definition (and so in the log); ``secret_env`` names a variable of
the engine's environment, read when the step runs, and keeps the secret out of both. Same
``Idempotency-Key`` rule as ``http``. Output: ``{"status", "record_id", "fields"}``. A sink that
may also stand in the middle of a flow.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping
from typing import Any

from engine_service.steps import transport
from engine_service.steps.context import (
    StepContext,
    StepFailure,
    StepKind,
    StepResult,
    failure,
    success,
)
from engine_service.steps.egress import DEFAULT_POLICY, EgressPolicy
from engine_service.steps.registry import StepType
from engine_service.steps.templating import ERROR_TYPE as TEMPLATE_ERROR
from engine_service.steps.templating import (
    TemplateError,
    check_fields,
    render,
    render_string,
    render_text,
    template_data,
)
from flowledger.canonical import JsonValue, canonical_bytes
from flowledger.errors import FieldViolation

NAME = "field_update"
METHODS = ("PATCH", "POST", "PUT")
SIGNATURE_HEADER = "X-Flowledger-Signature"
MISSING_SECRET_ERROR = "MissingSecret"

CONFIG_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["url", "record_id", "fields"],
    "properties": {
        "url": transport.URL_SCHEMA,
        "record_id": {"type": "string", "minLength": 1, "maxLength": 1024},
        "fields": {
            "type": "object",
            "minProperties": 1,
            "maxProperties": 1000,
            "propertyNames": {"minLength": 1, "maxLength": 256},
        },
        "method": {"enum": list(METHODS)},
        "headers": transport.HEADERS_SCHEMA,
        "secret": {"type": "string", "minLength": 1, "maxLength": 1024},
        "secret_env": {"type": "string", "pattern": r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"},
        "timeout_seconds": transport.TIMEOUT_SCHEMA,
        "retries": transport.RETRIES_SCHEMA,
        "retry_backoff_ms": transport.BACKOFF_SCHEMA,
        "expect_status": transport.EXPECT_STATUS_SCHEMA,
    },
}
_TEMPLATED = ("url", "record_id", "fields", "headers")


def check_config(
    config: Mapping[str, JsonValue], path: str, policy: EgressPolicy = DEFAULT_POLICY
) -> list[FieldViolation]:
    found = check_fields(config, path, _TEMPLATED) + transport.header_problems(config, path)
    found += transport.url_problems(config, path, policy)
    if "secret" in config and "secret_env" in config:
        found.append(FieldViolation(f"{path}.secret_env", "give secret or secret_env, not both"))
    return found


def sign(secret: str, body: bytes) -> str:
    """The signature header's value for ``body``."""
    digest = hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


async def field_update(
    ctx: StepContext, pool: transport.ClientPool = transport.POOL
) -> StepResult:
    """Send the record's new field values to the configured webhook."""
    config = ctx.params
    data = template_data(ctx)
    try:
        url = render_text(str(config["url"]), data)
        record_id = render_string(str(config["record_id"]), data)
        fields = render(config["fields"], data)
        headers = {
            name: render_text(str(value), data) for name, value in _object(config.get("headers"))
        }
    except TemplateError as exc:
        return failure(str(exc), TEMPLATE_ERROR)
    if not isinstance(record_id, str | int) or isinstance(record_id, bool):
        return failure(
            f"record_id {config['record_id']!r} gave {record_id!r}: not a string or an integer",
            TEMPLATE_ERROR,
        )
    if not transport.is_http_url(url):
        return failure(f"url {url!r} is not an absolute http(s) URL", transport.REQUEST_ERROR)
    body = canonical_bytes(
        {"record_id": record_id, "fields": fields, "flow_id": ctx.flow_id, "step_id": ctx.step_id}
    )
    secret = _secret(config)
    if isinstance(secret, StepFailure):
        return secret
    headers = transport.with_defaults(headers, {"Content-Type": "application/json"})
    if secret is not None:
        # Ours, whatever the config's headers say: the receiver trusts this one.
        headers = {k: v for k, v in headers.items() if k.lower() != SIGNATURE_HEADER.lower()}
        headers[SIGNATURE_HEADER] = sign(secret, body)
    request = transport.Request(
        method=str(config.get("method", "PATCH")),
        url=url,
        headers=headers,
        content=body,
        **transport.request_options(config),
    )
    reply = await transport.send(request, ctx.idempotency_key, pool)
    if isinstance(reply, StepFailure):
        return reply
    return success({"status": reply.status, "record_id": record_id, "fields": fields})


def _secret(config: Mapping[str, JsonValue]) -> str | StepFailure | None:
    secret = config.get("secret")
    if isinstance(secret, str):
        return secret
    name = config.get("secret_env")
    if not isinstance(name, str):
        return None
    value = os.environ.get(name)
    if not value:
        return failure(
            f"secret_env {name!r} is not set in the engine's environment", MISSING_SECRET_ERROR
        )
    return value


def _object(value: JsonValue) -> list[tuple[str, JsonValue]]:
    return list(value.items()) if isinstance(value, dict) else []


def step_type(pool: transport.ClientPool = transport.POOL) -> StepType:
    """The ``field_update`` type whose calls go through ``pool`` (and its egress policy)."""

    async def call(ctx: StepContext) -> StepResult:
        return await field_update(ctx, pool)

    def check(config: Mapping[str, JsonValue], path: str) -> list[FieldViolation]:
        return check_config(config, path, pool.policy)

    call.__doc__ = field_update.__doc__
    return StepType(
        NAME,
        StepKind.SINK,
        call,
        CONFIG_SCHEMA,
        "Set fields of a record through a (signed) field-update webhook",
        also_kinds=frozenset({StepKind.TRANSFORM}),
        config_check=check,
        cleanup=pool.aclose,
    )


STEP_TYPE = step_type()  # the default policy: public addresses only
