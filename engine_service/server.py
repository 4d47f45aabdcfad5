"""Build and run the engine service (in a process, or in-process for tests).

Start-up: bind and answer health NOT_SERVING; start the store probe, the work loop and the
server, and ask the store for its limits (GetLimits, :mod:`engine_service.store_client.limits`:
requests are validated against them, and one that comes before the answer waits for it within
the store client's retry budget); health turns SERVING once the store answers, and back to
NOT_SERVING whenever it stops answering (the replica keeps retrying and never exits for that).

Stop (SIGTERM): health NOT_SERVING for good and WatchFlow streams ended; the work loop drains
(no more claims, runs stop at a step boundary and release their leases, the rest are abandoned
after the grace); in-flight calls get what is left of the grace; then the store client closes.
"""

from __future__ import annotations

import logging
import time

import grpc.aio
from grpc_health.v1 import health_pb2

from engine_service.api.definitions import Definitions
from engine_service.api.engine_servicer import SERVICE_NAME, EngineServicer, LimitsSource
from engine_service.api.flows import Flows
from engine_service.api.worker_servicer import SERVICE_NAME as WORKER_SERVICE_NAME
from engine_service.api.worker_servicer import WorkerServicer
from engine_service.run.engine import Engine
from engine_service.settings import ServiceSettings
from engine_service.steps.plugins import build_registry
from engine_service.steps.registry import StepRegistry
from engine_service.store_client.client import GrpcEventStore
from engine_service.store_client.limits import StoreLimits
from engine_service.store_client.probe import StoreProbe
from engine_service.work.loop import WorkLoop
from engine_service.work.notifier import FlowNotifier
from flowledger.v1 import engine_pb2_grpc, worker_pb2_grpc
from flowledger_core.limits import Limits
from flowledger_core.ports import EventStore
from flowledger_core.server import GrpcServer, ServerConfig
from flowledger_core.server.auth_interceptor import auth_interceptors
from flowledger_core.server.tls import (
    ClientNameInterceptor,
    channel_credentials,
    channel_options,
    server_credentials,
)

log = logging.getLogger("engine_service")


class EngineServer:
    """A running engine replica: its ports, its work loop, and a way to stop it."""

    def __init__(
        self,
        settings: ServiceSettings,
        grpc_server: GrpcServer,
        servicer: EngineServicer,
        worker: WorkLoop,
        probe: StoreProbe,
        store: EventStore,
        owns_store: bool,
        registry: StepRegistry | None = None,
        store_limits: StoreLimits | None = None,
    ) -> None:
        self.settings = settings
        self.grpc = grpc_server
        self.servicer = servicer
        self.worker = worker
        self.probe = probe
        self.store = store
        self._owns_store = owns_store
        self._registry = registry
        self._store_limits = store_limits
        self._stopped = False

    @property
    def port(self) -> int:
        return self.grpc.port

    @property
    def metrics_port(self) -> int | None:
        return self.grpc.metrics_port

    @property
    def address(self) -> str:
        """Where clients connect (loopback when listening on a wildcard address)."""
        host = self.settings.listen.rpartition(":")[0].strip("[]")
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    async def stop(self, grace: float | None = None) -> None:
        """Graceful stop; ``grace`` defaults to the settings' shutdown grace. A second call
        (a second signal) only shortens the first one's grace for calls."""
        if grace is None:
            grace = self.settings.shutdown_grace_seconds
        await self.grpc.enter_drain()
        self.servicer.drain()
        if self._stopped:
            if grace == 0:
                self.worker.hurry()
            await self.grpc.server.stop(grace)
            return
        self._stopped = True
        started = time.monotonic()
        await self.worker.drain(grace)
        left = max(0.0, grace - (time.monotonic() - started))
        await self.grpc.stop(left)
        await self.probe.close()
        if self._store_limits is not None:
            await self._store_limits.close()
        if self._registry is not None:
            await self._registry.aclose()  # step runners' resources (HTTP connections)
        if self._owns_store:
            await self.store.close()

    async def kill(self) -> None:
        """Stop without draining or releasing leases (tests: a crash, minus the exit)."""
        self._stopped = True
        await self.worker.close()
        await self.grpc.stop(0)
        await self.probe.close()
        if self._store_limits is not None:
            await self._store_limits.close()
        if self._registry is not None:
            await self._registry.aclose()
        if self._owns_store:
            await self.store.close()

    async def wait_for_termination(self) -> None:
        await self.grpc.wait_for_termination()


