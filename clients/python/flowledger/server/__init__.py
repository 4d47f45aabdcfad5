"""Server plumbing shared by the flowledger services (store and engine).

``interceptors``: go-grpc-prometheus metrics for servers and clients; ``runtime``: the grpc.aio
server with health, reflection, the Prometheus endpoint, size limits and graceful shutdown.
"""

from flowledger.server.interceptors import (
    ServerMetricsInterceptor,
    StreamClientMetricsInterceptor,
    UnaryClientMetricsInterceptor,
    client_interceptors,
)
from flowledger.server.runtime import (
    BindError,
    GrpcServer,
    MetricsEndpoint,
    ServerConfig,
    ShutdownSignals,
    shutdown_signals,
)

__all__ = [
    "BindError",
    "GrpcServer",
    "MetricsEndpoint",
    "ServerConfig",
    "ServerMetricsInterceptor",
    "ShutdownSignals",
    "StreamClientMetricsInterceptor",
    "UnaryClientMetricsInterceptor",
    "client_interceptors",
    "shutdown_signals",
]
