"""StoreService.AppendStream: AppendEvents commands over one long-lived bidirectional stream.

A stream message costs a fraction of a unary call (no call set-up, no per-call metrics and
interceptor work), which is what an engine replica that appends all the time pays for.

* A reader task reads requests and starts one task per command, so that the commands of one
  stream run concurrently and share the store's group commits.
* A command is validated and applied exactly as :meth:`StoreServicer.AppendEvents` does it; a
  failure becomes the ``google.rpc.Status`` that call would have ended with (through the same
  mapping, :func:`flowledger_core.server.handlers.as_error` and
  :func:`flowledger.rpc_status.to_status`), sent in the answer's ``error``. The stream goes on.
* A message may carry several commands (`more`); each is started as if it had come alone. The
  stream's initial metadata says so (MORE_HEADER), first thing: a client sends `more` only
  after seeing it, since a store that predates the field would drop those commands unanswered.
* gRPC allows one write in flight per call. The command that finds no write in progress writes
  its answer, then the answers that other commands queued meanwhile; the others just queue and
  finish. No lock, no writer task to wake: an answer costs one write. Once the client has sent
  `more`, the answers queued at a write go in one message (`more` of the response, up to
  MAX_COALESCED_BYTES), and the writer first lets the answers of the same group commit queue:
  a message costs both ends far more than a command in it (measured: 386 -> 124 us of store
  CPU per append, 16 callers on one stream).
* A request_id is "unanswered" from its request until its answer is queued for writing. Reusing
  one that is unanswered ends the stream with INVALID_ARGUMENT.
* The stream ends after every command read so far is answered: OK when the client half-closes,
  INVALID_ARGUMENT on a reused request_id or an undecodable message, UNAVAILABLE
  (``SHUTTING_DOWN``) when the server drains.
  Requests read after that decision are not started (the client sees the stream end and sends
  them again, safely: appends are idempotent by command_id).
* A client that cancels cancels the handler; every task is cancelled and awaited on the way out.
* The metrics interceptor sees no message of a reader/writer handler, so the messages received
  and sent (one per command and answer) are counted here, on go-grpc-prometheus'
  ``grpc_server_msg_received_total`` / ``grpc_server_msg_sent_total``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque
from collections.abc import Sequence
from typing import Protocol

import grpc.aio

from flowledger import rpc_status
from flowledger.errors import FieldViolation, FlowledgerError, InvalidArgument, Unavailable
from flowledger.v1 import store_pb2
from flowledger_core.limits import Limits
from flowledger_core.ports import EventStore
from flowledger_core.server.decoding import UndecodableRequest
from flowledger_core.server.handlers import Context, as_error
from flowledger_core.server.interceptors import SERVER_MSG_RECEIVED, SERVER_MSG_SENT
from flowledger_core.wire import store as convert
from flowledger_core.wire.store import MORE_HEADER
from store_service import validation


class StreamHost(Protocol):
    """What a session needs of the servicer that serves it (:class:`StoreServicer`)."""

    @property
    def store(self) -> EventStore: ...

    @property
    def limits(self) -> Limits: ...

    @property
    def draining(self) -> bool: ...

    async def drained(self) -> None: ...

log = logging.getLogger("store_service")

_EOF = grpc.aio.EOF
_LABELS = (
    "bidi_stream",
    store_pb2.DESCRIPTOR.services_by_name["StoreService"].full_name,
    "AppendStream",
)
_RECEIVED = SERVER_MSG_RECEIVED.labels(*_LABELS)
_SENT = SERVER_MSG_SENT.labels(*_LABELS)


class AppendStreamSession:
    """One AppendStream call (see the module docstring)."""

    __slots__ = (
        "_backlog",
        "_broken",
        "_coalesce",
        "_context",
        "_idle",
        "_reading",
        "_servicer",
        "_tasks",
        "_unanswered",
        "_writing",
    )

    def __init__(self, servicer: StreamHost, context: Context) -> None:
        self._servicer = servicer
        self._context = context
        self._unanswered: set[int] = set()
        # Every command task still running (computing, queueing or writing its answer).
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._backlog: deque[store_pb2.AppendStreamResponse] = deque()
        self._writing = False
        self._coalesce = False  # the client sent `more`: answers may share a message too
        self._broken = False  # a write failed: the call is over, answers go nowhere
        self._reading = True
        self._idle: asyncio.Future[None] | None = None

    async def run(self) -> None:
        """Serve the stream until it ends; raise the error it ends with, if any."""
        if self._servicer.draining:
            raise _shutting_down()
        await self._context.send_initial_metadata(ADVERTISED)
        loop = asyncio.get_running_loop()
        reader = loop.create_task(self._read())
        drained = loop.create_task(self._servicer.drained())
        try:
            await asyncio.wait((reader, drained), return_when=asyncio.FIRST_COMPLETED)
            self._reading = False  # from here on nothing new starts
            ending = reader.result() if reader.done() else _shutting_down()
            while self._tasks:
                self._idle = loop.create_future()
                await self._idle
            if ending is not None:
                raise ending
        finally:
            pending = [reader, drained, *self._tasks.values()]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def _read(self) -> FlowledgerError | None:
        """Start a command per request until the client half-closes (None), reuses an
        unanswered request_id or sends a message that cannot be decoded (the error the stream
        ends with)."""
        read = self._context.read
        unanswered, tasks = self._unanswered, self._tasks
        create_task = asyncio.get_running_loop().create_task
        command = self._command
        keys = itertools.count()
        received = _RECEIVED.inc
        while True:
            try:
                request = await read()
            except UndecodableRequest as exc:  # bytes that are no AppendStreamRequest
                return exc
            if request is _EOF or not self._reading:
                return None
            received()
            assert isinstance(request, store_pb2.AppendStreamRequest)
            if request.more:
                self._coalesce = True  # this client reads answers from `more` too
                commands: Sequence[store_pb2.AppendStreamRequest] = (request, *request.more)
            else:
                commands = (request,)
            for i, cmd in enumerate(commands):
                request_id = cmd.request_id
                if request_id in unanswered:
                    log.warning(
                        "AppendStream: request_id %d was reused while its command is "
                        "unanswered; the stream ends",
                        request_id,
                    )
                    return InvalidArgument(
                        f"request_id {request_id} is reused while its command is unanswered",
                        violations=[
                            FieldViolation(
                                "request_id" if i == 0 else f"more[{i - 1}].request_id",
                                "must differ from every unanswered request's id",
                            )
                        ],
                    )
                if i and cmd.more:
                    return InvalidArgument(
                        "a command carried in `more` carries more commands itself",
                        violations=[FieldViolation(f"more[{i - 1}].more", "must be empty")],
                    )
                unanswered.add(request_id)
                key = next(keys)
                tasks[key] = create_task(command(key, request_id, cmd.append))

    async def _command(
        self, key: int, request_id: int, append: store_pb2.AppendEventsRequest
    ) -> None:
        try:
            servicer = self._servicer
            try:
                validation.check_append_events(append, servicer.limits)
                result = await servicer.store.append(convert.append(append))
                response = convert.append_stream_result(request_id, result)
            except Exception as exc:  # the command's failure is its answer
                error = as_error("store", "AppendStream", exc)
                response = convert.append_stream_error(
                    request_id, rpc_status.to_status(error).SerializeToString()
                )
            self._unanswered.discard(request_id)
            await self._send(response)
        finally:
            tasks = self._tasks
            del tasks[key]
            idle = self._idle
            if not tasks and idle is not None and not idle.done():
                idle.set_result(None)

    async def _send(self, response: store_pb2.AppendStreamResponse) -> None:
        if self._writing:
            self._backlog.append(response)  # the writing command writes it next
            return
        if self._broken:
            return
        self._writing = True
        write = self._context.write
        backlog = self._backlog
        sent = _SENT.inc
        try:
            if self._coalesce:
                # The answers of one group commit complete together: let the other commands
                # resolved with this one queue theirs, so that one message carries them all.
                await asyncio.sleep(0)
                while True:
                    await write(_coalesced(response, backlog))
                    sent()
                    if not backlog:
                        break
                    response = backlog.popleft()
            else:
                await write(response)
                sent()
                while backlog:
                    await write(backlog.popleft())
                    sent()
        except Exception as exc:  # the call ended under us (client gone, server stopped)
            log.debug("AppendStream: an answer could not be written: %r", exc)
            self._broken = True
            backlog.clear()
        finally:
            self._writing = False


# Initial metadata of every AppendStream call: this store reads `more` (see store.proto).
ADVERTISED: tuple[tuple[str, str], ...] = ((MORE_HEADER, "1"),)

# A coalesced response stays well under the 4 MiB a client receives by default.
MAX_COALESCED_BYTES = 1 << 20


def _coalesced(
    first: store_pb2.AppendStreamResponse, backlog: deque[store_pb2.AppendStreamResponse]
) -> store_pb2.AppendStreamResponse:
    """``first`` carrying, in ``more``, as many queued answers as fit (taken off ``backlog``)."""
    size = first.ByteSize()
    more = first.more
    while backlog:
        size += backlog[0].ByteSize() + 8  # the field's tag and length
        if size > MAX_COALESCED_BYTES:
            break
        more.append(backlog.popleft())
    return first


def _shutting_down() -> Unavailable:
    return Unavailable(
        "the store is shutting down; send unanswered appends again on another stream",
        reason="SHUTTING_DOWN",
    )
