"""External task workers: carry out the ``task`` steps of flows, in your own process::

    async def resize(task: Task) -> list[JsonValue]:
        image = task.inputs[0]
        return [{"url": await make_thumbnail(image["url"], task.params["width"])}]

    async with TaskWorker("127.0.0.1:50052", "default", ["images"], resize) as worker:
        await worker.stopped()      # until worker.stop() (say, from a signal handler)

A step of type ``task`` waits on its queue until a worker polls it (protos/flowledger/v1/
worker.proto). The worker then holds the task's lease: :class:`TaskWorker` renews it by
heartbeat while the handler runs, completes the task with what the handler returns, and fails it
when the handler raises (``error_type`` = the exception's class name, so that a step's retry
policy can name it non-retryable). A result the engine refuses because the task is no longer
this worker's (its lease was taken over after a stall, the task timed out, its flow was
cancelled) is dropped and counted in ``lost``; the worker goes on with the next task.
:class:`TaskClient` is the same contract call by call, for workers that want full control.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

import grpc
import grpc.aio

from flowledger._channel import open_channel
from flowledger.errors import FailedPrecondition, FlowledgerError, Unavailable
from flowledger.rpc_status import from_rpc_error
from flowledger.types import JsonValue
from flowledger.v1 import worker_pb2, worker_pb2_grpc

log = logging.getLogger("flowledger.worker")

_T = TypeVar("_T")

Handler = Callable[["Task"], "Awaitable[Any] | Any"]
"""Takes a :class:`Task`; returns its outputs (sync or async; a sync one runs in a thread).
A list or tuple is the list of outputs (each becomes an artifact); any other JSON value is the
one output. Raising fails the task."""

LEASE_LOST = "LEASE_LOST"
TASK_NOT_PENDING = "TASK_NOT_PENDING"
MIN_LEASE_MS = 1000
_BACKOFF_MAX_S = 2.0


@dataclass(frozen=True)
class Task:
    """A leased task: one attempt of one ``task`` step of one flow."""

    task_id: str
    namespace: str
    flow_id: str
    step_id: str
    attempt: int
    queue: str
    params_json: str
    inputs_json: str
    lease_token: int
    # flow:step:attempt; pass it on to side effects that take an idempotency key.
    idempotency_key: str

    @property
    def params(self) -> dict[str, JsonValue]:
        """The step's ``config`` in the definition."""
        value = json.loads(self.params_json) if self.params_json else {}
        return value if isinstance(value, dict) else {}

    @property
    def inputs(self) -> list[JsonValue]:
        """The step's input payloads (the previous step's outputs, or the flow input)."""
        value = json.loads(self.inputs_json) if self.inputs_json else []
        return value if isinstance(value, list) else [value]


def outputs_of(result: Any) -> list[JsonValue]:
    """A handler's return value as the list of outputs."""
    return list(result) if isinstance(result, list | tuple) else [result]


