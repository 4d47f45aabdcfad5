"""Server plumbing shared by the flowledger services (store and engine).

``interceptors``: go-grpc-prometheus metrics for servers and clients; ``runtime``: the grpc.aio
server with health, reflection, the Prometheus endpoint, size limits and graceful shutdown.
Security (docs/security.md): ``tls`` (certificates, rotation, client names), ``auth`` (roles and
the caller's principal), ``auth_policy`` (the role x method table), ``auth_tokens`` (JWTs and the
static token file), ``auth_interceptor`` (applies them), ``auth_limits`` (rate limits),
``guard`` (running a check before any kind of handler).
"""

from flowledger_core.server.interceptors import (
    ServerMetricsInterceptor,
    StreamClientMetricsInterceptor,
    UnaryClientMetricsInterceptor,
    client_interceptors,
)
from flowledger_core.server.runtime import (
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
