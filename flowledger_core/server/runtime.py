"""What every flowledger gRPC service runs on: one grpc.aio server with the metrics interceptor,
requests decoded after the services' checks (undecodable ones INVALID_ARGUMENT), health checking
(overall and per service), reflection, the Prometheus HTTP endpoint, message size limits, and a
graceful stop.

Lifecycle: :meth:`GrpcServer.start` binds and serves with health NOT_SERVING; the service calls
:meth:`GrpcServer.set_serving` once its backend is ready; :meth:`GrpcServer.stop` turns health
NOT_SERVING, stops accepting calls, lets in-flight calls finish within the grace period and stops
the metrics endpoint.

:func:`run_service` and :func:`stop_on_signal` are the ``python -m <service>`` part: exit codes,
logging set-up and the signal-driven graceful stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar
from wsgiref.simple_server import WSGIServer

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

from flowledger_core.server.decoding import DecodeAfterAdmission
from flowledger_core.server.env import SettingsError
from flowledger_core.server.event_loop import loop_runner
from flowledger_core.server.interceptors import ServerMetricsInterceptor

log = logging.getLogger("flowledger_core.server")

HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name


class BindError(OSError):
    """An address could not be bound; the message names it."""


@dataclass(frozen=True)
class ServerConfig:
    listen: str
    """``host:port`` for gRPC; port 0 picks a free port."""
    metrics_listen: str | None
    """``host:port`` for ``/metrics``; None runs no endpoint."""
    max_message_bytes: int
    service_names: tuple[str, ...]
    """Fully qualified names of the services, for health and reflection."""
    credentials: grpc.ServerCredentials | None = None
    """TLS (see :mod:`flowledger_core.server.tls`); None serves plaintext, which the services'
    settings allow only when configured explicitly."""
    health_listen: str | None = None
    """``host:port`` of a plaintext port serving only grpc.health.v1 (for probes that cannot
    speak TLS, such as the kubelet's); None runs none."""


def split_host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


class MetricsEndpoint:
    """prometheus_client's HTTP server (a daemon thread), stoppable."""

    def __init__(self, httpd: WSGIServer, thread: threading.Thread) -> None:
        self._httpd = httpd
        self._thread = thread
        self.port: int = httpd.server_port

    @classmethod
    def start(cls, address: str) -> MetricsEndpoint:
        host, port = split_host_port(address)
        try:
            httpd, thread = start_http_server(port, addr=host)
        except OSError as exc:
            raise BindError(f"cannot serve metrics on {address}: {exc.strerror or exc}") from exc
        return cls(httpd, thread)

    async def stop(self) -> None:
        # shutdown() blocks until the serving loop notices (up to its 0.5 s poll interval).
        await asyncio.to_thread(self._httpd.shutdown)
        self._httpd.server_close()
        await asyncio.to_thread(self._thread.join, 5.0)


class GrpcServer:
    """A started server; see the module docstring for the lifecycle."""

    def __init__(
        self,
        server: grpc.aio.Server,
        health: HealthServicer,
        config: ServerConfig,
        port: int,
        metrics: MetricsEndpoint | None,
        health_server: tuple[grpc.aio.Server, int] | None = None,
    ) -> None:
        self.server = server
        self.health = health
        self.config = config
        self.port = port
        self.metrics = metrics
        self._health_server = health_server
        self._stopped = False

    @property
    def health_port(self) -> int | None:
        """The port of the health-only listener, if any."""
        return None if self._health_server is None else self._health_server[1]

    @property
    def metrics_port(self) -> int | None:
        return None if self.metrics is None else self.metrics.port

    @classmethod
    async def start(
        cls,
        config: ServerConfig,
        register: Callable[[grpc.aio.Server], None],
        interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    ) -> GrpcServer:
        """Build, bind and start the server; health answers NOT_SERVING until set_serving.

        ``interceptors`` run after the metrics and before the requests are decoded
        (:mod:`flowledger_core.server.decoding`): a check that refuses a call costs no decoding."""
        server = grpc.aio.server(
            interceptors=[ServerMetricsInterceptor(), *interceptors, DecodeAfterAdmission()],
            options=[
                ("grpc.max_receive_message_length", config.max_message_bytes),
                ("grpc.max_send_message_length", config.max_message_bytes),
                # grpc sets SO_REUSEPORT by default: a second process on the same port would
                # silently share it. Fail the bind instead.
                ("grpc.so_reuseport", 0),
            ],
        )
        register(server)
        health = HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health, server)
        reflection.enable_server_reflection(
            (*config.service_names, HEALTH_SERVICE, reflection.SERVICE_NAME), server
        )
        for name in ("", *config.service_names):
            await health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        try:
            if config.credentials is None:
                port = server.add_insecure_port(config.listen)
            else:
                port = server.add_secure_port(config.listen, config.credentials)
        except RuntimeError as exc:
            raise BindError(f"cannot listen on {config.listen}: {exc}") from exc
        health_server = _health_only(health, config.health_listen)
        metrics = MetricsEndpoint.start(config.metrics_listen) if config.metrics_listen else None
        try:
            await server.start()
            if health_server is not None:
                await health_server[0].start()
        except BaseException:
            if metrics is not None:
                await metrics.stop()
            raise
        return cls(server, health, config, port, metrics, health_server)

    async def set_serving(self) -> None:
        for name in ("", *self.config.service_names):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def enter_drain(self) -> None:
        """Health NOT_SERVING for good: load balancers stop sending new calls."""
        await self.health.enter_graceful_shutdown()

    async def stop(self, grace: float | None) -> None:
        """Stop accepting calls, give in-flight calls ``grace`` seconds, stop the endpoint."""
        await self.enter_drain()
        if not self._stopped:
            self._stopped = True
            await self.server.stop(grace)
            if self._health_server is not None:
                await self._health_server[0].stop(0)
            if self.metrics is not None:
                await self.metrics.stop()

    async def wait_for_termination(self) -> None:
        await self.server.wait_for_termination()


