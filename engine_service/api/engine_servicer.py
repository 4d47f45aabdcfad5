"""The EngineService over gRPC: validate → convert → call the API layer → convert back.

Errors leave through one place, :func:`fail`: a :class:`~flowledger.errors.FlowledgerError`
(the store's errors arrive as the same classes through the store client) becomes its rich status
through :func:`flowledger.rpc_status.abort`; anything else is logged and answered INTERNAL with a
generic message. A request is validated whole before anything is written, so a failed call
writes nothing; against the store's configured limits, asked once (``LimitsSource``).

WatchFlow streams end with UNAVAILABLE (reason SHUTTING_DOWN, metadata ``after_version``) when
the server drains, so clients resume on another replica instead of holding up the shutdown.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, TypeAlias, TypeVar

import grpc
import grpc.aio

from engine_service.api import convert, validation
from engine_service.api.definitions import Definitions
from engine_service.api.flows import Flows
from engine_service.api.watch import follow_flow
from engine_service.work.notifier import FlowNotifier
from flowledger import rpc_status
from flowledger.canonical import parse_json
from flowledger.errors import FlowledgerError, InternalError
from flowledger.v1 import engine_pb2, engine_pb2_grpc
from flowledger_core.limits import Limits
from flowledger_core.ports import EventStore

log = logging.getLogger("engine_service.grpc")

SERVICE_NAME = engine_pb2.DESCRIPTOR.services_by_name["EngineService"].full_name

Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]
# The store's limits, for validation (engine_service.store_client.limits.StoreLimits.get).
LimitsSource: TypeAlias = Callable[[], Awaitable[Limits]]
_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")

async def fail(context: Context, method: str, exc: Exception) -> None:
    """The one place where an exception becomes the call's status."""
    if isinstance(exc, grpc.aio.AbortError):
        raise exc  # already a status
    if not isinstance(exc, FlowledgerError):
        log.exception("unexpected error in %s", method, exc_info=exc)
        exc = InternalError(f"internal error in the engine while handling {method}; it was logged")
    elif isinstance(exc, InternalError):
        log.error("%s failed: %s", method, exc.message)
    await rpc_status.abort(context, exc)


def _unary(
    fn: Callable[[EngineServicer, _Req, Context], Awaitable[_Resp]],
) -> Callable[[EngineServicer, _Req, Context], Coroutine[Any, Any, _Resp]]:
    @functools.wraps(fn)
    async def wrapper(self: EngineServicer, request: _Req, context: Context) -> _Resp:
        try:
            return await fn(self, request, context)
        except Exception as exc:
            await fail(context, fn.__name__, exc)
            raise AssertionError("unreachable: fail aborts") from exc

    return wrapper


def _stream(
    fn: Callable[[EngineServicer, _Req, Context], AsyncIterator[_Resp]],
) -> Callable[[EngineServicer, _Req, Context], AsyncIterator[_Resp]]:
    @functools.wraps(fn)
    async def wrapper(
        self: EngineServicer, request: _Req, context: Context
    ) -> AsyncIterator[_Resp]:
        responses = fn(self, request, context)
        try:
            async for response in responses:
                yield response
        except Exception as exc:
            await fail(context, fn.__name__, exc)
        finally:
            await responses.aclose()  # type: ignore[attr-defined]

    return wrapper


