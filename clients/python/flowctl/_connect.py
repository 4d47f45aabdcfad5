"""How flowctl reaches the engine: TLS or plaintext, the CA, a client certificate, the token.

The rule (docs/security.md, "Clients"): TLS unless told otherwise, with one exception: an engine
on a loopback address with no TLS option given is reached in plaintext, because that is what
``flowctl up`` serves. ``--tls`` / ``--plaintext`` (``FLOWLEDGER_TLS=1|0``) decide explicitly.
A token goes as ``authorization: Bearer <token>`` metadata through gRPC's call credentials,
which gRPC sends only over TLS or a local (loopback) connection: flowctl refuses a token for a
plaintext connection anywhere else instead of sending it in the clear.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import grpc

_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})


def is_loopback(address: str) -> bool:
    """True for ``host:port`` on this machine (127.0.0.0/8, ``localhost``, ``[::1]``)."""
    host = address.rpartition(":")[0] if ":" in address else address
    host = host.removeprefix("ipv4:").removeprefix("ipv6:").removeprefix("dns:///")
    return host in _LOOPBACK or host.startswith("127.")


@dataclass(frozen=True)
class Transport:
    """The global connection options, as given (resolved lazily by :meth:`channel`, so that a
    command that does not call the engine, like ``up``, never reads a file it does not need)."""

    tls: bool | None = None  # None: decide by the address (see the module docstring)
    ca_file: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    server_name: str | None = None
    token: str | None = None
    token_file: Path | None = None

    def uses_tls(self, address: str) -> bool:
        if self.tls is not None:
            return self.tls
        given = (self.ca_file, self.client_cert, self.client_key, self.server_name)
        return any(v is not None for v in given) or not is_loopback(address)

    def chose_plaintext_for_loopback(self, address: str) -> bool:
        """Plaintext picked by the loopback rule rather than asked for (worth a hint when the
        engine turns out to speak TLS)."""
        return self.tls is None and not self.uses_tls(address)

    def bearer_token(self) -> str | None:
        if self.token is not None and self.token_file is not None:
            raise click.UsageError("give --token or --token-file, not both")
        if self.token_file is not None:
            lines = self.token_file.read_text().strip().splitlines()
            if not lines or not lines[0].strip():
                raise click.UsageError(f"--token-file {self.token_file}: the file is empty")
            return lines[0].strip()
        return self.token or None

    def channel(self, address: str) -> tuple[grpc.ChannelCredentials | None, list[tuple[str, Any]]]:
        """Credentials (None: a plain insecure channel) and options of a channel to ``address``.
        Raises click errors for contradictory options and unusable files."""
        if (self.client_cert is None) != (self.client_key is None):
            raise click.UsageError("--client-cert and --client-key go together")
        token = self.bearer_token()
        if not self.uses_tls(address):
            tls_options = [
                name for name, value in (
                    ("--ca-file", self.ca_file), ("--client-cert", self.client_cert),
                    ("--server-name", self.server_name),
                ) if value is not None
            ]  # fmt: skip
            if tls_options:
                raise click.UsageError(f"--plaintext contradicts {', '.join(tls_options)}")
            if token is None:
                return None, []
            if not is_loopback(address):
                raise click.UsageError(
                    f"refusing to send the token in plaintext to {address}: use TLS "
                    "(--ca-file, or --tls for the system's CAs) or a loopback address"
                )
            # gRPC sends call credentials only over secure channels; a local one (loopback TCP,
            # checked by gRPC itself) counts as secure and speaks plaintext to the server.
            local = grpc.local_channel_credentials(grpc.LocalConnectionType.LOCAL_TCP)
            return grpc.composite_channel_credentials(
                local, grpc.access_token_call_credentials(token)
            ), []
        # Imported here: it loads `cryptography` (~0.1 s), which plaintext commands do without.
        from flowledger_core.server.tls import (
            ClientTLS,
            TLSError,
            channel_credentials,
            channel_options,
        )

        tls = ClientTLS(self.ca_file, self.client_cert, self.client_key, self.server_name)
        try:
            credentials = channel_credentials(tls)  # reads and checks the PEM files now
        except TLSError as exc:
            raise click.ClickException(str(exc)) from None
        if token is not None:
            credentials = grpc.composite_channel_credentials(
                credentials, grpc.access_token_call_credentials(token)
            )
        return credentials, channel_options(tls)