class TaskClient:
    """The WorkerService calls, typed; errors are :mod:`flowledger.errors` classes."""

    def __init__(
        self,
        address: str,
        *,
        timeout: float = 30.0,
        credentials: grpc.ChannelCredentials | None = None,
        options: Iterable[tuple[str, Any]] = (),
    ) -> None:
        self.timeout = timeout
        self._channel = open_channel(address, credentials, options)
        self._stub = worker_pb2_grpc.WorkerServiceStub(self._channel)

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> TaskClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:  # fmt: skip
        await self.close()

    async def _call(self, call: Awaitable[_T]) -> _T:
        try:
            return await call
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    async def poll(
        self, namespace: str, queues: Sequence[str], worker_id: str, *, lease_ms: int = 0,
        wait_ms: int = 0,
    ) -> Task | None:  # fmt: skip
        """Lease a task of ``queues``, waiting up to ``wait_ms`` for one; None when none came.
        ``lease_ms`` 0 takes the engine's default lease."""
        request = worker_pb2.PollTaskRequest(
            namespace=namespace, queues=list(queues), worker_id=worker_id, lease_ms=lease_ms,
            wait_ms=wait_ms,
        )  # fmt: skip
        resp = await self._call(self._stub.PollTask(request, timeout=self.timeout + wait_ms / 1000))
        if not resp.HasField("task"):
            return None
        p = resp.task
        return Task(
            p.task_id, p.namespace, p.flow_id, p.step_id, p.attempt, p.queue, p.params_json,
            p.inputs_json, p.lease_token, p.idempotency_key,
        )  # fmt: skip

    async def complete(self, task: Task, outputs: Sequence[JsonValue]) -> bool:
        """Record ``outputs`` as the step's; True when this completion was already recorded.
        FailedPrecondition LEASE_LOST when another worker holds the task now."""
        request = worker_pb2.CompleteTaskRequest(
            namespace=task.namespace, flow_id=task.flow_id, task_id=task.task_id,
            lease_token=task.lease_token, outputs_json=[json.dumps(o) for o in outputs],
        )  # fmt: skip
        resp = await self._call(self._stub.CompleteTask(request, timeout=self.timeout))
        return resp.duplicate

    async def fail(self, task: Task, reason: str, error_type: str = "") -> bool:
        """Record the attempt's failure; True when the step will be attempted again."""
        request = worker_pb2.FailTaskRequest(
            namespace=task.namespace, flow_id=task.flow_id, task_id=task.task_id,
            lease_token=task.lease_token, reason=reason, error_type=error_type,
        )  # fmt: skip
        resp = await self._call(self._stub.FailTask(request, timeout=self.timeout))
        return resp.will_retry

    async def heartbeat(self, task: Task, worker_id: str, lease_ms: int = 0) -> None:
        """Renew the task's lease for ``lease_ms`` from now (0: the engine's default)."""
        request = worker_pb2.HeartbeatRequest(
            namespace=task.namespace, flow_id=task.flow_id, task_id=task.task_id,
            lease_token=task.lease_token, lease_ms=lease_ms, worker_id=worker_id,
        )  # fmt: skip
        await self._call(self._stub.Heartbeat(request, timeout=self.timeout))


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def is_lease_lost(exc: BaseException) -> bool:
    return isinstance(exc, FailedPrecondition) and exc.reason == LEASE_LOST


def is_dropped(exc: BaseException) -> bool:
    """The engine refused a result because the task is no longer this worker's: its lease was
    taken over, or the task ended meanwhile (timed out, or its flow was cancelled)."""
    return isinstance(exc, FailedPrecondition) and exc.reason in (LEASE_LOST, TASK_NOT_PENDING)


