"""The one server interceptor that admits or refuses engine calls (unary and streaming).

For every method except the health checks, in this order:

1. authenticate the bearer token → UNAUTHENTICATED (TOKEN_MISSING, TOKEN_INVALID, TOKEN_EXPIRED);
2. spend one request of the subject's rate limit, when configured → RESOURCE_EXHAUSTED
   (RATE_LIMITED), so refused calls cost as much as served ones;
3. the role x method table (:mod:`flowledger_core.server.auth_policy`) → PERMISSION_DENIED;
4. decode the request (only now: :mod:`flowledger_core.server.decoding`) → INVALID_ARGUMENT
   (UNDECODABLE_REQUEST) when its bytes are not a message; then the request's namespace →
   NOT_FOUND outside the principal's namespaces;
5. stamp the subject into the request's actor fields, and make the principal the call's
   :func:`~flowledger_core.server.auth.current_principal`.

A method this server does not serve is answered UNIMPLEMENTED to anyone, as without the
interceptor: the surface is public (the protos are), and refusing arbitrary method names with a
handler of their own would let unauthenticated callers grow the per-method metrics without bound.
Refusals are counted in ``flowledger_auth_refused_total`` by reason; tokens are never logged.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeAlias

import grpc
import grpc.aio
from prometheus_client import Counter

from flowledger.errors import FlowledgerError
from flowledger_core.server import auth_policy
from flowledger_core.server.auth import Principal, set_principal
from flowledger_core.server.auth_limits import RateLimiter
from flowledger_core.server.auth_settings import AuthSettings
from flowledger_core.server.auth_tokens import Authenticator
from flowledger_core.server.decoding import decoded
from flowledger_core.server.guard import Context, guarded_handler
from flowledger_core.server.tls import OPEN_METHODS

__all__ = ["AUTH_REFUSED", "AuthInterceptor", "auth_interceptors"]

log = logging.getLogger("flowledger_core.server.auth")

AUTH_REFUSED = Counter(
    "flowledger_auth_refused_total",
    "Calls refused by authentication, rate limits, roles or namespaces, by reason.",
    ("reason",),
)

_Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
_Metadata: TypeAlias = Iterable[tuple[str, str | bytes]] | None


class AuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, authenticator: Authenticator, limiter: RateLimiter | None = None) -> None:
        self._authenticator = authenticator
        self._limiter = limiter
        # method -> (handler from the chain, its guarded twin): built once per method, so the
        # metrics interceptor in front keeps its own per-method cache.
        self._cache: dict[str, tuple[_Handler, _Handler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[_Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> _Handler | None:
        method = handler_call_details.method
        handler = await continuation(handler_call_details)
        if handler is None or method in OPEN_METHODS:
            return handler
        cached = self._cache.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        guarded = guarded_handler(handler, functools.partial(self._guard, method))
        self._cache[method] = (handler, guarded)
        return guarded

    def _admit(self, method: str, metadata: _Metadata) -> Principal:
        try:
            principal = self._authenticator.authenticate(metadata)
            if self._limiter is not None:
                self._limiter.take(principal.subject)
            auth_policy.authorize(principal, method)
        except FlowledgerError as exc:
            AUTH_REFUSED.labels(exc.reason).inc()
            log.debug("refused %s: %s", method, exc.message)
            raise
        return principal

    async def _guard(self, method: str, request: Any, context: Context) -> None:
        principal = self._admit(method, context.invocation_metadata())
        if request is not None:
            # Decoded only now, for an admitted caller (decision 0023); UndecodableRequest
            # ends the call INVALID_ARGUMENT.
            request = decoded(request)
            try:
                auth_policy.check_namespace(principal, request)
            except FlowledgerError as exc:
                AUTH_REFUSED.labels(exc.reason).inc()
                raise
            auth_policy.stamp_actor(principal, request)
        # Each call runs in its own task, whose context ends with it: nothing to reset.
        set_principal(principal)


def auth_interceptors(settings: AuthSettings | None) -> list[grpc.aio.ServerInterceptor]:
    """The interceptor for ``settings`` (none when authentication is disabled). Raises
    :class:`~flowledger_core.server.auth_tokens.FileError` when a configured file is unusable."""
    if settings is None:
        return []
    limiter = RateLimiter(settings.rate_limit) if settings.rate_limit is not None else None
    return [AuthInterceptor(Authenticator(settings), limiter)]
