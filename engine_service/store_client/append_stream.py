"""The engine's appends over one shared StoreService.AppendStream call (see store.proto).

A stream message costs both ends a fraction of a unary call, and an engine replica appends all
the time; so :class:`~engine_service.store_client.client.GrpcEventStore` sends its appends here.

* One stream per client, opened by the first append and shared by all: each command gets a
  request_id (unique for the client's lifetime) and a future; a reader task resolves the futures
  as answers arrive, in any order.
* Writes go through one writer task: gRPC allows one write in flight per call, and grpc.aio
  cancels the whole call when a write is cancelled, so a caller cancelled mid-write would fail
  every other append. A caller only ever waits on its own future.
* Once the stream's initial metadata says the store reads `more` (MORE_HEADER; an older store
  would drop those commands unanswered), the writer sends every request queued at the time in
  one message (up to MAX_COALESCED_BYTES), and the store answers in kind: each message costs
  both ends far more than a command in it, so concurrent appends share messages as they share
  commits.
* An attempt has the deadline a unary attempt has: no answer in time raises ``DeadlineExceeded``
  and drops the future (a late answer is ignored; the request is not sent if still queued).
* When the call ends (connection lost, store draining), every pending append fails with the error
  :func:`~flowledger.rpc_status.from_rpc_error` gives, as a failed unary call would, and the next
  append opens a new stream. Transient failures (``Unavailable``, ``DeadlineExceeded``, also when
  they come in a command's ``error``) are retried within the retry budget with the same command,
  which is safe: appends are idempotent by command_id.
* A store that does not serve AppendStream (UNIMPLEMENTED: an older store during a rolling
  upgrade) turns streaming off for the client: appends go unary from then on.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque

import grpc
import grpc.aio
from google.rpc import status_pb2

from engine_service.store_client.retry import RetryBudget, StoreClientSettings, is_transient
from flowledger.errors import DeadlineExceeded, FailedPrecondition, FlowledgerError, Unavailable
from flowledger.rpc_status import from_rpc_error, from_status
from flowledger.v1 import store_pb2, store_pb2_grpc
from flowledger_core.wire.store import MORE_HEADER

log = logging.getLogger(__name__)

_Answer = asyncio.Future[store_pb2.AppendStreamResponse]


class AppendStreams:
    """The client's current AppendStream, reopened after it ends; the retry loop."""

    def __init__(
        self, stub: store_pb2_grpc.StoreServiceAsyncStub, settings: StoreClientSettings
    ) -> None:
        self._stub = stub
        self._settings = settings
        self._stream: _Stream | None = None
        self._ids = itertools.count(1)
        self._closed = False
        self.supported = True
        """False once the store answered UNIMPLEMENTED: append with AppendEvents instead."""

    async def append(
        self, request: store_pb2.AppendStreamRequest
    ) -> store_pb2.AppendEventsResponse | None:
        """Apply ``request``'s command (its request_id is set here); None when the store does
        not serve AppendStream. Non-transient failures are raised as flowledger errors."""
        budget = RetryBudget(self._settings, what="AppendStream")
        while True:
            if self._closed:
                raise FailedPrecondition("the store client is closed", reason="CLIENT_CLOSED")
            stream = self._stream
            if stream is None or stream.ended:
                stream = self._stream = _Stream(self._stub)
            request.request_id = next(self._ids)
            try:
                response = await stream.send(request, budget.attempt_timeout())
            except (Unavailable, DeadlineExceeded) as exc:
                if stream.unimplemented:
                    self.supported = False
                    return None
                error: FlowledgerError = exc
            else:
                if response.HasField("result"):
                    return response.result
                error = from_status(status_pb2.Status.FromString(response.error))
                if not is_transient(error):
                    raise error
            await budget.backoff(error)
            # A fresh message: the last one may still sit, unsent, in the stream's queue.
            request = store_pb2.AppendStreamRequest(append=request.append)

    async def close(self) -> None:
        """End the stream: pending appends fail (CLIENT_CLOSED), later ones are refused."""
        self._closed = True
        stream, self._stream = self._stream, None
        if stream is not None:
            await stream.close()


