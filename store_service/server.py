"""Build and run the store service (in a process or in-process for tests).

Start-up: bind and answer health NOT_SERVING, open the backend (Postgres: pool and migrations),
then SERVING. Stop: NOT_SERVING, end subscriptions, stop accepting, let in-flight calls finish
within the grace period, close the backend (when this module opened it), stop the metrics endpoint.
"""

from __future__ import annotations

import logging

import grpc.aio

from flowledger.v1 import store_pb2_grpc
from flowledger_core.ports import EventStore
from flowledger_core.server import GrpcServer, ServerConfig
from flowledger_core.server.tls import ClientNameInterceptor, server_credentials
from store_service.grpc_api import SERVICE_NAME, StoreServicer
from store_service.settings import StoreSettings

log = logging.getLogger("store_service")


async def open_store(settings: StoreSettings) -> EventStore:
    """The backend the settings name: ``memory:`` or a Postgres connection string."""
    if settings.backend == "memory":
        from store_service.adapters.memory import MemoryEventStore

        return MemoryEventStore(max_events_per_flow=settings.limits.max_events_per_flow)
    from store_service.adapters.postgres import PostgresEventStore

    return await PostgresEventStore.open(
        settings.database_url,
        min_connections=settings.database_min_connections,
        max_connections=settings.database_max_connections,
        retry_budget_s=settings.retry_budget_seconds,
        apply_migrations=True,
        migrate_conninfo=settings.migrate_database_url,
        max_events_per_flow=settings.limits.max_events_per_flow,
    )


class StoreServer:
    """A running store service: its bound ports and a way to stop it."""

    def __init__(
        self,
        settings: StoreSettings,
        grpc_server: GrpcServer,
        servicer: StoreServicer,
        store: EventStore,
        owns_store: bool,
    ) -> None:
        self.settings = settings
        self.grpc = grpc_server
        self.servicer = servicer
        self.store = store
        self._owns_store = owns_store
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

    async def begin_drain(self) -> None:
        """Health NOT_SERVING and subscriptions ended; calls are still accepted."""
        await self.grpc.enter_drain()
        self.servicer.drain()

    async def stop(self, grace: float | None = None) -> None:
        """Graceful stop; ``grace`` defaults to the settings' shutdown grace. Idempotent."""
        if grace is None:
            grace = self.settings.shutdown_grace_seconds
        await self.begin_drain()
        if self._stopped:
            # A second stop (second signal) only shortens the grace of the first.
            await self.grpc.server.stop(grace)
            return
        self._stopped = True
        await self.grpc.stop(grace)
        if self._owns_store:
            await self.store.close()

    async def wait_for_termination(self) -> None:
        await self.grpc.wait_for_termination()


async def serve(settings: StoreSettings, store: EventStore | None = None) -> StoreServer:
    """Start the service; with ``store`` given, serve it (the caller keeps ownership and closes
    it), else open the backend the settings name (closed by :meth:`StoreServer.stop`)."""
    servicer = StoreServicer(store, settings.limits)
    tls = settings.tls
    interceptors: list[grpc.aio.ServerInterceptor] = []
    if tls is None:
        log.warning("the store accepts PLAINTEXT calls from anyone (FLOWLEDGER_INSECURE=1)")
    else:
        log.info("the store accepts %s", tls.describe())
        if tls.client_names:
            interceptors.append(ClientNameInterceptor(tls.client_names))
    grpc_server = await GrpcServer.start(
        ServerConfig(
            listen=settings.listen,
            metrics_listen=settings.metrics_listen or None,
            max_message_bytes=settings.limits.max_message_bytes,
            service_names=(SERVICE_NAME,),
            # Mutual TLS is the store's authentication: the engine is its only client.
            credentials=server_credentials(tls)[0] if tls is not None else None,
            health_listen=settings.health_listen or None,
        ),
        lambda server: store_pb2_grpc.add_StoreServiceServicer_to_server(servicer, server),
        interceptors,
    )
    owns_store = store is None
    try:
        if store is None:
            store = await open_store(settings)
        servicer.attach(store)
    except BaseException:
        await grpc_server.stop(0)
        raise
    await grpc_server.set_serving()
    return StoreServer(settings, grpc_server, servicer, store, owns_store)
