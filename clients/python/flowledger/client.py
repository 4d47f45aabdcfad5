"""The Python SDK of the engine service::

    async with FlowledgerClient("127.0.0.1:50052") as client:
        created = await client.create_definition("shop", "hello", {"steps": [...]})
        await client.publish_definition("shop", "hello", created.version.version)
        started = await client.start_flow("shop", "hello", {"name": "Ada"}, idempotency_key="o-1")
        view = await client.wait_for_flow("shop", started.flow_id, within=30)
        print(view.variants, view.flow_fingerprint)

Results are :mod:`flowledger.types` values; every failed call raises the
:mod:`flowledger.errors` class the engine sent (``InvalidArgument`` with its field violations,
``NotFound``, ``FailedPrecondition``, ``Unavailable``, ...), through
:func:`flowledger.rpc_status.from_rpc_error`. No generated type reaches the caller.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Iterable, Mapping
from types import TracebackType
from typing import Any, Literal, TypeVar

import grpc
import grpc.aio

from flowledger import _wire
from flowledger import types as t
from flowledger._channel import open_channel
from flowledger.errors import DeadlineExceeded, InternalError, Unavailable
from flowledger.rpc_status import from_rpc_error
from flowledger.v1 import engine_pb2, engine_pb2_grpc

_T = TypeVar("_T")

DEFAULT_TIMEOUT_S = 30.0
_FORMATS = {"json": engine_pb2.DEFINITION_FORMAT_JSON, "yaml": engine_pb2.DEFINITION_FORMAT_YAML}


class FlowledgerClient:
    """An async client of one engine address (any replica; they are interchangeable)."""

    def __init__(
        self,
        address: str,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        credentials: grpc.ChannelCredentials | None = None,
        options: Iterable[tuple[str, Any]] = (),
    ) -> None:
        self.timeout = timeout
        self._channel = open_channel(address, credentials, options)
        self._stub = engine_pb2_grpc.EngineServiceStub(self._channel)

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> FlowledgerClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _call(self, call: Awaitable[_T]) -> _T:
        try:
            return await call
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    # -- definitions -------------------------------------------------------------------------

    async def create_definition(
        self,
        namespace: str,
        name: str,
        document: str | Mapping[str, Any],
        *,
        format: Literal["json", "yaml"] = "json",
        change_note: str = "",
        created_by: str = "",
        request_id: str = "",
    ) -> t.CreatedVersion:
        """Store a new DRAFT version. ``document`` is JSON/YAML text, or a mapping (sent as
        JSON): ``{"steps": [{"id": ..., "type": ..., "config": {...}}, ...]}``."""
        text = document if isinstance(document, str) else json.dumps(document)
        fmt = _FORMATS["json"] if not isinstance(document, str) else _FORMATS[format]
        resp = await self._call(
            self._stub.CreateDefinitionVersion(
                engine_pb2.CreateDefinitionVersionRequest(
                    namespace=namespace, name=name, document=text, format=fmt,
                    change_note=change_note, created_by=created_by, request_id=request_id,
                ),
                timeout=self.timeout,
            )
        )
        return t.CreatedVersion(_wire.definition(resp.version), resp.existed)

    async def publish_definition(
        self, namespace: str, name: str, version: int, *, change_note: str = "", actor: str = ""
    ) -> t.DefinitionVersion:
        request = engine_pb2.PublishDefinitionVersionRequest(
            namespace=namespace, name=name, version=version, change_note=change_note, actor=actor
        )
        resp = await self._call(self._stub.PublishDefinitionVersion(request, timeout=self.timeout))
        return _wire.definition(resp.version)

    async def archive_definition(
        self, namespace: str, name: str, version: int, *, change_note: str = "", actor: str = ""
    ) -> t.DefinitionVersion:
        request = engine_pb2.ArchiveDefinitionVersionRequest(
            namespace=namespace, name=name, version=version, change_note=change_note, actor=actor
        )
        resp = await self._call(self._stub.ArchiveDefinitionVersion(request, timeout=self.timeout))
        return _wire.definition(resp.version)

    async def rollback_definition(
        self, namespace: str, name: str, version: int, *, change_note: str = "", actor: str = ""
    ) -> t.DefinitionVersion:
        request = engine_pb2.RollbackDefinitionRequest(
            namespace=namespace, name=name, version=version, change_note=change_note, actor=actor
        )
        resp = await self._call(self._stub.RollbackDefinition(request, timeout=self.timeout))
        return _wire.definition(resp.version)

    async def get_definition(
        self, namespace: str, name: str, version: int = 0
    ) -> t.DefinitionVersion:
        """One version; 0 = the latest published."""
        request = engine_pb2.GetDefinitionVersionRequest(
            namespace=namespace, name=name, version=version
        )
        resp = await self._call(self._stub.GetDefinitionVersion(request, timeout=self.timeout))
        return _wire.definition(resp.version)

    async def list_definitions(
        self, namespace: str, name: str = "", *, page_size: int = 0, page_token: str = ""
    ) -> t.DefinitionPage:
        """The latest version of every definition, or (with ``name``) every version of one."""
        request = engine_pb2.ListDefinitionsRequest(
            namespace=namespace, name=name, page_size=page_size, page_token=page_token
        )
        resp = await self._call(self._stub.ListDefinitions(request, timeout=self.timeout))
        return t.DefinitionPage(
            tuple(_wire.definition(v) for v in resp.versions), resp.next_page_token
        )

    # -- flows -------------------------------------------------------------------------------

    async def start_flow(
        self,
        namespace: str,
        definition_name: str,
        input: t.JsonValue = None,
        *,
        version: int = 0,
        idempotency_key: str = "",
        started_by: str = "",
    ) -> t.StartedFlow:
        """Start a flow of a published version (0 = the latest published)."""
        request = engine_pb2.StartFlowRequest(
            namespace=namespace,
            definition_name=definition_name,
            version=version,
            input_json="" if input is None else json.dumps(input),
            idempotency_key=idempotency_key,
            started_by=started_by,
        )
        resp = await self._call(self._stub.StartFlow(request, timeout=self.timeout))
        return t.StartedFlow(resp.flow_id, resp.existed)

    async def describe_flow(self, namespace: str, flow_id: str) -> t.FlowView:
        request = engine_pb2.DescribeFlowRequest(namespace=namespace, flow_id=flow_id)
        resp = await self._call(self._stub.DescribeFlow(request, timeout=self.timeout))
        return _wire.flow_view(resp.flow)

    async def list_flows(
        self,
        namespace: str,
        *,
        statuses: Iterable[t.FlowStatus] = (),
        definition_name: str = "",
        parent_flow_id: str = "",
        page_size: int = 0,
        page_token: str = "",
        flow_id_prefix: str = "",
    ) -> t.FlowPage:
        """Flows of a namespace, newest first; ``flow_id_prefix``: only those whose id begins
        with it (canonical lower-case form, hyphens included)."""
        request = engine_pb2.ListFlowRunsRequest(
            namespace=namespace,
            statuses=[_wire.FLOW_STATUS_NUMBERS[s] for s in statuses],
            definition_name=definition_name,
            parent_flow_id=parent_flow_id,
            page_size=page_size,
            page_token=page_token,
            flow_id_prefix=flow_id_prefix,
        )
        resp = await self._call(self._stub.ListFlowRuns(request, timeout=self.timeout))
        return t.FlowPage(tuple(_wire.flow(f) for f in resp.flows), resp.next_page_token)

    async def watch_flow(
        self,
        namespace: str,
        flow_id: str,
        after_version: int = 0,
        *,
        close_only: bool = False,
        resume: int = 3,
    ) -> AsyncIterator[t.WatchUpdate]:
        """The flow's events after ``after_version``: catch-up, then live until the flow ends.
        With ``close_only`` only the event that ends the flow comes, in one update with the
        final status (none when that event is at or before ``after_version``).

        A stream that breaks transiently (a replica shutting down, a lost connection) is resumed
        after the last version received, up to ``resume`` times in a row, so no event is missed
        or repeated. No deadline: wrap it in ``asyncio.timeout`` to bound it.
        """
        after = after_version
        failures = 0
        watch_filter = engine_pb2.WATCH_FILTER_UNSPECIFIED
        if close_only:
            watch_filter = engine_pb2.WATCH_FILTER_CLOSE_EVENT
        while True:
            # Close-only receives nothing before the end, so a resumed one asks from where it
            # started: the engine follows the flow from there again, the caller sees one update.
            request = engine_pb2.WatchFlowRequest(
                namespace=namespace, flow_id=flow_id, after_version=after, filter=watch_filter
            )
            call = self._stub.WatchFlow(request)
            try:
                async for resp in call:
                    update = _wire.watch_update(resp)
                    if update.events:
                        after = update.events[-1].version
                        failures = 0
                    yield update
                return
            except grpc.RpcError as exc:
                error = from_rpc_error(exc)
                if not isinstance(error, Unavailable | DeadlineExceeded) or failures >= resume:
                    raise error from None
                failures += 1
            finally:
                call.cancel()
            await asyncio.sleep(min(0.05 * 2**failures, 1.0))

    async def wait_for_end(
        self, namespace: str, flow_id: str, *, within: float | None = None
    ) -> t.WatchUpdate:
        """Wait until the flow has ended: its final status and the event that ended it
        (FlowCompleted, FlowFailed or FlowCancelled), one message off the wire whatever the
        flow's length. TimeoutError when that takes longer than ``within`` seconds."""
        async with asyncio.timeout(within):
            async for update in self.watch_flow(namespace, flow_id, close_only=True):
                if update.status.terminal:  # (an engine without the filter sends every batch)
                    return update
        # The engine ends a watch only with the flow, and from version 0 that event is new.
        raise InternalError(f"the watch of flow {flow_id} ended without the flow's last event")

    async def wait_for_flow(
        self, namespace: str, flow_id: str, *, within: float | None = None
    ) -> t.FlowView:
        """Wait until the flow has ended, then describe it. TimeoutError when the wait takes
        longer than ``within`` seconds."""
        await self.wait_for_end(namespace, flow_id, within=within)
        return await self.describe_flow(namespace, flow_id)

    async def fetch_artifacts(self, namespace: str, hashes: Iterable[str]) -> t.Artifacts:
        request = engine_pb2.FetchArtifactsRequest(namespace=namespace, hashes=list(hashes))
        resp = await self._call(self._stub.FetchArtifacts(request, timeout=self.timeout))
        return _wire.artifacts(resp)

    async def branch_flow(
        self,
        namespace: str,
        flow_id: str,
        at_step: str,
        *,
        params: Mapping[str, Mapping[str, Any]] | None = None,
        idempotency_key: str = "",
        started_by: str = "",
    ) -> t.StartedFlow:
        """Branch a finished or failed flow before ``at_step``, optionally with new params for
        that step and later ones (by step id)."""
        request = engine_pb2.BranchFlowRequest(
            namespace=namespace,
            flow_id=flow_id,
            at_step=at_step,
            params_json={k: json.dumps(dict(v)) for k, v in (params or {}).items()},
            idempotency_key=idempotency_key,
            started_by=started_by,
        )
        resp = await self._call(self._stub.BranchFlow(request, timeout=self.timeout))
        return t.StartedFlow(resp.flow_id, resp.existed)

    async def verify_flow(self, namespace: str, flow_id: str) -> t.Verification:
        request = engine_pb2.VerifyFlowRequest(namespace=namespace, flow_id=flow_id)
        resp = await self._call(self._stub.VerifyFlow(request, timeout=self.timeout))
        return _wire.verification(resp)

    async def signal_flow(
        self,
        namespace: str,
        flow_id: str,
        name: str,
        payload: t.JsonValue = None,
        *,
        request_id: str = "",
        sent_by: str = "",
    ) -> t.SignalResult:
        """Deliver signal ``name`` with ``payload`` (the waiting ``signal`` step's output). A
        signal sent before the step waits is kept for it. ``request_id`` makes retries deliver
        it once. FailedPrecondition (reason FLOW_ENDED) when the flow has ended."""
        request = engine_pb2.SignalFlowRequest(
            namespace=namespace,
            flow_id=flow_id,
            name=name,
            payload_json="" if payload is None else json.dumps(payload),
            request_id=request_id,
            sent_by=sent_by,
        )
        resp = await self._call(self._stub.SignalFlow(request, timeout=self.timeout))
        return t.SignalResult(resp.version, resp.duplicate, resp.resumed)

    async def cancel_flow(
        self, namespace: str, flow_id: str, *, reason: str = "", cancelled_by: str = ""
    ) -> t.CancelResult:
        """Cancel a flow: no further step starts, the compensations of its finished steps run,
        then it is CANCELLED (watch it to see that). Idempotent; FailedPrecondition (reason
        FLOW_ENDED) for a completed or failed flow."""
        request = engine_pb2.CancelFlowRequest(
            namespace=namespace, flow_id=flow_id, reason=reason, cancelled_by=cancelled_by
        )
        resp = await self._call(self._stub.CancelFlow(request, timeout=self.timeout))
        return t.CancelResult(resp.version, resp.already)

    async def terminate_flow(
        self, namespace: str, flow_id: str, *, reason: str = "", terminated_by: str = ""
    ) -> t.CancelResult:
        """End a flow now, CANCELLED, without compensations (recorded with who and why).
        Idempotent (``already`` for a cancelled flow); FailedPrecondition (reason FLOW_ENDED)
        for a completed or failed flow."""
        request = engine_pb2.TerminateFlowRequest(
            namespace=namespace, flow_id=flow_id, reason=reason, terminated_by=terminated_by
        )
        resp = await self._call(self._stub.TerminateFlow(request, timeout=self.timeout))
        return t.CancelResult(resp.version, resp.already)