class TaskWorker:
    """Polls ``queues`` and runs ``handler`` on each task, ``concurrency`` at a time.

    ``stop()`` ends it gracefully: no new poll starts, a poll under way is answered (a task it
    brings is still handled, as it is leased to this worker) and running handlers finish and
    report. Transient errors (the engine restarting) are retried with backoff; others end it.
    """

    def __init__(
        self,
        address: str,
        namespace: str,
        queues: Sequence[str],
        handler: Handler,
        *,
        worker_id: str | None = None,
        lease_ms: int = 30_000,
        poll_wait_ms: int = 2_000,
        concurrency: int = 1,
        timeout: float = 30.0,
        credentials: grpc.ChannelCredentials | None = None,
        options: Iterable[tuple[str, Any]] = (),
    ) -> None:
        if lease_ms < MIN_LEASE_MS:
            raise ValueError(f"lease_ms must be at least {MIN_LEASE_MS}")
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.namespace = namespace
        self.queues = tuple(queues)
        self.worker_id = worker_id or default_worker_id()
        self.lease_ms = lease_ms
        self.poll_wait_ms = poll_wait_ms
        self.completed = 0
        self.failed = 0
        self.lost = 0  # tasks whose result the engine refused: taken over, timed out, cancelled
        self._handler = handler
        self._concurrency = concurrency
        self._client = TaskClient(address, timeout=timeout, credentials=credentials,
                                  options=options)  # fmt: skip
        self._stopping = asyncio.Event()
        self._running: asyncio.Task[None] | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Work until :meth:`stop`; closes the connection at the end."""
        try:
            await asyncio.gather(*(self._loop() for _ in range(self._concurrency)))
        finally:
            await self._client.close()

    def stop(self) -> None:
        """Ask the worker to stop (safe from a signal handler on the loop)."""
        self._stopping.set()

    async def stopped(self) -> None:
        """Wait until the worker has stopped (after :meth:`stop`, or a fatal error: raised)."""
        assert self._running is not None, "stopped() is for `async with worker`"
        await asyncio.shield(self._running)

    async def __aenter__(self) -> TaskWorker:
        self._running = asyncio.create_task(self.run(), name=f"task-worker-{self.worker_id}")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:  # fmt: skip
        self.stop()
        assert self._running is not None
        if exc is not None:  # the block's error matters more than the worker's
            with contextlib.suppress(Exception):
                await self._running
            return
        await self._running

    # -- the work ----------------------------------------------------------------------------

    async def _loop(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            try:
                task = await self._client.poll(
                    self.namespace, self.queues, self.worker_id, lease_ms=self.lease_ms,
                    wait_ms=self.poll_wait_ms,
                )  # fmt: skip
            except Unavailable as exc:
                failures += 1
                delay = min(0.1 * 2**failures, _BACKOFF_MAX_S)
                log.warning("poll failed (%s); again in %.1f s", exc.message, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)
                continue
            failures = 0
            if task is not None:
                await self.handle(task)

    async def handle(self, task: Task) -> None:
        """Run the handler on one leased task, renewing its lease, and report the outcome."""
        lost = asyncio.Event()
        work = asyncio.ensure_future(self._invoke(task))
        beat = asyncio.ensure_future(self._heartbeats(task, lost, work))
        try:
            outputs: list[JsonValue] | None = None
            error: BaseException | None = None
            try:
                outputs = await work
            except asyncio.CancelledError:
                if not lost.is_set():
                    raise
            except Exception as exc:  # the handler's failure is the task's outcome
                error = exc
        finally:
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat
        if lost.is_set():
            self.lost += 1
            log.warning("lease of task %s lost: its result is dropped", task.task_id)
            return
        try:
            if error is None:
                assert outputs is not None
                await self._report(lambda: self._client.complete(task, outputs))
                self.completed += 1
            else:
                reason = str(error) or type(error).__name__
                will_retry = await self._report(
                    lambda: self._client.fail(task, reason[:4096], type(error).__name__[:128])
                )
                self.failed += 1
                log.info("task %s failed (%s); retried: %s", task.task_id, reason, will_retry)
        except FlowledgerError as exc:
            if not is_dropped(exc):
                raise
            self.lost += 1
            log.warning("task %s was not ours any more: %s", task.task_id, exc.message)

    async def _invoke(self, task: Task) -> list[JsonValue]:
        if inspect.iscoroutinefunction(self._handler):
            result = await self._handler(task)
        else:
            result = await asyncio.to_thread(self._handler, task)
            if inspect.isawaitable(result):
                result = await result
        outputs = outputs_of(result)
        json.dumps(outputs)  # not JSON: a TypeError, reported as the task's failure
        return outputs

    async def _heartbeats(self, task: Task, lost: asyncio.Event, work: asyncio.Future[Any]) -> None:
        period = self.lease_ms / 3000
        while True:
            await asyncio.sleep(period)
            try:
                await self._client.heartbeat(task, self.worker_id, self.lease_ms)
            except Unavailable as exc:
                log.warning("heartbeat of task %s failed (%s)", task.task_id, exc.message)
            except FlowledgerError as exc:
                if not is_dropped(exc):
                    raise
                lost.set()
                work.cancel()  # a sync handler's thread runs on; its result is dropped
                return

    async def _report(self, call: Callable[[], Awaitable[_T]]) -> _T:
        """A completion or failure, retried while the engine is unreachable (it is idempotent
        under the task's token), for at most one lease period."""
        deadline = asyncio.get_running_loop().time() + self.lease_ms / 1000
        delay = 0.1
        while True:
            try:
                return await call()
            except Unavailable:
                if asyncio.get_running_loop().time() + delay > deadline:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, _BACKOFF_MAX_S)
