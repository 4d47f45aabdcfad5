"""The channel an SDK client (FlowledgerClient, TaskClient) opens: TLS when given credentials,
plaintext otherwise (decision 0015: the caller chooses explicitly)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import grpc
import grpc.aio


def open_channel(
    address: str,
    credentials: grpc.ChannelCredentials | None,
    options: Iterable[tuple[str, Any]],
) -> grpc.aio.Channel:
    if credentials is None:
        return grpc.aio.insecure_channel(address, options=list(options))
    return grpc.aio.secure_channel(address, credentials, options=list(options))