class _Stream:
    """One AppendStream call with its reader and writer tasks."""

    def __init__(self, stub: store_pb2_grpc.StoreServiceAsyncStub) -> None:
        self._loop = loop = asyncio.get_running_loop()
        self._call = stub.AppendStream(wait_for_ready=True)
        self._pending: dict[int, _Answer] = {}
        self._outbox: deque[store_pb2.AppendStreamRequest] = deque()
        self._wakeup: asyncio.Future[None] | None = None
        self._closing = False
        self._started = False  # the call was set up: writes from here on are gRPC operations
        self._coalesce = False  # the store said it reads `more`
        self.ended = False
        self.unimplemented = False
        self._reader = loop.create_task(self._read())
        self._writer = loop.create_task(self._write())

    async def send(
        self, request: store_pb2.AppendStreamRequest, within: float
    ) -> store_pb2.AppendStreamResponse:
        """Queue ``request`` and wait for its answer, ``within`` seconds at most."""
        request_id = request.request_id
        answer: _Answer = self._loop.create_future()
        pending = self._pending
        pending[request_id] = answer
        self._outbox.append(request)
        wakeup = self._wakeup
        if wakeup is not None:
            self._wakeup = None
            wakeup.set_result(None)
        timer = self._loop.call_later(within, _expire, answer, within)
        try:
            return await answer
        finally:
            timer.cancel()
            pending.pop(request_id, None)

    async def _write(self) -> None:
        call, outbox, pending = self._call, self._outbox, self._pending
        try:
            # Until the channel is ready (wait_for_ready) this waits on asyncio alone, so it may
            # be cancelled; a write that waits for it inside gRPC may not (see _stop_writer).
            await call.wait_for_connection()
            self._started = True
            while True:
                while outbox:
                    request = outbox.popleft()
                    if request.request_id in pending:  # else abandoned: deadline or cancel
                        if self._coalesce:
                            request = _coalesced(request, outbox, pending)
                        await call.write(request)
                self._wakeup = wakeup = self._loop.create_future()
                await wakeup
        except (grpc.RpcError, asyncio.InvalidStateError) as exc:
            # The call is over; the reader learns how and fails the pending appends.
            log.debug("AppendStream: a write failed: %r", exc)
            call.cancel()

    async def _read(self) -> None:
        call, pending = self._call, self._pending
        try:
            # Sent by the store first thing, or with its first answer (an older store).
            metadata = await call.initial_metadata()
            self._coalesce = (MORE_HEADER, "1") in tuple(metadata or ())
            while True:
                response = await call.read()
                if response is grpc.aio.EOF:  # the store ended it OK: not a thing it does
                    self._end(None)
                    return
                assert isinstance(response, store_pb2.AppendStreamResponse)
                _resolve(pending, response)
                for more in response.more:
                    _resolve(pending, more)
        except grpc.RpcError as exc:
            self._end(exc)
        except asyncio.CancelledError:
            # Our call was cancelled (close(), a failed write) or this task was.
            self._end(None)
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise

    def _end(self, exc: grpc.RpcError | None) -> None:
        """The call is over: fail every pending append with the error it stands for."""
        self.ended = True
        if isinstance(exc, grpc.aio.AioRpcError) and exc.code() == grpc.StatusCode.UNIMPLEMENTED:
            self.unimplemented = True
        for answer in self._pending.values():
            if not answer.done():
                answer.set_exception(self._error(exc))
        self._pending.clear()
        self._call.cancel()
        self._stop_writer()

    def _stop_writer(self) -> None:
        # A writer in the middle of a write is not cancelled: it ends by itself once the call
        # is cancelled, after gRPC completed the write (cancelling it would leave gRPC to
        # complete it later, maybe after the event loop closed). One that waits for the call
        # to be set up, or for requests, is waiting on asyncio alone.
        wakeup = self._wakeup
        if not self._started or (wakeup is not None and not wakeup.done()):
            self._writer.cancel()

    def _error(self, exc: grpc.RpcError | None) -> FlowledgerError:
        if self._closing:
            return FailedPrecondition(
                "the store client was closed during the call", reason="CLIENT_CLOSED"
            )
        if self.unimplemented:
            return Unavailable("the store does not serve AppendStream",
                               reason="APPEND_STREAM_UNIMPLEMENTED")
        if exc is None:
            return Unavailable("the append stream ended; retry on a new one")
        return from_rpc_error(exc)

    async def close(self) -> None:
        """Cancel the call and wait for the reader and writer to finish (not cancelled: their
        gRPC operations complete first, so none is left to finish after the loop closed)."""
        self._closing = True
        self._call.cancel()
        self._stop_writer()
        await asyncio.gather(self._reader, self._writer, return_exceptions=True)
        self._end(None)  # in case the reader ended before close() began


# A coalesced request stays well under the 4 MiB a store receives by default.
MAX_COALESCED_BYTES = 1 << 20


def _coalesced(
    first: store_pb2.AppendStreamRequest,
    outbox: deque[store_pb2.AppendStreamRequest],
    pending: dict[int, _Answer],
) -> store_pb2.AppendStreamRequest:
    """``first`` carrying, in ``more``, the queued requests that fit (taken off ``outbox``;
    abandoned ones are dropped): one message instead of one per command."""
    size = first.ByteSize()
    more = first.more
    while outbox:
        request = outbox[0]
        if request.request_id not in pending:
            outbox.popleft()
            continue
        size += request.ByteSize() + 8  # the field's tag and length
        if size > MAX_COALESCED_BYTES:
            break
        more.append(outbox.popleft())
    return first


def _resolve(pending: dict[int, _Answer], response: store_pb2.AppendStreamResponse) -> None:
    answer = pending.pop(response.request_id, None)
    if answer is not None and not answer.done():
        answer.set_result(response)


def _expire(answer: _Answer, within: float) -> None:
    if not answer.done():
        answer.set_exception(DeadlineExceeded(f"AppendStream: no answer within {within:g}s"))
