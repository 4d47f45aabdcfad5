"""The ``http`` step type: one HTTP call, its answer stored as the step's output artifact.

Config (strings may hold ``{{ placeholders }}``, see :mod:`.templating`)::

    method: GET | POST | PUT | PATCH | DELETE | HEAD | OPTIONS     (GET)
    url: https://api.example.com/orders/{{ input.order_id }}       (required)
    query: {name: value}              # URL-encoded for you
    headers: {name: value}
    body: <any JSON>                  # a string is sent as text, anything else as JSON
    timeout_seconds: 30               # the whole exchange, per request
    retries: 0                        # inner retries within the attempt (connection, 5xx, 429)
    retry_backoff_ms: 100             # doubles per retry, at most 5 s
    expect_status: [200, 201]         # default: any 2xx
    response: auto | json | text      # auto: JSON when the content type says so
    response_headers: [content-type]  # kept in the output, lower-cased
    max_response_bytes: 1048576
    follow_redirects: false

Output: ``{"status": 200, "headers": {"content-type": "..."}, "body": <JSON or text>}``. Being an
artifact, a recorded answer is never fetched again by replay or recovery. Failures: an
unexpected status ``HttpStatusError``, no connection ``HttpConnectionError``, ``Timeout``,
``TemplateError``, ``InvalidRequest``, ``InvalidResponse`` (not JSON), ``ResponseTooLarge``,
``EgressDenied`` (the address is refused by the egress policy, :mod:`engine_service.steps.egress`;
never retried).
A transform that may also stand first (as the Source) or last.
"""

from __future__ import annotations

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
    as_text,
    check_fields,
    render,
    render_text,
    template_data,
)
from flowledger.canonical import JsonValue, canonical_bytes, parse_json
from flowledger.errors import FieldViolation

NAME = "http"
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")
RESPONSE_MODES = ("auto", "json", "text")
INVALID_RESPONSE_ERROR = "InvalidResponse"

CONFIG_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["url"],
    "properties": {
        "method": {"enum": list(METHODS)},
        "url": transport.URL_SCHEMA,
        "query": {
            "type": "object",
            "maxProperties": 100,
            "additionalProperties": {"type": ["string", "number", "boolean"]},
        },
        "headers": transport.HEADERS_SCHEMA,
        "body": {},
        "timeout_seconds": transport.TIMEOUT_SCHEMA,
        "retries": transport.RETRIES_SCHEMA,
        "retry_backoff_ms": transport.BACKOFF_SCHEMA,
        "expect_status": transport.EXPECT_STATUS_SCHEMA,
        "response": {"enum": list(RESPONSE_MODES)},
        "response_headers": {
            "type": "array",
            "maxItems": 32,
            "uniqueItems": True,
            "items": {"type": "string", "pattern": r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}$"},
        },
        "max_response_bytes": {
            "type": "integer",
            "minimum": 1,
            "maximum": transport.MAX_RESPONSE_BYTES,
        },
        "follow_redirects": {"type": "boolean"},
    },
}
_TEMPLATED = ("url", "query", "headers", "body")


def check_config(
    config: Mapping[str, JsonValue], path: str, policy: EgressPolicy = DEFAULT_POLICY
) -> list[FieldViolation]:
    """Placeholders that are not JMESPath, reserved headers, a literal URL that is not one or
    that names an address the egress policy refuses."""
    found = check_fields(config, path, _TEMPLATED) + transport.header_problems(config, path)
    found += transport.url_problems(config, path, policy)
    return found


async def http_call(ctx: StepContext, pool: transport.ClientPool = transport.POOL) -> StepResult:
    """Make the configured HTTP call; its answer is the output."""
    config = ctx.params
    try:
        request = build_request(config, template_data(ctx))
    except TemplateError as exc:
        return failure(str(exc), TEMPLATE_ERROR)
    if isinstance(request, StepFailure):
        return request
    reply = await transport.send(request, ctx.idempotency_key, pool)
    if isinstance(reply, StepFailure):
        return reply
    try:
        body = parse_body(reply, str(config.get("response", "auto")), request.method)
    except ValueError as exc:
        return failure(f"{request.method} {request.url}: {exc}", INVALID_RESPONSE_ERROR)
    kept = config.get("response_headers", ["content-type"])
    assert isinstance(kept, list)  # the schema says so
    headers: dict[str, JsonValue] = {
        str(name).lower(): reply.headers[str(name)] for name in kept if str(name) in reply.headers
    }
    return success({"status": reply.status, "headers": headers, "body": body})


def build_request(
    config: Mapping[str, JsonValue], data: JsonValue
) -> transport.Request | StepFailure:
    """The request the config describes, its placeholders rendered (TemplateError)."""
    method = str(config.get("method", "GET"))
    url = render_text(str(config["url"]), data)
    if not transport.is_http_url(url):
        return failure(f"url {url!r} is not an absolute http(s) URL", transport.REQUEST_ERROR)
    headers = {name: render_text(str(value), data) for name, value in _object(config, "headers")}
    query = {
        name: render_text(value, data) if isinstance(value, str) else as_text(value)
        for name, value in _object(config, "query")
    }
    content: bytes | None = None
    if "body" in config:
        body = render(config["body"], data)
        if isinstance(body, str):
            content = body.encode("utf-8")
            text_type = {"Content-Type": "text/plain; charset=utf-8"}
            headers = transport.with_defaults(headers, text_type)
        else:
            content = canonical_bytes(body)
            headers = transport.with_defaults(headers, {"Content-Type": "application/json"})
    return transport.Request(
        method=method,
        url=url,
        headers=headers,
        content=content,
        query=query,
        **transport.request_options(config),
        max_response_bytes=int(
            transport.number(config, "max_response_bytes", transport.DEFAULT_RESPONSE_BYTES)
        ),
        follow_redirects=bool(config.get("follow_redirects", False)),
    )


def parse_body(reply: transport.Reply, mode: str, method: str) -> JsonValue:
    """The body as the output carries it. ValueError when JSON was wanted and is not there."""
    if mode == "text":
        return reply.text()
    if method == "HEAD" or not reply.body:
        return None
    if mode == "auto" and not _is_json(reply.headers.get("content-type", "")):
        return reply.text()
    try:
        return parse_json(reply.text())
    except ValueError as exc:
        raise ValueError(f"the response is not JSON: {exc}") from exc


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


def _object(config: Mapping[str, JsonValue], key: str) -> list[tuple[str, JsonValue]]:
    value = config.get(key)
    return list(value.items()) if isinstance(value, dict) else []


def step_type(pool: transport.ClientPool = transport.POOL) -> StepType:
    """The ``http`` type whose calls go through ``pool`` (and its egress policy)."""

    async def call(ctx: StepContext) -> StepResult:
        return await http_call(ctx, pool)

    def check(config: Mapping[str, JsonValue], path: str) -> list[FieldViolation]:
        return check_config(config, path, pool.policy)

    call.__doc__ = http_call.__doc__
    return StepType(
        NAME,
        StepKind.TRANSFORM,
        call,
        CONFIG_SCHEMA,
        "Call an HTTP endpoint; the answer (status, content type, body) is the output",
        also_kinds=frozenset({StepKind.SOURCE, StepKind.SINK}),
        config_check=check,
        cleanup=pool.aclose,
    )


STEP_TYPE = step_type()  # the default policy: public addresses only
