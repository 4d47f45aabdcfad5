"""The WorkerService over gRPC (protos/flowledger/v1/worker.proto): external step workers.

Validation, then :mod:`engine_service.run.tasks`; errors leave through the engine servicer's one
mapping seam (:func:`engine_service.api.engine_servicer.fail`). After a completion or failure this
replica runs the flow on at once (the flow is RUNNING and unleased), instead of waiting for a poll.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from engine_service.api.engine_servicer import Context, fail
from engine_service.run import tasks
from engine_service.run.engine import Engine
from engine_service.work.loop import WorkLoop
from flowledger.errors import InvalidArgument
from flowledger.v1 import worker_pb2, worker_pb2_grpc

SERVICE_NAME = worker_pb2.DESCRIPTOR.services_by_name["WorkerService"].full_name
_NAME = re.compile(r"[A-Za-z0-9._:-]{1,128}\Z")
_UUID = re.compile(r"[0-9a-fA-F-]{36}\Z")
MIN_LEASE_MS, MAX_LEASE_MS = 1000, 3_600_000

_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")


def _unary(
    fn: Callable[[WorkerServicer, _Req, Context], Awaitable[_Resp]],
) -> Callable[[WorkerServicer, _Req, Context], Coroutine[Any, Any, _Resp]]:
    @functools.wraps(fn)
    async def wrapper(self: WorkerServicer, request: _Req, context: Context) -> _Resp:
        try:
            return await fn(self, request, context)
        except Exception as exc:
            await fail(context, fn.__name__, exc)
            raise AssertionError("unreachable: fail aborts") from exc

    return wrapper


class WorkerServicer(worker_pb2_grpc.WorkerServiceServicer):
    def __init__(self, engine: Engine, worker: WorkLoop | None, default_lease_ms: int) -> None:
        self._engine = engine
        self._worker = worker
        self._default_lease_ms = default_lease_ms

    @_unary
    async def PollTask(
        self, request: worker_pb2.PollTaskRequest, context: Context
    ) -> worker_pb2.PollTaskResponse:
        _namespace(request.namespace)
        if not request.queues:
            raise InvalidArgument.field("queues", "name at least one queue")
        for i, queue in enumerate(request.queues):
            if not _NAME.match(queue):
                raise InvalidArgument.field(
                    f"queues[{i}]", "must be 1..128 characters of letters, digits and . _ : -"
                )
        _worker_id(request.worker_id)
        task = await tasks.poll(
            self._engine, request.namespace, tuple(request.queues), request.worker_id,
            self._lease_ms(request.lease_ms), request.wait_ms,
            self._worker.task_bell if self._worker is not None else None,
        )  # fmt: skip
        if task is None:
            return worker_pb2.PollTaskResponse()
        return worker_pb2.PollTaskResponse(
            task=worker_pb2.Task(
                task_id=task.task_id, namespace=task.namespace, flow_id=task.flow_id,
                step_id=task.step_id, attempt=task.attempt, queue=task.queue,
                params_json=task.params_json, inputs_json=task.inputs_json,
                lease_token=task.lease_token, idempotency_key=task.idempotency_key,
            )
        )  # fmt: skip

    @_unary
    async def CompleteTask(
        self, request: worker_pb2.CompleteTaskRequest, context: Context
    ) -> worker_pb2.CompleteTaskResponse:
        _task_ref(request.namespace, request.flow_id, request.task_id)
        duplicate = await tasks.complete(
            self._engine, request.namespace, request.flow_id, request.task_id,
            request.lease_token, tuple(request.outputs_json),
        )  # fmt: skip
        await self._resume(request.namespace, request.flow_id)
        return worker_pb2.CompleteTaskResponse(duplicate=duplicate)

    @_unary
    async def FailTask(
        self, request: worker_pb2.FailTaskRequest, context: Context
    ) -> worker_pb2.FailTaskResponse:
        _task_ref(request.namespace, request.flow_id, request.task_id)
        will_retry = await tasks.fail(
            self._engine, request.namespace, request.flow_id, request.task_id,
            request.lease_token, request.reason, request.error_type or "TaskFailed",
        )  # fmt: skip
        await self._resume(request.namespace, request.flow_id)
        return worker_pb2.FailTaskResponse(will_retry=will_retry)

    @_unary
    async def Heartbeat(
        self, request: worker_pb2.HeartbeatRequest, context: Context
    ) -> worker_pb2.HeartbeatResponse:
        _task_ref(request.namespace, request.flow_id, request.task_id)
        _worker_id(request.worker_id)
        await tasks.heartbeat(
            self._engine, request.namespace, request.flow_id, request.worker_id,
            request.lease_token, self._lease_ms(request.lease_ms),
        )  # fmt: skip
        return worker_pb2.HeartbeatResponse()

    def _lease_ms(self, lease_ms: int) -> int:
        if lease_ms == 0:
            return self._default_lease_ms
        if not MIN_LEASE_MS <= lease_ms <= MAX_LEASE_MS:
            raise InvalidArgument.field("lease_ms", f"must be {MIN_LEASE_MS}..{MAX_LEASE_MS}")
        return lease_ms

    async def _resume(self, namespace: str, flow_id: str) -> None:
        if self._worker is not None:
            await self._worker.run_now(namespace, flow_id)


def _namespace(namespace: str) -> None:
    if not 1 <= len(namespace) <= 128:
        raise InvalidArgument.field("namespace", "must be 1..128 characters")


def _worker_id(worker_id: str) -> None:
    if not 1 <= len(worker_id) <= 128:
        raise InvalidArgument.field("worker_id", "must be 1..128 characters")


def _task_ref(namespace: str, flow_id: str, task_id: str) -> None:
    _namespace(namespace)
    if not _UUID.match(flow_id):
        raise InvalidArgument.field("flow_id", "must be a UUID")
    if not task_id.startswith(flow_id.lower() + ":") and not task_id.startswith(flow_id + ":"):
        raise InvalidArgument.field("task_id", "must be a task id of this flow (from PollTask)")
