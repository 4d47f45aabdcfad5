"""What the HTTP runners share: a client pool, one request with inner retries, config schemas.

One ``httpx.AsyncClient`` per event loop (:class:`ClientPool`) serves every HTTP step of the
process, so connections are reused across steps and flows; the step types' ``cleanup`` closes
it and the next request opens a new one. The client keeps no cookies: one flow must never see
another's.

:func:`send` makes one request and, within the same step attempt, retries it on connection
errors and on 5xx/429 answers that are not expected, with a short exponential backoff (at least
what a ``Retry-After`` in seconds asks, up to 30 s). Every request carries ``Idempotency-Key`` =
the attempt's key (flow:step:attempt): the same on each inner retry and when the attempt runs
again after a crash, so the far side can deduplicate. A read or write timeout is not retried
inside the attempt (the far side may be working on it): the step's retry policy decides.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.cookiejar
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpcore
import httpx

from engine_service.steps import egress
from engine_service.steps.context import StepFailure
from engine_service.steps.egress import DEFAULT_POLICY, EgressBackend, EgressDenied, EgressPolicy
from engine_service.steps.retry import TIMEOUT_ERROR_TYPE
from engine_service.steps.templating import has_placeholder
from engine_service.validation import json_path
from flowledger import __version__
from flowledger.canonical import JsonValue
from flowledger.errors import FieldViolation

log = logging.getLogger(__name__)

IDEMPOTENCY_HEADER = "Idempotency-Key"
USER_AGENT = f"flowledger/{__version__}"
STATUS_ERROR = "HttpStatusError"
CONNECTION_ERROR = "HttpConnectionError"
REQUEST_ERROR = "InvalidRequest"
TOO_LARGE_ERROR = "ResponseTooLarge"
MAX_BACKOFF_S = 5.0
MAX_RETRY_AFTER_S = 30.0
# The store keeps artifacts up to 2 MiB by default (STORE_MAX_PAYLOAD_BYTES).
MAX_RESPONSE_BYTES = 2 * 1024 * 1024
DEFAULT_RESPONSE_BYTES = 1024 * 1024
# Set by httpx from the request itself; a config that set them would break the framing.
RESERVED_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection"})

# Config schema fragments of both runners.
URL_SCHEMA: dict[str, Any] = {
    "type": "string",
    "minLength": 1,
    "maxLength": 8192,
    # Literal URLs are http(s); a templated one is checked once rendered.
    "pattern": r"^(https?://|\{\{)",
}
HEADERS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "maxProperties": 64,
    "propertyNames": {"pattern": r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}$"},
    "additionalProperties": {"type": "string", "maxLength": 8192, "pattern": r"^[^\r\n]*$"},
}
TIMEOUT_SCHEMA: dict[str, Any] = {"type": "number", "exclusiveMinimum": 0, "maximum": 3600}
RETRIES_SCHEMA: dict[str, Any] = {"type": "integer", "minimum": 0, "maximum": 10}
BACKOFF_SCHEMA: dict[str, Any] = {"type": "integer", "minimum": 0, "maximum": 60_000}
EXPECT_STATUS_SCHEMA: dict[str, Any] = {
    "type": "array",
    "minItems": 1,
    "maxItems": 100,
    "uniqueItems": True,
    "items": {"type": "integer", "minimum": 100, "maximum": 599},
}
DEFAULT_TIMEOUT_S = 30.0
DEFAULT_BACKOFF_MS = 100


class _NoCookies(http.cookiejar.DefaultCookiePolicy):
    def set_ok(self, cookie: http.cookiejar.Cookie, request: Any) -> bool:
        return False


class EgressTransport(httpx.AsyncHTTPTransport):
    """httpx's transport over :class:`~engine_service.steps.egress.EgressBackend`: every connection
    (each redirect hop's too) goes to an address the policy admitted."""

    def __init__(self, policy: EgressPolicy) -> None:
        super().__init__(trust_env=False)
        self.policy = policy
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=True),
            max_connections=100,  # httpx's default limits
            max_keepalive_connections=20,
            keepalive_expiry=5.0,
            network_backend=EgressBackend(policy),
        )


def new_client(policy: EgressPolicy = DEFAULT_POLICY) -> httpx.AsyncClient:
    # trust_env=False: no HTTP(S)_PROXY either. A proxy resolves the name itself, where the
    # policy cannot check the address.
    return httpx.AsyncClient(
        headers={"User-Agent": USER_AGENT},
        cookies=http.cookiejar.CookieJar(policy=_NoCookies()),
        follow_redirects=False,
        transport=EgressTransport(policy),
        trust_env=False,
    )


@dataclass
class _Lease:
    client: httpx.AsyncClient
    users: int = 0
    retired: bool = False


