"""gRPC metrics with the go-grpc-prometheus names, for grpc.aio servers and channels.

Dashboards and alert rules written for Go services (``grpc_server_handled_total`` by
``grpc_code``, ``grpc_server_handling_seconds``) work unchanged: the metric names, the label
names and the label values follow go-grpc-prometheus, including Go's spelling of status codes
(``OK``, ``InvalidArgument``, ``Canceled``). As there, the histograms carry no ``grpc_code``.

Hand-written because the maintained ``py-grpc-prometheus`` only supports the synchronous server.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeAlias, TypeVar, cast

import grpc
import grpc.aio
from prometheus_client import Counter, Histogram

_LABELS = ("grpc_type", "grpc_service", "grpc_method")
_CODE_LABELS = (*_LABELS, "grpc_code")

SERVER_STARTED = Counter(
    "grpc_server_started_total", "Total number of RPCs started on the server.", _LABELS
)
SERVER_HANDLED = Counter(
    "grpc_server_handled_total",
    "Total number of RPCs completed on the server, regardless of success or failure.",
    _CODE_LABELS,
)
SERVER_HANDLING_SECONDS = Histogram(
    "grpc_server_handling_seconds",
    "Histogram of response latency (seconds) of gRPC that had been application-level handled "
    "by the server.",
    _LABELS,
)
SERVER_MSG_RECEIVED = Counter(
    "grpc_server_msg_received_total", "Total number of RPC stream messages received on the server.",
    _LABELS,
)
SERVER_MSG_SENT = Counter(
    "grpc_server_msg_sent_total", "Total number of gRPC stream messages sent by the server.",
    _LABELS,
)
CLIENT_STARTED = Counter(
    "grpc_client_started_total", "Total number of RPCs started on the client.", _LABELS
)
CLIENT_HANDLED = Counter(
    "grpc_client_handled_total",
    "Total number of RPCs completed by the client, regardless of success or failure.",
    _CODE_LABELS,
)
CLIENT_HANDLING_SECONDS = Histogram(
    "grpc_client_handling_seconds",
    "Histogram of response latency (seconds) of the gRPC until it is finished by the application.",
    _LABELS,
)
CLIENT_MSG_RECEIVED = Counter(
    "grpc_client_msg_received_total",
    "Total number of RPC stream messages received by the client.",
    _LABELS,
)

# Go's codes.Code.String(): what go-grpc-prometheus puts in grpc_code.
GO_CODE_NAMES: dict[grpc.StatusCode, str] = {
    grpc.StatusCode.OK: "OK",
    grpc.StatusCode.CANCELLED: "Canceled",
    grpc.StatusCode.UNKNOWN: "Unknown",
    grpc.StatusCode.INVALID_ARGUMENT: "InvalidArgument",
    grpc.StatusCode.DEADLINE_EXCEEDED: "DeadlineExceeded",
    grpc.StatusCode.NOT_FOUND: "NotFound",
    grpc.StatusCode.ALREADY_EXISTS: "AlreadyExists",
    grpc.StatusCode.PERMISSION_DENIED: "PermissionDenied",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "ResourceExhausted",
    grpc.StatusCode.FAILED_PRECONDITION: "FailedPrecondition",
    grpc.StatusCode.ABORTED: "Aborted",
    grpc.StatusCode.OUT_OF_RANGE: "OutOfRange",
    grpc.StatusCode.UNIMPLEMENTED: "Unimplemented",
    grpc.StatusCode.INTERNAL: "Internal",
    grpc.StatusCode.UNAVAILABLE: "Unavailable",
    grpc.StatusCode.DATA_LOSS: "DataLoss",
    grpc.StatusCode.UNAUTHENTICATED: "Unauthenticated",
}

Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]
_Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")
_Labels: TypeAlias = tuple[str, str, str]


def split_method(full_method: str) -> tuple[str, str]:
    """``/pkg.Service/Method`` → (``pkg.Service``, ``Method``)."""
    service, _, method = full_method.lstrip("/").partition("/")
    return (service, method) if method else ("unknown", full_method)


def _rpc_type(handler: _Handler) -> str:
    if handler.request_streaming and handler.response_streaming:
        return "bidi_stream"
    if handler.request_streaming:
        return "client_stream"
    if handler.response_streaming:
        return "server_stream"
    return "unary"


def _server_code(context: Context, exc: BaseException | None) -> grpc.StatusCode:
    # A client that goes away cancels the handler task, or (streams) closes its generator;
    # so does a passed deadline, which go-grpc-prometheus counts as DeadlineExceeded.
    if isinstance(exc, asyncio.CancelledError | GeneratorExit):
        remaining: object = context.time_remaining()
        if isinstance(remaining, int | float) and remaining <= 0:
            return grpc.StatusCode.DEADLINE_EXCEEDED
        return grpc.StatusCode.CANCELLED
    # Set by abort()/set_code(); None (despite the stubs) when the handler just returned.
    code: object = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    # An exception the handler did not turn into a status: grpc answers UNKNOWN.
    return grpc.StatusCode.OK if exc is None else grpc.StatusCode.UNKNOWN


class _MethodMetrics:
    """The labelled metric children of one method, looked up once instead of on every call."""

    __slots__ = ("handled", "labels", "one_request", "received", "seconds", "sent", "started")

    def __init__(self, labels: _Labels) -> None:
        self.labels = labels
        self.one_request = labels[0] in ("unary", "server_stream")
        self.started = SERVER_STARTED.labels(*labels)
        self.received = SERVER_MSG_RECEIVED.labels(*labels)
        self.sent = SERVER_MSG_SENT.labels(*labels)
        self.seconds = SERVER_HANDLING_SECONDS.labels(*labels)
        self.handled: dict[grpc.StatusCode, Counter] = {}

    def start(self) -> float:
        self.started.inc()
        if self.one_request:
            self.received.inc()  # the one request message
        return time.perf_counter()

    def finish(self, start: float, context: Context, exc: BaseException | None) -> None:
        code = _server_code(context, exc)
        handled = self.handled.get(code)
        if handled is None:
            handled = SERVER_HANDLED.labels(*self.labels, GO_CODE_NAMES.get(code, code.name))
            self.handled[code] = handled
        handled.inc()
        self.seconds.observe(time.perf_counter() - start)


class ServerMetricsInterceptor(grpc.aio.ServerInterceptor):
    """Records ``grpc_server_*`` for every RPC, unary and streaming.

    The instrumented handler of a method is built once and reused for as long as the rest of
    the chain answers with the same handler (it does, unless a later interceptor wraps per call),
    so a call costs a dictionary lookup here, not a new handler and five label lookups.
    """

    def __init__(self) -> None:
        # method -> (handler from the chain, its instrumented twin); bounded by the methods
        # served, since unknown methods (handler None) are not cached.
        self._cache: dict[str, tuple[_Handler, _Handler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[_Req, _Resp] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[_Req, _Resp] | None:
        handler = await continuation(handler_call_details)
        if handler is None:  # unknown method: grpc answers UNIMPLEMENTED itself
            return None
        method = handler_call_details.method
        cached = self._cache.get(method)
        if cached is not None and cached[0] is handler:
            return cast("grpc.RpcMethodHandler[_Req, _Resp]", cached[1])
        instrumented = _instrument(handler, handler_call_details)
        self._cache[method] = (handler, instrumented)
        return cast("grpc.RpcMethodHandler[_Req, _Resp]", instrumented)


def _instrument(handler: _Handler, details: grpc.HandlerCallDetails) -> _Handler:
    service, method = split_method(details.method)
    metrics = _MethodMetrics((_rpc_type(handler), service, method))
    kwargs: dict[str, Any] = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            _wrap_unary(handler.unary_unary, metrics), **kwargs
        )
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            _wrap_streaming(handler.unary_stream, metrics), **kwargs
        )
    # Client and bidi streams: count the call, leave the request flow untouched.
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(
            _wrap_unary(handler.stream_unary, metrics), **kwargs
        )
    if handler.stream_stream is not None:
        return grpc.stream_stream_rpc_method_handler(
            _wrap_streaming(handler.stream_stream, metrics), **kwargs
        )
    return handler


def _wrap_unary(behavior: Callable[..., Any], metrics: _MethodMetrics) -> Callable[..., Any]:
    if inspect.iscoroutinefunction(behavior):

        async def coroutine_wrapper(request: Any, context: Context) -> Any:
            start = metrics.start()
            try:
                result = await behavior(request, context)
            except BaseException as exc:
                metrics.finish(start, context, exc)
                raise
            metrics.finish(start, context, None)
            metrics.sent.inc()
            return result

        return coroutine_wrapper

    async def wrapper(request: Any, context: Context) -> Any:
        start = metrics.start()
        try:
            result = behavior(request, context)
            if inspect.isawaitable(result):
                result = await result
        except BaseException as exc:
            metrics.finish(start, context, exc)
            raise
        metrics.finish(start, context, None)
        metrics.sent.inc()
        return result

    return wrapper


def _wrap_streaming(behavior: Callable[..., Any], metrics: _MethodMetrics) -> Callable[..., Any]:
    if inspect.isasyncgenfunction(behavior):

        async def generator_wrapper(request: Any, context: Context) -> AsyncIterator[Any]:
            start = metrics.start()
            sent = metrics.sent
            responses = behavior(request, context)
            try:
                async for response in responses:
                    sent.inc()
                    yield response
            except BaseException as exc:
                metrics.finish(start, context, exc)
                raise
            finally:
                await responses.aclose()
            metrics.finish(start, context, None)

        return generator_wrapper

    # Reader/writer style (``await context.write(...)``), as the health service's Watch.
    async def coroutine_wrapper(request: Any, context: Context) -> Any:
        start = metrics.start()
        try:
            result = behavior(request, context)
            if inspect.isawaitable(result):
                result = await result
        except BaseException as exc:
            metrics.finish(start, context, exc)
            raise
        metrics.finish(start, context, None)
        return result

    return coroutine_wrapper


# -- client side ---------------------------------------------------------------------------------


class _ClientCall:
    def __init__(self, details: grpc.aio.ClientCallDetails, rpc_type: str) -> None:
        method: object = details.method  # bytes at run time, although typed str
        name = method.decode() if isinstance(method, bytes) else str(method)
        service, method_name = split_method(name)
        self.labels: _Labels = (rpc_type, service, method_name)
        self.start = time.perf_counter()
        self.finished = False
        CLIENT_STARTED.labels(*self.labels).inc()

    def finish(self, code: grpc.StatusCode) -> None:
        if self.finished:
            return
        self.finished = True
        CLIENT_HANDLED.labels(*self.labels, GO_CODE_NAMES.get(code, code.name)).inc()
        CLIENT_HANDLING_SECONDS.labels(*self.labels).observe(time.perf_counter() - self.start)


class UnaryClientMetricsInterceptor(grpc.aio.UnaryUnaryClientInterceptor):
    """Records ``grpc_client_*`` for unary calls of an aio channel."""

    async def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        record = _ClientCall(client_call_details, "unary")
        call = await continuation(client_call_details, request)
        try:
            await call
        except grpc.aio.AioRpcError as exc:
            record.finish(exc.code())
        except asyncio.CancelledError:
            record.finish(grpc.StatusCode.CANCELLED)
            raise
        else:
            record.finish(grpc.StatusCode.OK)
        # The caller awaits the call again: a finished call returns its result or raises.
        return call


class StreamClientMetricsInterceptor(grpc.aio.UnaryStreamClientInterceptor):
    """Records ``grpc_client_*`` for server-streaming calls of an aio channel."""

    async def intercept_unary_stream(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        record = _ClientCall(client_call_details, "server_stream")
        call = await continuation(client_call_details, request)

        def on_done(done_call: Any) -> None:
            # The only outcome known without awaiting: a cancel by the caller.
            if done_call.cancelled():
                record.finish(grpc.StatusCode.CANCELLED)

        call.add_done_callback(on_done)
        return _counting_responses(call, record)


async def _counting_responses(call: Any, record: _ClientCall) -> AsyncIterator[Any]:
    received = CLIENT_MSG_RECEIVED.labels(*record.labels)
    try:
        async for response in call:
            received.inc()
            yield response
    except grpc.aio.AioRpcError as exc:
        record.finish(exc.code())
        raise
    except (asyncio.CancelledError, GeneratorExit):
        record.finish(grpc.StatusCode.CANCELLED)
        raise
    record.finish(grpc.StatusCode.OK)


def client_interceptors() -> list[grpc.aio.ClientInterceptor]:
    """Interceptors for ``grpc.aio.insecure_channel(..., interceptors=...)``.

    One class per call type: a channel files each interceptor under the first interceptor
    type it is an instance of, so one class implementing both would never see streams.
    """
    return [UnaryClientMetricsInterceptor(), StreamClientMetricsInterceptor()]
