"""The gRPC channel from the engine to the store, with gRPC's own retry policy switched on.

gRPC retries (the A6 service-config ``retryPolicy``) are used for what they do well: re-sending,
within one call's deadline, an attempt that failed UNAVAILABLE before the call was committed
(before any response arrived), e.g. on a connection that broke under the request. They stop at
5 attempts, never retry DEADLINE_EXCEEDED, never resume a stream that already delivered, and share
the call's single deadline; so the bounded overall budget, the typed errors and stream resumption
live in :mod:`engine_service.store_client.client`. ``retryThrottling`` switches the gRPC layer off
while most calls fail (a long outage), leaving only the budgeted, backed-off retries of the client.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import grpc
import grpc.aio

from engine_service.store_client.retry import StoreClientSettings

STORE_SERVICE = "flowledger.v1.StoreService"

ChannelOptions = Sequence[tuple[str, Any]]


def service_config() -> str:
    """The channel's default service config (JSON)."""
    return json.dumps(
        {
            "methodConfig": [
                {
                    "name": [{"service": STORE_SERVICE}],
                    "retryPolicy": {
                        "maxAttempts": 5,
                        "initialBackoff": "0.05s",
                        "maxBackoff": "0.5s",
                        "backoffMultiplier": 2,
                        # Never ABORTED: a VERSION_CONFLICT must reach the engine.
                        "retryableStatusCodes": ["UNAVAILABLE"],
                    },
                }
            ],
            # Retries stop while tokens <= maxTokens / 2: each failure costs 1, each success
            # gives tokenRatio back.
            "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1},
        }
    )


def channel_options(settings: StoreClientSettings, extra: ChannelOptions = ()) -> list[
    tuple[str, Any]
]:
    """Options of the store channel; ``extra`` overrides any of them by name."""
    options: dict[str, Any] = {
        "grpc.enable_retries": 1,
        "grpc.service_config": service_config(),
        "grpc.initial_reconnect_backoff_ms": min(100, int(settings.max_reconnect_backoff * 1000)),
        "grpc.max_reconnect_backoff_ms": int(settings.max_reconnect_backoff * 1000),
        "grpc.max_receive_message_length": settings.max_receive_message_bytes,
        "grpc.max_send_message_length": settings.max_send_message_bytes,
    }
    if settings.keepalive_time is not None:
        options |= {
            "grpc.keepalive_time_ms": int(settings.keepalive_time * 1000),
            "grpc.keepalive_timeout_ms": int(settings.keepalive_timeout * 1000),
            # A subscriber sends nothing after its request; without this, core stops pinging
            # after two pings "without data" and a dead peer goes unnoticed.
            "grpc.http2.max_pings_without_data": 0,
        }
    options |= dict(extra)
    return list(options.items())


def open_channel(
    address: str,
    settings: StoreClientSettings,
    *,
    credentials: grpc.ChannelCredentials | None = None,
    options: ChannelOptions = (),
    interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
) -> grpc.aio.Channel:
    """A channel to ``address`` (``host:port``): TLS when ``credentials`` are given."""
    opts = channel_options(settings, options)
    if credentials is None:
        return grpc.aio.insecure_channel(address, options=opts, interceptors=list(interceptors))
    return grpc.aio.secure_channel(
        address, credentials, options=opts, interceptors=list(interceptors)
    )