class ClientPool:
    """One client per event loop (an httpx client belongs to the loop it first ran in).
    :meth:`aclose` retires the current loop's client: closed at once when idle, else when its
    last request ends, while new requests get a new client."""

    def __init__(
        self,
        factory: Callable[[], httpx.AsyncClient] = new_client,
        policy: EgressPolicy = DEFAULT_POLICY,
    ) -> None:
        self._factory = factory
        self.policy = policy  # what check_url judges a literal URL by (the factory's policy)
        self._leases: dict[asyncio.AbstractEventLoop, _Lease] = {}

    @classmethod
    def for_policy(cls, policy: EgressPolicy) -> ClientPool:
        return cls(lambda: new_client(policy), policy)

    @contextlib.asynccontextmanager
    async def client(self) -> AsyncIterator[httpx.AsyncClient]:
        loop = asyncio.get_running_loop()
        lease = self._leases.get(loop)
        if lease is None:
            lease = self._leases[loop] = _Lease(self._factory())
        lease.users += 1
        try:
            yield lease.client
        finally:
            lease.users -= 1
            if lease.retired and lease.users == 0:
                await lease.client.aclose()

    def current(self) -> httpx.AsyncClient | None:
        """The running loop's client, if one is open."""
        lease = self._leases.get(asyncio.get_running_loop())
        return lease.client if lease is not None else None

    async def aclose(self) -> None:
        loop = asyncio.get_running_loop()
        for owner, lease in list(self._leases.items()):
            if owner is loop:
                del self._leases[owner]
                lease.retired = True
                if lease.users == 0:
                    await lease.client.aclose()
            elif owner.is_closed():
                # Its sockets went with the loop; nothing can close the client any more.
                del self._leases[owner]
                log.warning("an HTTP client of an event loop that is gone was never closed")


POOL = ClientPool()


@dataclass(frozen=True)
class Request:
    """One rendered request and how to retry it within the attempt."""

    method: str
    url: str
    headers: Mapping[str, str]
    content: bytes | None = None
    query: Mapping[str, str] = field(default_factory=dict)
    timeout_s: float = DEFAULT_TIMEOUT_S
    retries: int = 0
    backoff_ms: int = DEFAULT_BACKOFF_MS
    expect_status: frozenset[int] | None = None  # None: any 2xx
    max_response_bytes: int = DEFAULT_RESPONSE_BYTES
    follow_redirects: bool = False

    def expected(self, status: int) -> bool:
        if self.expect_status is None:
            return 200 <= status < 300
        return status in self.expect_status


@dataclass(frozen=True)
class Reply:
    status: int
    headers: httpx.Headers
    body: bytes
    charset: str | None
    requests: int  # how many were sent, inner retries included

    def text(self) -> str:
        try:
            return self.body.decode(self.charset or "utf-8", errors="replace")
        except LookupError:  # an unknown charset name
            return self.body.decode("utf-8", errors="replace")


class _TooLarge(Exception):
    pass


class _Retryable(Exception):
    def __init__(self, failure: StepFailure, retry_after_s: float = 0.0) -> None:
        super().__init__(failure.reason)
        self.failure = failure
        self.retry_after_s = retry_after_s


async def send(
    request: Request, idempotency_key: str, pool: ClientPool = POOL
) -> Reply | StepFailure:
    """The reply with an expected status, or the failure to record (after the inner retries)."""
    headers = with_defaults(request.headers, {IDEMPOTENCY_HEADER: idempotency_key})
    what = f"{request.method} {request.url}"
    async with pool.client() as client:
        for sent in range(1, request.retries + 2):
            try:
                reply = await _once(client, request, headers, sent)
            except _Retryable as retryable:
                if sent > request.retries:
                    return retryable.failure
                delay = min(request.backoff_ms / 1000 * 2 ** (sent - 1), MAX_BACKOFF_S)
                delay = max(delay, retryable.retry_after_s)
                log.info("%s: %s; retrying in %.3f s", what, retryable.failure.reason, delay)
                await asyncio.sleep(delay)
                continue
            except TimeoutError:
                return StepFailure(
                    f"{what}: no complete answer within {request.timeout_s:g} s", TIMEOUT_ERROR_TYPE
                )
            except (httpx.UnsupportedProtocol, httpx.LocalProtocolError, httpx.InvalidURL) as exc:
                return StepFailure(f"{what}: {exc}", REQUEST_ERROR)
            except _TooLarge as exc:
                return StepFailure(f"{what}: {exc}", TOO_LARGE_ERROR)
            except EgressDenied as exc:  # never retried: the same address is refused again
                return StepFailure(f"{what}: {exc}", egress.ERROR_TYPE)
            return reply
    raise AssertionError("unreachable: the loop returns")  # pragma: no cover


