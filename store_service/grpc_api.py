"""The StoreService over gRPC: validate → convert → call the port → convert back.

Errors leave through one place, :mod:`flowledger_core.server.handlers` (shared with the engine): a
:class:`~flowledger.errors.FlowledgerError` becomes its rich status; anything else is logged and
answered INTERNAL with a generic message (internals are not leaked to callers).

Streams are split by events per message (the request's chunk size) *and* by bytes, so no message
passes the configured maximum whatever the payloads. A client that cancels a stream cancels the
handler at its next ``yield``; the backend iterator is closed on the way out. Subscribe streams,
which never end by themselves, end with UNAVAILABLE (``SHUTTING_DOWN``) when the server drains,
so that clients resume from their cursor on another replica instead of holding up the shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable
from typing import TypeVar

from google.protobuf.message import Message

from flowledger.errors import Unavailable
from flowledger.v1 import store_pb2, store_pb2_grpc
from flowledger_core.ports import EventStore
from flowledger_core.server.handlers import Context, closing, fail, stream, unary
from flowledger_core.wire import store as convert
from flowledger_core.wire import store_work as convert_work
from store_service import validation, validation_history, validation_work
from store_service.append_stream import AppendStreamSession
from store_service.settings import Limits

SERVICE_NAME = store_pb2.DESCRIPTOR.services_by_name["StoreService"].full_name

_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")
_Item = TypeVar("_Item")
_M = TypeVar("_M", bound=Message)


# Contract RPCs this servicer does not override (the generated base answers UNIMPLEMENTED). The
# bad-input test suite requires a case for every RPC not listed here.
NOT_YET_SERVED: frozenset[str] = frozenset()


def split_by_size(
    items: Iterable[_M], max_items: int, max_bytes: int
) -> Iterable[list[_M]]:
    """Group messages (of one ``repeated`` field) so that each group has at most ``max_items``
    and its encoding at most ``max_bytes``; an item is never split."""
    group: list[_M] = []
    size = 0
    for item in items:
        # A repeated message field costs a 1-byte tag, the length varint and the message.
        item_size = item.ByteSize()
        cost = 1 + _varint_len(item_size) + item_size
        if group and (len(group) >= max_items or size + cost > max_bytes):
            yield group
            group, size = [], 0
        group.append(item)
        size += cost
    if group:
        yield group


def _varint_len(n: int) -> int:
    return max(1, (n.bit_length() + 6) // 7)


class StoreServicer(store_pb2_grpc.StoreServiceServicer):
    """Serves an :class:`~flowledger_core.ports.EventStore`; the store may be attached later, so
    the server can answer health checks (NOT_SERVING) while the backend starts."""

    def __init__(self, store: EventStore | None, limits: Limits) -> None:
        self._store = store
        self.limits = limits
        self._draining = asyncio.Event()
        # Headroom for the response envelope around the repeated field.
        self._stream_budget = limits.max_message_bytes - 1024

    def attach(self, store: EventStore) -> None:
        self._store = store

    def drain(self) -> None:
        """End open subscriptions (UNAVAILABLE) and refuse new ones: the server is stopping.
        Append streams answer what they received, then end the same way."""
        self._draining.set()

    @property
    def draining(self) -> bool:
        return self._draining.is_set()

    async def drained(self) -> None:
        """Return once :meth:`drain` was called."""
        await self._draining.wait()

    @property
    def store(self) -> EventStore:
        if self._store is None:
            raise Unavailable("the store is starting; retry shortly", reason="STARTING")
        return self._store

    # -- flows -------------------------------------------------------------------------------

    @unary("store")
    async def CreateFlow(
        self, request: store_pb2.CreateFlowRequest, context: Context
    ) -> store_pb2.CreateFlowResponse:
        validation.check_create_flow(request, self.limits)
        new = convert.new_flow(request)
        initial = convert.initial_append(request)
        if not request.lease_owner and initial is None:
            flow, existed = await self.store.create_flow(new)
            return convert.create_flow_response(flow, existed)
        lease = (request.lease_owner, request.lease_ms) if request.lease_owner else None
        created = await self.store.create_flow_with(new, lease=lease, initial=initial)
        response = convert.create_flow_response(created.flow, created.existed)
        if created.lease is not None:
            response.lease.CopyFrom(convert_work.flow_lease_to_pb(created.lease))
        if created.initial is not None:
            response.initial_append.CopyFrom(convert.append_response(created.initial))
        return response

    @unary("store")
    async def GetFlow(
        self, request: store_pb2.GetFlowRequest, context: Context
    ) -> store_pb2.GetFlowResponse:
        validation.check_get_flow(request, self.limits)
        flow = await self.store.get_flow(
            request.namespace, request.flow_id, request.include_deleted
        )
        return convert.get_flow_response(flow)

    @unary("store")
    async def ListFlows(
        self, request: store_pb2.ListFlowsRequest, context: Context
    ) -> store_pb2.ListFlowsResponse:
        validation.check_list_flows(request, self.limits)
        flt, page = convert.flow_query(request)
        return convert.list_flows_response(await self.store.list_flows(flt, page))

    # -- the log -----------------------------------------------------------------------------

    @unary("store")
    async def AppendEvents(
        self, request: store_pb2.AppendEventsRequest, context: Context
    ) -> store_pb2.AppendEventsResponse:
        validation.check_append_events(request, self.limits)
        result = await self.store.append(convert.append(request))
        return convert.append_response(result)

    # Reader/writer style (a coroutine, not an async generator): answers are written as their
    # commands complete, by whichever command task is free to write; see append_stream.
    async def AppendStream(  # type: ignore[override]
        self,
        request_iterator: AsyncIterator[store_pb2.AppendStreamRequest],
        context: Context,
    ) -> None:
        try:
            await AppendStreamSession(self, context).run()
        except Exception as exc:
            await fail(context, "store", "AppendStream", exc)

    @stream("store")
    async def ReadEvents(
        self, request: store_pb2.ReadEventsRequest, context: Context
    ) -> AsyncIterator[store_pb2.ReadEventsResponse]:
        validation.check_read_events(request, self.limits)
        chunk_size = convert.read_chunk_size(request)
        chunks = self.store.read_events(
            request.namespace, request.flow_id, request.after_version, request.to_version,
            chunk_size,
        )
        async with closing(chunks):
            async for chunk in chunks:
                for response in convert.read_events_responses(
                    chunk, chunk_size, self._stream_budget
                ):
                    yield response

    @unary("store")
    async def CountSteps(
        self, request: store_pb2.CountStepsRequest, context: Context
    ) -> store_pb2.CountStepsResponse:
        validation.check_count_steps(request, self.limits)
        counts = await self.store.count_steps(request.namespace, request.flow_id)
        return convert.count_steps_response(counts)

    @stream("store")
    async def Subscribe(
        self, request: store_pb2.SubscribeRequest, context: Context
    ) -> AsyncIterator[store_pb2.SubscribeResponse]:
        validation.check_subscribe(request, self.limits)
        if self._draining.is_set():
            raise Unavailable("the store is shutting down; subscribe to another replica",
                              reason="SHUTTING_DOWN")
        chunk_size = convert.subscribe_chunk_size(request)
        chunks = self.store.subscribe(
            request.namespace, request.after_cursor, convert.subscribe_types(request), chunk_size
        )
        async with closing(chunks):
            async for chunk in self._until_drained(chunks):
                items = (convert.feed_event_to_pb(e) for e in chunk)
                for group in split_by_size(items, chunk_size, self._stream_budget):
                    yield convert.subscribe_response(group)

    async def _until_drained(self, chunks: AsyncIterator[_Item]) -> AsyncIterator[_Item]:
        """``chunks`` until the server drains; then UNAVAILABLE, so the client resumes elsewhere.

        Each step runs as its own task so that a drain can interrupt a subscription that is
        waiting for new events.
        """
        drained = asyncio.ensure_future(self._draining.wait())
        following: asyncio.Future[_Item] | None = None
        try:
            while True:
                following = asyncio.ensure_future(anext(chunks))
                await asyncio.wait((following, drained), return_when=asyncio.FIRST_COMPLETED)
                if not following.done():
                    raise Unavailable(
                        "the store is shutting down; resume from the last cursor received",
                        reason="SHUTTING_DOWN",
                    )
                try:
                    chunk = following.result()
                except StopAsyncIteration:
                    return
                following = None
                yield chunk
        finally:
            drained.cancel()
            if following is not None and not following.done():
                following.cancel()
                with contextlib.suppress(BaseException):
                    await following

    @unary("store")
    async def GetArtifacts(
        self, request: store_pb2.GetArtifactsRequest, context: Context
    ) -> store_pb2.GetArtifactsResponse:
        validation.check_get_artifacts(request, self.limits)
        lookup = await self.store.get_artifacts(request.namespace, list(request.hashes))
        return convert.get_artifacts_response(lookup)

    # -- branches, prunes, snapshots ---------------------------------------------------------

    @unary("store")
    async def CreateBranch(
        self, request: store_pb2.CreateBranchRequest, context: Context
    ) -> store_pb2.CreateBranchResponse:
        validation_history.check_create_branch(request, self.limits)
        flow, existed = await self.store.create_branch(convert.new_branch(request))
        return convert.create_branch_response(flow, existed)

    @unary("store")
    async def DeleteBranch(
        self, request: store_pb2.DeleteBranchRequest, context: Context
    ) -> store_pb2.DeleteBranchResponse:
        validation_history.check_delete_branch(request, self.limits)
        flow = await self.store.delete_branch(
            request.namespace, request.flow_id, request.deleted_by, request.reason
        )
        return convert.delete_branch_response(flow)

    @unary("store")
    async def PruneFlow(
        self, request: store_pb2.PruneFlowRequest, context: Context
    ) -> store_pb2.PruneFlowResponse:
        validation_history.check_prune_flow(request, self.limits)
        flow, duplicate = await self.store.prune(convert.prune(request))
        return convert.prune_response(flow, duplicate)

    @unary("store")
    async def SaveSnapshot(
        self, request: store_pb2.SaveSnapshotRequest, context: Context
    ) -> store_pb2.SaveSnapshotResponse:
        validation_history.check_save_snapshot(request, self.limits)
        await self.store.save_snapshot(
            request.namespace, request.flow_id, request.version, request.state_json
        )
        return store_pb2.SaveSnapshotResponse()

    @unary("store")
    async def LoadSnapshot(
        self, request: store_pb2.LoadSnapshotRequest, context: Context
    ) -> store_pb2.LoadSnapshotResponse:
        validation_history.check_load_snapshot(request, self.limits)
        snapshot = await self.store.load_snapshot(
            request.namespace, request.flow_id, request.max_version
        )
        return convert.load_snapshot_response(snapshot)

    # -- versioned definitions ---------------------------------------------------------------

    @unary("store")
    async def PutDefinitionVersion(
        self, request: store_pb2.PutDefinitionVersionRequest, context: Context
    ) -> store_pb2.PutDefinitionVersionResponse:
        validation_work.check_put_definition_version(request, self.limits)
        stored, existed = await self.store.put_definition_version(
            convert_work.new_definition_version(request)
        )
        return convert_work.put_definition_version_response(stored, existed)

    @unary("store")
    async def GetStoredDefinitionVersion(
        self, request: store_pb2.GetStoredDefinitionVersionRequest, context: Context
    ) -> store_pb2.GetStoredDefinitionVersionResponse:
        validation_work.check_get_stored_definition_version(request, self.limits)
        stored = await self.store.get_definition_version(
            request.namespace, request.name, request.version
        )
        return convert_work.get_definition_version_response(stored)

    @unary("store")
    async def ListStoredDefinitionVersions(
        self, request: store_pb2.ListStoredDefinitionVersionsRequest, context: Context
    ) -> store_pb2.ListStoredDefinitionVersionsResponse:
        validation_work.check_list_stored_definition_versions(request, self.limits)
        name, page = convert_work.definition_query(request)
        listed = await self.store.list_definition_versions(request.namespace, name, page)
        return convert_work.list_definition_versions_response(listed)

    @unary("store")
    async def TransitionDefinitionVersion(
        self, request: store_pb2.TransitionDefinitionVersionRequest, context: Context
    ) -> store_pb2.TransitionDefinitionVersionResponse:
        validation_work.check_transition_definition_version(request, self.limits)
        stored = await self.store.transition_definition_version(
            convert_work.definition_transition(request)
        )
        return convert_work.transition_response(stored)

    # -- work leases -------------------------------------------------------------------------

    @unary("store")
    async def ClaimFlows(
        self, request: store_pb2.ClaimFlowsRequest, context: Context
    ) -> store_pb2.ClaimFlowsResponse:
        validation_work.check_claim_flows(request, self.limits)
        leases = await self.store.claim_flows(convert_work.claim_request(request))
        return convert_work.claim_flows_response(leases)

    @unary("store")
    async def RenewLease(
        self, request: store_pb2.RenewLeaseRequest, context: Context
    ) -> store_pb2.RenewLeaseResponse:
        validation_work.check_renew_lease(request, self.limits)
        lease = await self.store.renew_lease(
            request.namespace, request.flow_id, request.owner, request.fencing_token,
            request.lease_ms,
        )
        return convert_work.renew_lease_response(lease)

    @unary("store")
    async def ReleaseLease(
        self, request: store_pb2.ReleaseLeaseRequest, context: Context
    ) -> store_pb2.ReleaseLeaseResponse:
        validation_work.check_release_lease(request, self.limits)
        released = await self.store.release_lease(
            request.namespace, request.flow_id, request.fencing_token
        )
        return store_pb2.ReleaseLeaseResponse(released=released)

    # -- the store's limits ------------------------------------------------------------------

    @unary("store")
    async def GetLimits(
        self, request: store_pb2.GetLimitsRequest, context: Context
    ) -> store_pb2.GetLimitsResponse:
        # From the settings, not the backend: answered while the backend is still starting.
        validation.check_get_limits(request, self.limits)
        return convert.limits_response(self.limits)
