"""The store port over gRPC: the engine runs on the real store exactly as on the in-memory one.

What is retried where (transient = UNAVAILABLE or DEADLINE_EXCEEDED, see
:mod:`engine_service.store_client.retry`):

* **gRPC's retry policy** (service config, :mod:`engine_service.store_client.channel`) re-sends an
  attempt that failed UNAVAILABLE before any response arrived, quickly and within that attempt's
  deadline.
* **This module** gives every unary attempt a deadline (``call_timeout``, waiting for the channel
  to be ready meanwhile) and repeats transient failures with jittered exponential backoff until
  ``retry_budget`` is spent, then raises ``Unavailable``. Both layers may repeat a write that was
  in fact applied; that is safe because appends and prunes carry command ids, and a flow or branch
  created without an id gets a uuid4 here, before the first attempt, so a repeat is answered as
  the same create. A definition version put without a ``request_id`` gets one here for the same
  reason. Conflicts (``VersionConflict``) and every other error are raised at once.
* **Appends** go over one shared AppendStream (:mod:`engine_service.store_client.append_stream`)
with
  the same deadlines, budget and error mapping; a broken stream fails its pending appends
  (UNAVAILABLE: retried with the same command id) and the next append opens a new one.
  ``append_stream=False``, or a store that does not serve the stream, sends AppendEvents calls.
* **Leases**: RenewLease and ReleaseLease are safe to repeat. ClaimFlows is *not*: when a claim
  was applied but its response lost, the repeat claims other flows and the lost claim's leases
  stay held, unused, until they expire. That delays those flows by one lease term at most and
  never lets two replicas run one flow, so it is accepted. (A repeated re-publish, PUBLISHED
  among ``from_states``, may record the publication twice in the version's history.)
* **Streams** resume instead of restarting: ReadEvents after the last version it delivered,
  Subscribe after the last cursor it delivered, so the consumer sees no gap and no duplicate.
  ReadEvents has an idle deadline (``call_timeout`` without a message ends the attempt, which
  then resumes). Subscribe has none, since a live feed may rightly stay silent for hours; HTTP/2
  keepalive pings detect a dead connection under it; a draining store ends it UNAVAILABLE and it
  resumes on another replica. A stream's budget bounds one outage: it restarts whenever the
  stream delivers again (or stayed up for ``call_timeout``). Closing the iterator (``aclose``,
  or cancelling the consuming task) cancels the RPC; :meth:`GrpcEventStore.close` ends open
  subscriptions (where closing a backend fails them ``Unavailable``).
* **Port values the wire cannot carry** (an empty string or zero meaning "not set" there, a
  flow id in a non-canonical form) are canonicalised or refused first, as the backends do
  (:mod:`engine_service.store_client.port`).

* **GetLimits** is a unary call like the others (:meth:`GrpcEventStore.get_limits`), asked
  once per replica by :mod:`engine_service.store_client.limits`.

Every ``grpc.RpcError`` becomes a :mod:`flowledger.errors` class through
:func:`flowledger.rpc_status.from_rpc_error`; protobuf types stay inside this module and
:mod:`flowledger_core.wire.store`, except the event messages of
:meth:`GrpcEventStore.read_event_messages`, which WatchFlow forwards as the store sent them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import replace
from typing import TypeVar

import grpc
import grpc.aio

from engine_service.store_client.append_stream import AppendStreams
from engine_service.store_client.channel import ChannelOptions, open_channel
from engine_service.store_client.port import check_append, check_page, wire_uuid
from engine_service.store_client.retry import RetryBudget, StoreClientSettings, is_transient
from engine_service.store_client.work_calls import WorkCalls
from flowledger.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    FlowledgerError,
    InternalError,
    Unavailable,
)
from flowledger.rpc_status import from_rpc_error
from flowledger.v1 import common_pb2, store_pb2, store_pb2_grpc
from flowledger_core.domain import (
    Append,
    AppendResult,
    ArtifactLookup,
    CreatedFlow,
    EventType,
    FeedEvent,
    Flow,
    FlowFilter,
    FlowPage,
    NewBranch,
    NewFlow,
    Page,
    Prune,
    Snapshot,
    StepCounts,
    StoredEvent,
)
from flowledger_core.limits import Limits
from flowledger_core.server.interceptors import client_interceptors
from flowledger_core.wire import store_client as wire
from flowledger_core.wire import store_work as work_wire

_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")


class GrpcEventStore(WorkCalls):
    """:class:`flowledger_core.ports.EventStore` served by the store service at ``address``."""

    def __init__(
        self,
        address: str,
        settings: StoreClientSettings | None = None,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        options: ChannelOptions = (),
        interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
        append_stream: bool = True,
    ) -> None:
        self.settings = settings or StoreClientSettings()
        self._channel = open_channel(
            address,
            self.settings,
            credentials=credentials,
            options=options,
            # grpc_client_* metrics (go-grpc-prometheus names) for every attempt.
            interceptors=[*client_interceptors(), *interceptors],
        )
        self._stub = store_pb2_grpc.StoreServiceStub(self._channel)
        self._closed = False
        # Appends over one shared AppendStream (a fraction of a unary call's CPU on both ends);
        # False sends each append as its own AppendEvents call.
        self._appends = AppendStreams(self._stub, self.settings) if append_stream else None

    @property
    def closed(self) -> bool:
        return self._closed

    async def close(self) -> None:
        """Close the channel: calls in flight fail, open subscriptions end."""
        self._closed = True
        if self._appends is not None:
            await self._appends.close()
        await self._channel.close()

    # -- flows -------------------------------------------------------------------------------

    async def create_flow(self, new: NewFlow) -> tuple[Flow, bool]:
        chosen_here = not new.flow_id
        flow_id = str(uuid.uuid4()) if chosen_here else wire_uuid(new.flow_id or "")
        new = replace(new, flow_id=flow_id)
        resp = await self._unary(
            "CreateFlow", self._stub.CreateFlow, wire.create_flow_request(new)
        )
        # An id of our own making can only exist because an earlier attempt of this very call
        # created it (its response was lost): to the caller that is a creation.
        return wire.flow_from_pb(resp.flow), resp.existed and not chosen_here

    async def create_flow_with(
        self,
        new: NewFlow,
        *,
        lease: tuple[str, int] | None = None,
        initial: Append | None = None,
    ) -> CreatedFlow:
        chosen_here = not new.flow_id  # as create_flow: the id is fixed before any attempt
        flow_id = str(uuid.uuid4()) if chosen_here else wire_uuid(new.flow_id or "")
        new = replace(new, flow_id=flow_id)
        request = wire.create_flow_request(new)
        if lease is not None:
            request.lease_owner, request.lease_ms = lease
        if initial is not None:
            check_append(initial, prefix="initial_append.")
            request.initial_append.CopyFrom(wire.append_request(initial))
        resp = await self._unary("CreateFlow", self._stub.CreateFlow, request)
        # A repeat after a lost answer finds the flow existing (leased and initialized by our
        # first attempt, under a token we never saw): it runs once that lease expires.
        return CreatedFlow(
            wire.flow_from_pb(resp.flow),
            resp.existed and not chosen_here,
            work_wire.flow_lease_from_pb(resp.lease) if resp.HasField("lease") else None,
            wire.append_result(resp.initial_append) if resp.HasField("initial_append") else None,
        )

    async def get_flow(self, namespace: str, flow_id: str, include_deleted: bool = False) -> Flow:
        request = store_pb2.GetFlowRequest(
            namespace=namespace, flow_id=flow_id, include_deleted=include_deleted
        )
        resp = await self._unary("GetFlow", self._stub.GetFlow, request)
        return wire.flow_from_pb(resp.flow)

    async def list_flows(self, flt: FlowFilter, page: Page) -> FlowPage:
        check_page(page)
        request = wire.list_flows_request(flt, page)
        resp = await self._unary("ListFlows", self._stub.ListFlows, request)
        return FlowPage(
            tuple(wire.flow_from_pb(f) for f in resp.flows), resp.next_page_token
        )

    async def create_branch(self, new: NewBranch) -> tuple[Flow, bool]:
        chosen_here = not new.flow_id
        new = replace(
            new,
            parent_flow_id=wire_uuid(new.parent_flow_id),
            flow_id=str(uuid.uuid4()) if chosen_here else wire_uuid(new.flow_id or ""),
        )
        resp = await self._unary(
            "CreateBranch", self._stub.CreateBranch, wire.create_branch_request(new)
        )
        return wire.flow_from_pb(resp.flow), resp.existed and not chosen_here

    async def delete_branch(
        self, namespace: str, flow_id: str, deleted_by: str = "", reason: str = ""
    ) -> Flow:
        request = store_pb2.DeleteBranchRequest(
            namespace=namespace, flow_id=flow_id, deleted_by=deleted_by, reason=reason
        )
        resp = await self._unary("DeleteBranch", self._stub.DeleteBranch, request)
        return wire.flow_from_pb(resp.flow)

    async def prune(self, cmd: Prune) -> tuple[Flow, bool]:
        resp = await self._unary("PruneFlow", self._stub.PruneFlow, wire.prune_request(cmd))
        return wire.flow_from_pb(resp.flow), resp.duplicate

    # -- the log -----------------------------------------------------------------------------

    async def append(self, cmd: Append) -> AppendResult:
        check_append(cmd)
        appends = self._appends
        resp = None
        if appends is not None and appends.supported:
            resp = await appends.append(wire.append_stream_request(cmd))
        if resp is None:
            resp = await self._unary(
                "AppendEvents", self._stub.AppendEvents, wire.append_request(cmd)
            )
        return AppendResult(resp.first_version, resp.last_version, tuple(resp.seqs),
                            resp.duplicate)

    async def count_steps(self, namespace: str, flow_id: str) -> StepCounts:
        request = store_pb2.CountStepsRequest(namespace=namespace, flow_id=flow_id)
        resp = await self._unary("CountSteps", self._stub.CountSteps, request)
        return StepCounts(resp.events, resp.steps_finished, resp.steps_failed)

    async def read_events(
        self,
        namespace: str,
        flow_id: str,
        after_version: int = 0,
        to_version: int = 0,
        chunk_size: int = 1000,
    ) -> AsyncIterator[Sequence[StoredEvent]]:
        messages = self.read_event_messages(
            namespace, flow_id, after_version, to_version, chunk_size
        )
        async with contextlib.aclosing(messages):
            async for chunk in messages:
                yield tuple(wire.event_from_pb(e) for e in chunk)

    async def read_event_messages(
        self,
        namespace: str,
        flow_id: str,
        after_version: int = 0,
        to_version: int = 0,
        chunk_size: int = 1000,
    ) -> AsyncGenerator[Sequence[common_pb2.Event], None]:
        """:meth:`read_events` as the store sent them (each chunk one response's events), for a
        caller that forwards them (WatchFlow): retried and resumed in the same way."""
        budget = RetryBudget(self.settings, what=f"ReadEvents({flow_id})")
        after = after_version
        while True:
            self._check_open()
            request = store_pb2.ReadEventsRequest(
                namespace=namespace,
                flow_id=flow_id,
                after_version=after,
                to_version=to_version,
                chunk_size=chunk_size,
            )
            call = self._stub.ReadEvents(request, wait_for_ready=True)
            error: FlowledgerError
            try:
                while True:
                    try:
                        async with asyncio.timeout(budget.attempt_timeout()):
                            resp = await call.read()
                    except TimeoutError:
                        error = DeadlineExceeded(
                            f"ReadEvents({flow_id}): no message within "
                            f"{self.settings.call_timeout:g}s"
                        )
                        break
                    if resp is grpc.aio.EOF:
                        return
                    assert isinstance(resp, store_pb2.ReadEventsResponse)
                    events = resp.events
                    if events:
                        budget.reset()
                        after = events[-1].version
                        yield events
            except grpc.RpcError as exc:
                error = self._error(exc)
            except asyncio.CancelledError:
                self._raise_if_closed()
                raise
            finally:
                call.cancel()
            await budget.backoff(error)

    async def subscribe(
        self,
        namespace: str,
        after_cursor: str = "",
        types: Sequence[EventType] = (),
        chunk_size: int = 500,
    ) -> AsyncIterator[Sequence[FeedEvent]]:
        budget = RetryBudget(self.settings, what=f"Subscribe({namespace})")
        cursor = after_cursor
        while True:
            if self.closed:
                return
            request = wire.subscribe_request(namespace, cursor, types, chunk_size)
            # No wait_for_ready: with no deadline, a call waiting for a channel that never
            # becomes ready would wait forever; failing fast lets the budget decide.
            call = self._stub.Subscribe(request)
            started = time.monotonic()
            error: FlowledgerError
            try:
                async for resp in call:
                    events = tuple(wire.feed_event_from_pb(e) for e in resp.events)
                    if events:
                        budget.reset()
                        cursor = events[-1].cursor
                        yield events
                # A feed has no end: the store ended the stream (e.g. shutting down).
                error = Unavailable(f"Subscribe({namespace}): the store ended the stream")
            except grpc.RpcError as exc:
                error = self._error(exc)
            except asyncio.CancelledError:
                if self._closed_under_us():
                    return  # close() cancelled the call: the feed ends, as the memory store's
                raise
            finally:
                call.cancel()
            if time.monotonic() - started >= self.settings.call_timeout:
                budget.reset()  # the stream was up: this is a new outage
            await budget.backoff(error)

    # -- artifacts and snapshots -------------------------------------------------------------

    async def get_artifacts(self, namespace: str, hashes: Sequence[str]) -> ArtifactLookup:
        request = store_pb2.GetArtifactsRequest(namespace=namespace, hashes=list(hashes))
        resp = await self._unary("GetArtifacts", self._stub.GetArtifacts, request)
        return ArtifactLookup(
            tuple(wire.artifact_from_pb(a) for a in resp.artifacts), tuple(resp.missing)
        )

    async def save_snapshot(
        self, namespace: str, flow_id: str, version: int, state_json: str
    ) -> None:
        request = store_pb2.SaveSnapshotRequest(
            namespace=namespace, flow_id=flow_id, version=version, state_json=state_json
        )
        await self._unary("SaveSnapshot", self._stub.SaveSnapshot, request)

    async def load_snapshot(
        self, namespace: str, flow_id: str, max_version: int = 0
    ) -> Snapshot | None:
        request = store_pb2.LoadSnapshotRequest(
            namespace=namespace, flow_id=flow_id, max_version=max_version
        )
        resp = await self._unary("LoadSnapshot", self._stub.LoadSnapshot, request)
        return wire.snapshot_from_pb(resp.snapshot) if resp.found else None

    # -- the store's limits ------------------------------------------------------------------

    async def get_limits(self) -> Limits | None:
        """The request limits the store enforces (GetLimits), retried in budget as any call;
        None from a store older than that RPC (UNIMPLEMENTED), whose limits cannot be asked."""
        try:
            resp = await self._unary(
                "GetLimits", self._stub.GetLimits, store_pb2.GetLimitsRequest()
            )
        except InternalError as exc:
            cause = exc.__cause__
            if isinstance(cause, grpc.aio.AioRpcError) and (
                cause.code() == grpc.StatusCode.UNIMPLEMENTED
            ):
                return None
            raise
        return wire.limits_from_pb(resp)

    # -- machinery ---------------------------------------------------------------------------

    async def _unary(
        self,
        what: str,
        method: grpc.aio.UnaryUnaryMultiCallable[_Req, _Resp],
        request: _Req,
    ) -> _Resp:
        """One unary call: attempts with deadlines, transient failures retried in budget."""
        budget = RetryBudget(self.settings, what=what)
        while True:
            self._check_open()
            try:
                return await method(
                    request, timeout=budget.attempt_timeout(), wait_for_ready=True
                )
            except grpc.RpcError as exc:
                error = self._error(exc)
            except asyncio.CancelledError:
                self._raise_if_closed()
                raise
            await budget.backoff(error)

    @staticmethod
    def _error(exc: grpc.RpcError) -> FlowledgerError:
        """The flowledger error for ``exc``; raised at once unless transient."""
        error = from_rpc_error(exc)
        if not is_transient(error):
            raise error from exc
        return error

    def _check_open(self) -> None:
        if self._closed:
            raise FailedPrecondition("the store client is closed", reason="CLIENT_CLOSED")

    def _closed_under_us(self) -> bool:
        """Whether close() cancelled our call (rather than someone cancelling our task)."""
        return self._closed and _not_cancelled()

    def _raise_if_closed(self) -> None:
        """After close() cancelled the call: say so instead of a bare CancelledError."""
        if self._closed_under_us():
            raise FailedPrecondition(
                "the store client was closed during the call", reason="CLIENT_CLOSED"
            )


def _not_cancelled() -> bool:
    task = asyncio.current_task()
    return task is None or task.cancelling() == 0