def _store_client(settings: ServiceSettings) -> EventStore:
    tls = settings.store_tls
    if tls is None:
        return GrpcEventStore(settings.store_addr, settings.store_client_settings())
    return GrpcEventStore(
        settings.store_addr, settings.store_client_settings(),
        credentials=channel_credentials(tls), options=channel_options(tls),
    )


def _security_interceptors(settings: ServiceSettings) -> list[grpc.aio.ServerInterceptor]:
    """Client-certificate names first (when configured), then tokens, roles and namespaces."""
    names = settings.tls.client_names if settings.tls is not None else ()
    interceptors: list[grpc.aio.ServerInterceptor] = (
        [ClientNameInterceptor(names)] if names else []
    )
    return interceptors + auth_interceptors(settings.auth)


def _log_security(settings: ServiceSettings) -> None:
    """One line each for the clients' side and the store's side (docs/security.md)."""
    if settings.tls is None:
        log.warning("clients connect in PLAINTEXT (FLOWLEDGER_INSECURE=1)")
    else:
        log.info("clients connect with %s", settings.tls.describe())
    if settings.auth is None:
        log.warning("authentication is DISABLED (ENGINE_AUTH_DISABLED=1): every caller is admin")
    else:
        log.info("clients authenticate with %s", settings.auth.describe())
    if settings.store_tls is None:
        log.warning("the store is reached in PLAINTEXT (FLOWLEDGER_INSECURE=1)")
    else:
        log.info("the store is reached with %s", settings.store_tls.describe())
    log.info("http steps may connect to %s", settings.egress.describe())


async def serve(
    settings: ServiceSettings,
    *,
    store: EventStore | None = None,
    registry: StepRegistry | None = None,
    limits: Limits | None = None,
) -> EngineServer:
    """Start a replica. With ``store`` given it is used (the caller closes it) instead of a
    store client to ``settings.store_addr``; health still probes ``store_addr``.

    Requests are validated against the store's limits: asked of a store reached over gRPC
    (GetLimits); ``limits`` for a store in this process (default: ``Limits()``)."""
    if registry is None:
        registry = build_registry(settings.step_plugins, settings.egress_policy())
    owns_store = store is None
    if store is None:
        store = _store_client(settings)
    engine = Engine(store, registry=registry, settings=settings.engine_settings())
    notifier = FlowNotifier(settings.watch_log_limits())
    # Every append this replica makes reaches its watchers (and the local logs WatchFlow serves).
    engine.append_observer = notifier.publish
    worker = WorkLoop(engine, settings, notifier)
    definitions = Definitions(store, registry)
    flows = Flows(
        engine, definitions, worker, max_pending_signals=settings.max_pending_signals
    )
    # Over gRPC: the store's own limits, and WatchFlow forwards its event messages (no decode
    # and encode back).
    store_limits: StoreLimits | None = None
    limits_source: LimitsSource
    if isinstance(store, GrpcEventStore):
        store_limits = StoreLimits(store)
        limits_source = store_limits.get
        messages: GrpcEventStore | None = store
    else:
        limits_source = _fixed(limits or Limits())
        messages = None
    servicer = EngineServicer(store, definitions, flows, notifier, limits_source, messages)
    worker_servicer = WorkerServicer(engine, worker, settings.lease_ms)

    def add_services(server: grpc.aio.Server) -> None:
        engine_pb2_grpc.add_EngineServiceServicer_to_server(servicer, server)
        worker_pb2_grpc.add_WorkerServiceServicer_to_server(worker_servicer, server)

    _log_security(settings)
    try:
        grpc_server = await GrpcServer.start(
            ServerConfig(
                listen=settings.listen,
                metrics_listen=settings.metrics_listen or None,
                max_message_bytes=settings.max_message_bytes,
                service_names=(SERVICE_NAME, WORKER_SERVICE_NAME),
                credentials=server_credentials(settings.tls)[0] if settings.tls else None,
                health_listen=settings.health_listen or None,
            ),
            add_services,
            _security_interceptors(settings),
        )
    except BaseException:
        if owns_store:
            await store.close()
        raise

    async def follow_store(up: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if up
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", SERVICE_NAME):
            await grpc_server.health.set(name, status)

    probe = StoreProbe(
        settings.store_addr, settings.store_probe_seconds, follow_store,
        credentials=channel_credentials(settings.store_tls) if settings.store_tls else None,
        options=channel_options(settings.store_tls) if settings.store_tls else (),
    )
    probe.start()
    if store_limits is not None:
        store_limits.start()
    worker.start()
    return EngineServer(
        settings, grpc_server, servicer, worker, probe, store, owns_store, registry,
        store_limits,
    )


def _fixed(limits: Limits) -> LimitsSource:
    async def get() -> Limits:
        return limits

    return get