class EngineServicer(engine_pb2_grpc.EngineServiceServicer):
    def __init__(
        self,
        store: EventStore,
        definitions: Definitions,
        flows: Flows,
        notifier: FlowNotifier,
        limits: LimitsSource,
        messages: convert.EventMessages | None = None,
    ) -> None:
        """``limits``: the store's request limits, which every request is validated against
        (awaited per request: known after the store first answered GetLimits). ``messages``:
        the store's event messages, when the store is reached over gRPC, so that WatchFlow
        forwards what it reads instead of decoding and encoding it back."""
        self._store = store
        self._limits = limits
        self._definitions = definitions
        self._flows = flows
        self._notifier = notifier
        self._watch_form = convert.message_form(store, messages)
        self._draining = asyncio.Event()

    def drain(self) -> None:
        """End open WatchFlow streams (UNAVAILABLE) and refuse new ones: the server is stopping."""
        self._draining.set()

    # -- definitions -------------------------------------------------------------------------

    @_unary
    async def CreateDefinitionVersion(
        self, request: engine_pb2.CreateDefinitionVersionRequest, context: Context
    ) -> engine_pb2.CreateDefinitionVersionResponse:
        limits = await self._limits()
        validation.check_create_definition_version(request, limits)
        stored, existed = await self._definitions.create(
            request.namespace,
            request.name,
            request.document,
            convert.document_format(request.format),
            change_note=request.change_note,
            created_by=request.created_by,
            request_id=request.request_id or None,
        )
        return convert.create_definition_response(stored, existed)

    @_unary
    async def PublishDefinitionVersion(
        self, request: engine_pb2.PublishDefinitionVersionRequest, context: Context
    ) -> engine_pb2.PublishDefinitionVersionResponse:
        limits = await self._limits()
        validation.check_definition_change(request, limits, "PublishDefinitionVersion")
        stored = await self._definitions.publish(convert.definition_change(request))
        return engine_pb2.PublishDefinitionVersionResponse(
            version=convert.definition_to_pb(stored)
        )

    @_unary
    async def ArchiveDefinitionVersion(
        self, request: engine_pb2.ArchiveDefinitionVersionRequest, context: Context
    ) -> engine_pb2.ArchiveDefinitionVersionResponse:
        limits = await self._limits()
        validation.check_definition_change(request, limits, "ArchiveDefinitionVersion")
        stored = await self._definitions.archive(convert.definition_change(request))
        return engine_pb2.ArchiveDefinitionVersionResponse(
            version=convert.definition_to_pb(stored)
        )

    @_unary
    async def RollbackDefinition(
        self, request: engine_pb2.RollbackDefinitionRequest, context: Context
    ) -> engine_pb2.RollbackDefinitionResponse:
        limits = await self._limits()
        validation.check_definition_change(request, limits, "RollbackDefinition")
        stored = await self._definitions.rollback(convert.definition_change(request))
        return engine_pb2.RollbackDefinitionResponse(version=convert.definition_to_pb(stored))

    @_unary
    async def GetDefinitionVersion(
        self, request: engine_pb2.GetDefinitionVersionRequest, context: Context
    ) -> engine_pb2.GetDefinitionVersionResponse:
        limits = await self._limits()
        validation.check_get_definition_version(request, limits)
        stored = await self._definitions.get(request.namespace, request.name, request.version)
        return engine_pb2.GetDefinitionVersionResponse(version=convert.definition_to_pb(stored))

    @_unary
    async def ListDefinitions(
        self, request: engine_pb2.ListDefinitionsRequest, context: Context
    ) -> engine_pb2.ListDefinitionsResponse:
        limits = await self._limits()
        validation.check_list_definitions(request, limits)
        result = await self._definitions.list(
            request.namespace,
            request.name or None,
            convert.page(request.page_size, request.page_token),
        )
        return convert.list_definitions_response(result)

    # -- flows -------------------------------------------------------------------------------

    @_unary
    async def StartFlow(
        self, request: engine_pb2.StartFlowRequest, context: Context
    ) -> engine_pb2.StartFlowResponse:
        limits = await self._limits()
        flow_input = validation.check_start_flow(request, limits)
        flow_id, existed = await self._flows.start(convert.start_request(request, flow_input))
        return engine_pb2.StartFlowResponse(flow_id=flow_id, existed=existed)

    @_unary
    async def DescribeFlow(
        self, request: engine_pb2.DescribeFlowRequest, context: Context
    ) -> engine_pb2.DescribeFlowResponse:
        limits = await self._limits()
        validation.check_flow_ref(request, limits, "DescribeFlow")
        view = await self._flows.describe(request.namespace, request.flow_id)
        return engine_pb2.DescribeFlowResponse(flow=convert.flow_view_to_pb(view))

    @_unary
    async def ListFlowRuns(
        self, request: engine_pb2.ListFlowRunsRequest, context: Context
    ) -> engine_pb2.ListFlowRunsResponse:
        limits = await self._limits()
        validation.check_list_flow_runs(request, limits)
        result = await self._flows.list(
            convert.flow_filter(request), convert.page(request.page_size, request.page_token)
        )
        return convert.list_flow_runs_response(result)

    @_stream
    async def WatchFlow(
        self, request: engine_pb2.WatchFlowRequest, context: Context
    ) -> AsyncIterator[engine_pb2.WatchFlowResponse]:
        limits = await self._limits()
        validation.check_watch_flow(request, limits)
        batches = follow_flow(
            self._watch_form, self._store, self._notifier, request.namespace,
            request.flow_id, request.after_version, self._draining, convert.close_only(request),
        )
        try:
            async for batch in batches:
                yield convert.watch_response(batch)
        finally:
            await batches.aclose()  # type: ignore[attr-defined]

    @_unary
    async def FetchArtifacts(
        self, request: engine_pb2.FetchArtifactsRequest, context: Context
    ) -> engine_pb2.FetchArtifactsResponse:
        limits = await self._limits()
        validation.check_fetch_artifacts(request, limits)
        lookup = await self._flows.fetch_artifacts(
            request.namespace, convert.hashes(request.hashes)
        )
        return convert.fetch_artifacts_response(lookup)

    @_unary
    async def BranchFlow(
        self, request: engine_pb2.BranchFlowRequest, context: Context
    ) -> engine_pb2.BranchFlowResponse:
        limits = await self._limits()
        validation.check_branch_flow(request, limits)
        flow_id, existed = await self._flows.branch(convert.branch_request(request))
        return engine_pb2.BranchFlowResponse(flow_id=flow_id, existed=existed)

    @_unary
    async def VerifyFlow(
        self, request: engine_pb2.VerifyFlowRequest, context: Context
    ) -> engine_pb2.VerifyFlowResponse:
        limits = await self._limits()
        validation.check_flow_ref(request, limits, "VerifyFlow")
        report = await self._flows.verify(request.namespace, request.flow_id)
        return convert.verify_response(report)

    @_unary
    async def SignalFlow(
        self, request: engine_pb2.SignalFlowRequest, context: Context
    ) -> engine_pb2.SignalFlowResponse:
        limits = await self._limits()
        validation.check_signal_flow(request, limits)
        payload = parse_json(request.payload_json) if request.payload_json else None
        result = await self._flows.signal(
            request.namespace, request.flow_id, request.name, payload, request.request_id,
            request.sent_by,
        )  # fmt: skip
        return engine_pb2.SignalFlowResponse(
            version=result.version, duplicate=result.duplicate, resumed=result.resumed
        )

    @_unary
    async def CancelFlow(
        self, request: engine_pb2.CancelFlowRequest, context: Context
    ) -> engine_pb2.CancelFlowResponse:
        limits = await self._limits()
        validation.check_cancel_flow(request, limits)
        result = await self._flows.cancel(
            request.namespace, request.flow_id, request.reason, request.cancelled_by
        )
        return engine_pb2.CancelFlowResponse(version=result.version, already=result.already)

    @_unary
    async def TerminateFlow(
        self, request: engine_pb2.TerminateFlowRequest, context: Context
    ) -> engine_pb2.TerminateFlowResponse:
        limits = await self._limits()
        validation.check_terminate_flow(request, limits)
        result = await self._flows.terminate(
            request.namespace, request.flow_id, request.reason, request.terminated_by
        )
        return engine_pb2.TerminateFlowResponse(version=result.version, already=result.already)
