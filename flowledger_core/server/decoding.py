"""Request decoding after admission: undecodable bytes are INVALID_ARGUMENT, never a traceback.

grpc.aio decodes a unary request (``request_deserializer``) before it calls the handler, that
is, before any interceptor's check has run; a decoding error there is logged with a traceback
and answered UNKNOWN. :class:`DecodeAfterAdmission`, installed by
:class:`~flowledger_core.server.runtime.GrpcServer` as the innermost interceptor of every service,
changes that for every method (decision 0023):

* A unary request (unary and server-streaming methods) reaches the handler chain as a
  :class:`PendingRequest`, its bytes not yet looked at. Checks that need only the call
  (client certificate names, the bearer token, rate limits, roles) run on the bytes; a check that
  needs the message (namespaces) calls :func:`decoded` after admitting the caller, and the
  innermost handler decodes it before the servicer method runs (once: the message is cached, so a
  check's changes to it reach the handler).
* A streamed request (client- and bidi-streaming) is read by the handler itself, after the
  checks: its deserializer raises :class:`UndecodableRequest` from the read instead of
  ``DecodeError``.

Either way the caller gets INVALID_ARGUMENT (reason ``UNDECODABLE_REQUEST``) saying the request
could not be decoded, nothing is logged above DEBUG, and
``flowledger_undecodable_requests_total`` counts it by service and method.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn, TypeAlias

import grpc
import grpc.aio
from google.protobuf.message import DecodeError
from prometheus_client import Counter

from flowledger import rpc_status
from flowledger.errors import InvalidArgument

__all__ = [
    "UNDECODABLE_REQUESTS",
    "DecodeAfterAdmission",
    "PendingRequest",
    "UndecodableRequest",
    "decoded",
]

log = logging.getLogger("flowledger_core.server")

UNDECODABLE_REQUESTS = Counter(
    "flowledger_undecodable_requests_total",
    "Request messages that could not be decoded (corrupt wire format, invalid UTF-8 in a string "
    "field), by service and method; each was answered INVALID_ARGUMENT.",
    ("grpc_service", "grpc_method"),
)

Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]
_Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
_Decode: TypeAlias = Callable[[bytes], Any]


class UndecodableRequest(InvalidArgument):
    """The request's bytes are not a message of the method's request type."""

    default_reason = "UNDECODABLE_REQUEST"


class _MethodDecoder:
    """Decodes one method's request messages; counts and describes the failures."""

    __slots__ = ("_decode", "_undecodable")

    def __init__(self, decode: _Decode, full_method: str) -> None:
        self._decode = decode
        service, _, method = full_method.lstrip("/").partition("/")
        self._undecodable = UNDECODABLE_REQUESTS.labels(service, method or full_method)

    def __call__(self, raw: bytes) -> Any:
        try:
            return self._decode(raw)
        except DecodeError as exc:
            self._undecodable.inc()
            log.debug("undecodable request: %s", exc)
            raise UndecodableRequest(
                f"the request could not be decoded: {exc} ({len(raw)} bytes)"
            ) from None


class PendingRequest:
    """A unary request's bytes, decoded by the first :meth:`message` call (after admission)."""

    __slots__ = ("_decoder", "_error", "_message", "_raw")

    def __init__(self, decoder: _MethodDecoder, raw: bytes) -> None:
        self._decoder = decoder
        self._raw: bytes | None = raw
        self._message: Any = None
        self._error: UndecodableRequest | None = None

    def message(self) -> Any:
        """The decoded message (the same object every time); raises
        :class:`UndecodableRequest`, counted once however often it is asked."""
        if self._error is not None:
            raise self._error
        raw = self._raw
        if raw is not None:
            try:
                self._message = self._decoder(raw)
            except UndecodableRequest as exc:
                self._error = exc
                raise
            finally:
                self._raw = None
        return self._message


def decoded(request: Any) -> Any:
    """The message ``request`` stands for: decoded if still pending (may raise
    :class:`UndecodableRequest`), else itself."""
    return request.message() if isinstance(request, PendingRequest) else request


def _pending(decoder: _MethodDecoder) -> Callable[[bytes], PendingRequest]:
    def deserialize(raw: bytes) -> PendingRequest:
        return PendingRequest(decoder, raw)

    return deserialize


async def _refuse(context: Context, exc: UndecodableRequest) -> NoReturn:
    await rpc_status.abort(context, exc)


def _unary_request(behavior: Callable[..., Any]) -> Callable[..., Any]:
    """Decode the pending request, then run ``behavior`` with the message."""
    if inspect.isasyncgenfunction(behavior):

        async def generator(request: Any, context: Context) -> AsyncIterator[Any]:
            try:
                message = decoded(request)
            except UndecodableRequest as exc:
                await _refuse(context, exc)
            responses = behavior(message, context)
            try:
                async for response in responses:
                    yield response
            finally:
                await responses.aclose()

        return generator

    async def coroutine(request: Any, context: Context) -> Any:
        try:
            message = decoded(request)
        except UndecodableRequest as exc:
            await _refuse(context, exc)
        result = behavior(message, context)
        return await result if inspect.isawaitable(result) else result

    return coroutine


def _streamed_request(behavior: Callable[..., Any]) -> Callable[..., Any]:
    """Run ``behavior``; an undecodable message it read and let escape ends the call with its
    status (a handler may also catch it and end the call its own way)."""
    if inspect.isasyncgenfunction(behavior):

        async def generator(requests: Any, context: Context) -> AsyncIterator[Any]:
            responses = behavior(requests, context)
            try:
                async for response in responses:
                    yield response
            except UndecodableRequest as exc:
                await _refuse(context, exc)
            finally:
                await responses.aclose()

        return generator

    async def coroutine(requests: Any, context: Context) -> Any:
        try:
            result = behavior(requests, context)
            return await result if inspect.isawaitable(result) else result
        except UndecodableRequest as exc:
            await _refuse(context, exc)

    return coroutine


def decode_after_admission(handler: _Handler, full_method: str) -> _Handler:
    """``handler`` with its requests decoded as the module docstring says."""
    decode = handler.request_deserializer
    if decode is None:  # raw bytes wanted: nothing to decode
        return handler
    decoder = _MethodDecoder(decode, full_method)
    serializer = handler.response_serializer
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            _unary_request(handler.unary_unary), _pending(decoder), serializer
        )
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            _unary_request(handler.unary_stream), _pending(decoder), serializer
        )
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(
            _streamed_request(handler.stream_unary), decoder, serializer
        )
    if handler.stream_stream is not None:
        return grpc.stream_stream_rpc_method_handler(
            _streamed_request(handler.stream_stream), decoder, serializer
        )
    return handler


class DecodeAfterAdmission(grpc.aio.ServerInterceptor):
    """The innermost interceptor: every method's requests decoded after the checks in front of
    it (see the module docstring). Built once per method, like the other interceptors, so their
    per-method caches hold."""

    def __init__(self) -> None:
        self._cache: dict[str, tuple[_Handler, _Handler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[_Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> _Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        cached = self._cache.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = decode_after_admission(handler, method)
        self._cache[method] = (handler, wrapped)
        return wrapped