async def _once(
    client: httpx.AsyncClient, request: Request, headers: Mapping[str, str], sent: int
) -> Reply | StepFailure:
    what = f"{request.method} {request.url}"
    try:
        async with asyncio.timeout(request.timeout_s):  # the whole exchange, not each phase
            async with client.stream(
                request.method,
                request.url,
                content=request.content,
                params=dict(request.query) or None,
                headers=dict(headers),
                timeout=httpx.Timeout(request.timeout_s),
                follow_redirects=request.follow_redirects,
            ) as response:
                body = await _read(response, request.max_response_bytes)
                reply = Reply(
                    response.status_code,
                    response.headers,
                    body,
                    response.charset_encoding,
                    sent,
                )
    except httpx.ConnectTimeout as exc:  # nothing was sent: as safe to retry as a refusal
        raise _Retryable(
            StepFailure(f"{what}: cannot connect: {_describe(exc)}", CONNECTION_ERROR)
        ) from exc
    except httpx.TimeoutException as exc:
        raise TimeoutError(str(exc)) from exc
    except (httpx.NetworkError, httpx.RemoteProtocolError, httpx.ProxyError) as exc:
        raise _Retryable(
            StepFailure(f"{what}: connection failed: {_describe(exc)}", CONNECTION_ERROR)
        ) from exc
    if request.expected(reply.status):
        return reply
    failure = StepFailure(
        f"{what} answered HTTP {reply.status} (after {sent} request{'s' * (sent > 1)})"
        f"{_snippet(reply)}",
        STATUS_ERROR,
    )
    if reply.status >= 500 or reply.status == 429:
        raise _Retryable(failure, _retry_after(reply.headers))
    return failure


async def _read(response: httpx.Response, limit: int) -> bytes:
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > limit:
            raise _TooLarge(f"the response is larger than max_response_bytes ({limit})")
    return bytes(body)


def _describe(exc: Exception) -> str:
    return str(exc) or type(exc).__name__


def _snippet(reply: Reply) -> str:
    text = reply.text().strip()
    if not text:
        return ""
    return ": " + (text[:200] + "…" if len(text) > 200 else text)


def _retry_after(headers: httpx.Headers) -> float:
    value = headers.get("retry-after", "")
    try:
        seconds = float(value)
    except ValueError:
        return 0.0  # absent, or an HTTP date: the backoff applies
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


def with_defaults(headers: Mapping[str, str], defaults: Mapping[str, str]) -> dict[str, str]:
    """``headers`` plus each default whose name (any case) the config did not set."""
    merged = dict(headers)
    present = {name.lower() for name in merged}
    for name, value in defaults.items():
        if name.lower() not in present:
            merged[name] = value
    return merged


def header_problems(config: Mapping[str, JsonValue], path: str) -> list[FieldViolation]:
    headers = config.get("headers")
    if not isinstance(headers, dict):
        return []
    return [
        FieldViolation(json_path(path, ["headers", name]), "is set by the HTTP client itself")
        for name in headers
        if name.lower() in RESERVED_HEADERS
    ]


def url_problems(
    config: Mapping[str, JsonValue], path: str, policy: EgressPolicy
) -> list[FieldViolation]:
    """A literal ``url`` that is not an absolute http(s) URL, or whose literal address the
    egress policy refuses (a templated one is checked when the step runs)."""
    url = config.get("url")
    if not isinstance(url, str) or has_placeholder(url):
        return []
    if not is_http_url(url):
        return [FieldViolation(f"{path}.url", "not an absolute http(s) URL")]
    refused = url_violation(url, policy)
    return [] if refused is None else [FieldViolation(f"{path}.url", refused)]


def url_violation(url: str, policy: EgressPolicy) -> str | None:
    """Why a literal URL is refused by its text alone (a literal address the policy refuses),
    or None. The check at send time, on the resolved address, is the guarantee."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        return None
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    reason = egress.literal_violation(parsed.host, port, policy)
    return None if reason is None else f"is refused by the egress policy: {reason}"


def is_http_url(url: str) -> bool:
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        return False
    return parsed.scheme in ("http", "https") and bool(parsed.host)


def request_options(config: Mapping[str, JsonValue]) -> dict[str, Any]:
    """The :class:`Request` fields every HTTP runner's config sets the same way."""
    expect = config.get("expect_status")
    return {
        "timeout_s": number(config, "timeout_seconds", DEFAULT_TIMEOUT_S),
        "retries": int(number(config, "retries", 0)),
        "backoff_ms": int(number(config, "retry_backoff_ms", DEFAULT_BACKOFF_MS)),
        "expect_status": (
            frozenset(s for s in expect if isinstance(s, int)) if isinstance(expect, list) else None
        ),
    }


def number(config: Mapping[str, JsonValue], key: str, default: float) -> float:
    """A numeric config value (the schema has checked its type), else ``default``."""
    value = config.get(key)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return default
