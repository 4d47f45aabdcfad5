"""Run a check before a gRPC method handler, for server interceptors that admit or refuse calls.

A *guard* is an async function of the request (None for client- and bidi-streaming methods,
whose requests arrive later) and the call's context. It returns normally to let the call
through, or raises a :class:`~flowledger.errors.FlowledgerError`, which ends the call with that
error's rich status (the handler never runs). A unary request arrives still encoded, as a
:class:`~flowledger_core.server.decoding.PendingRequest`: a guard that needs the message calls
:func:`~flowledger_core.server.decoding.decoded` once it has admitted the caller (an undecodable one
raises INVALID_ARGUMENT). It may also change the message, which the handler then receives (the
authorization interceptor stamps the caller as the recorded actor).

:func:`guarded_handler` wraps every kind of handler the same way, so one interceptor covers
unary and streaming methods alike.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeAlias

import grpc
import grpc.aio

from flowledger import rpc_status
from flowledger.errors import FlowledgerError

__all__ = ["Guard", "guarded_handler"]

Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]
Guard: TypeAlias = Callable[[Any, Context], Awaitable[None]]
_Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"


async def _admit(guard: Guard, request: Any, context: Context) -> None:
    try:
        await guard(request, context)
    except FlowledgerError as exc:
        await rpc_status.abort(context, exc)


async def _finish(result: Any) -> Any:
    return await result if inspect.isawaitable(result) else result


def _wrap(behavior: Callable[..., Any], guard: Guard, streamed_request: bool) -> Any:
    if inspect.isasyncgenfunction(behavior):

        async def generator(request: Any, context: Context) -> AsyncIterator[Any]:
            await _admit(guard, None if streamed_request else request, context)
            responses = behavior(request, context)
            try:
                async for response in responses:
                    yield response
            finally:
                await responses.aclose()

        return generator

    async def coroutine(request: Any, context: Context) -> Any:
        await _admit(guard, None if streamed_request else request, context)
        return await _finish(behavior(request, context))

    return coroutine


def guarded_handler(handler: _Handler, guard: Guard) -> _Handler:
    """``handler`` with ``guard`` run before its behavior (same method kind and serializers)."""
    kwargs: dict[str, Any] = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            _wrap(handler.unary_unary, guard, False), **kwargs
        )
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            _wrap(handler.unary_stream, guard, False), **kwargs
        )
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(
            _wrap(handler.stream_unary, guard, True), **kwargs
        )
    if handler.stream_stream is not None:
        return grpc.stream_stream_rpc_method_handler(
            _wrap(handler.stream_stream, guard, True), **kwargs
        )
    raise TypeError(f"not a method handler: {handler!r}")