def _health_only(health: HealthServicer, listen: str | None) -> tuple[grpc.aio.Server, int] | None:
    """A plaintext server of the same health servicer (it answers what the main port's does)."""
    if not listen:
        return None
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    try:
        return server, server.add_insecure_port(listen)
    except RuntimeError as exc:
        raise BindError(f"cannot listen on {listen} (health): {exc}") from exc


@contextlib.asynccontextmanager
async def shutdown_signals(
    signals: Sequence[signal.Signals] = (signal.SIGTERM, signal.SIGINT),
) -> AsyncIterator[ShutdownSignals]:
    """Route SIGTERM/SIGINT to events while the block runs (instead of KeyboardInterrupt)."""
    loop = asyncio.get_running_loop()
    state = ShutdownSignals()
    for sig in signals:
        loop.add_signal_handler(sig, state.received, sig)
    try:
        yield state
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)


class ShutdownSignals:
    """``first`` is set by the first signal, ``again`` by any later one (stop harder)."""

    def __init__(self) -> None:
        self.first = asyncio.Event()
        self.again = asyncio.Event()
        self.signal: signal.Signals | None = None

    def received(self, sig: signal.Signals) -> None:
        if self.first.is_set():
            log.warning("received %s again: cancelling the calls still running", sig.name)
            self.again.set()
            return
        self.signal = sig
        self.first.set()


class Stoppable(Protocol):
    async def stop(self, grace: float | None = None) -> None: ...


async def stop_on_signal(
    server: Stoppable,
    signals: ShutdownSignals,
    *,
    log: logging.Logger,
    in_flight: str,
    grace: float,
) -> None:
    """Wait for the first signal, then stop ``server`` with its grace; a second signal cuts it
    short. ``in_flight`` names what the grace is for, in the log line."""
    await signals.first.wait()
    log.info(
        "received %s: draining, %s get %.1fs",
        signals.signal.name if signals.signal else "signal",
        in_flight,
        grace,
    )
    stopping = asyncio.ensure_future(server.stop())
    again = asyncio.ensure_future(signals.again.wait())
    await asyncio.wait((stopping, again), return_when=asyncio.FIRST_COMPLETED)
    if not stopping.done():
        await server.stop(0)  # shortens the first stop's grace
    again.cancel()
    await stopping


def metrics_url(metrics_listen: str, port: int | None) -> str:
    """For the start-up log line: the ``/metrics`` URL, or ``off``."""
    if port is None:
        return "off"
    return f"http://{metrics_listen.rpartition(':')[0]}:{port}/metrics"


_Loaded = TypeVar("_Loaded")


def run_service(
    prog: str,
    load: Callable[[], _Loaded],
    run: Callable[[_Loaded], Coroutine[Any, Any, None]],
    *,
    log_level: Callable[[_Loaded], str],
    log: logging.Logger,
    start_errors: tuple[type[Exception], ...] = (BindError,),
) -> int:
    """``main`` of a service; returns the exit code.

    2 when ``load`` (reading the settings) raises :class:`SettingsError`: one line on stderr
    naming the variable, before logging is set up. 1 when ``run`` raises one of
    ``start_errors`` (the service cannot start), logged. 0 after ``run`` returns (a clean stop).
    """
    try:
        loaded = load()
        run_loop = loop_runner(os.environ)
    except SettingsError as exc:
        print(f"{prog}: bad setting: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=log_level(loaded),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        run_loop(run(loaded))
    except start_errors as exc:
        log.error("cannot start: %s", exc)
        return 1
    return 0
