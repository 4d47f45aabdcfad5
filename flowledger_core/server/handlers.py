"""How both services turn a handler's exception into the call's status: in one place.

Every servicer method is wrapped with :func:`unary` or :func:`stream`. A
:class:`~flowledger.errors.FlowledgerError` becomes its rich status through
:func:`flowledger.rpc_status.abort`; anything else is logged and answered INTERNAL with a generic
message, so internals never reach callers. Streams close their source iterator on every exit,
cancellation included, so database cursors and subscriptions are released.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, TypeAlias, TypeVar

import grpc
import grpc.aio

from flowledger import rpc_status
from flowledger.errors import FlowledgerError, InternalError

log = logging.getLogger("flowledger_core.server")

Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]
_Self = TypeVar("_Self")
_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")


async def fail(context: Context, service: str, method: str, exc: BaseException) -> None:
    """End the call with the status ``exc`` stands for (always raises)."""
    if isinstance(exc, grpc.aio.AbortError):
        raise exc  # already a status
    await rpc_status.abort(context, as_error(service, method, exc))


def as_error(service: str, method: str, exc: BaseException) -> FlowledgerError:
    """The error a caller is told for ``exc``: itself when it is a FlowledgerError, else a
    generic INTERNAL one (the details are logged, never sent). Internal errors are logged."""
    if not isinstance(exc, FlowledgerError):
        log.error("unexpected error in %s.%s", service, method, exc_info=exc)
        return InternalError(
            f"internal error in the {service} while handling {method}; it was logged"
        )
    if isinstance(exc, InternalError):
        log.error("%s.%s failed: %s", service, method, exc.message)
    return exc


def unary(
    service: str,
) -> Callable[
    [Callable[[_Self, _Req, Context], Awaitable[_Resp]]],
    Callable[[_Self, _Req, Context], Coroutine[Any, Any, _Resp]],
]:
    """Decorate a unary servicer method of ``service`` ("store", "engine")."""

    def decorate(
        fn: Callable[[_Self, _Req, Context], Awaitable[_Resp]],
    ) -> Callable[[_Self, _Req, Context], Coroutine[Any, Any, _Resp]]:
        @functools.wraps(fn)
        async def wrapper(self: _Self, request: _Req, context: Context) -> _Resp:
            try:
                return await fn(self, request, context)
            except Exception as exc:
                await fail(context, service, fn.__name__, exc)
                raise AssertionError("unreachable: fail() aborts") from exc

        return wrapper

    return decorate


def stream(
    service: str,
) -> Callable[
    [Callable[[_Self, _Req, Context], AsyncIterator[_Resp]]],
    Callable[[_Self, _Req, Context], AsyncIterator[_Resp]],
]:
    """Decorate a server-streaming servicer method of ``service``."""

    def decorate(
        fn: Callable[[_Self, _Req, Context], AsyncIterator[_Resp]],
    ) -> Callable[[_Self, _Req, Context], AsyncIterator[_Resp]]:
        @functools.wraps(fn)
        async def wrapper(self: _Self, request: _Req, context: Context) -> AsyncIterator[_Resp]:
            responses = fn(self, request, context)
            try:
                async with closing(responses):
                    async for response in responses:
                        yield response
            except Exception as exc:
                await fail(context, service, fn.__name__, exc)

        return wrapper

    return decorate


@contextlib.asynccontextmanager
async def closing(iterator: object) -> AsyncIterator[None]:
    """Close an async generator on every exit, cancellation included (releases DB cursors)."""
    try:
        yield
    finally:
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            await aclose()
