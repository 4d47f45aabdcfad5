"""TLS for the flowledger services: server credentials that follow certificate rotation, client
credentials for the engine's channel to the store, and a check of a client certificate's names.

Rotation: gRPC calls :meth:`CertificateFiles.fetch` before every new connection's handshake. It
compares the files' (inode, mtime, size) with those last loaded, which costs three ``stat`` calls,
and reloads only when they changed: a renewed certificate (cert-manager, a Kubernetes Secret
volume, which swaps a symlink) is served to new connections without a restart, and open
connections keep theirs. A half-written rotation (a certificate whose key does not match yet) is
refused and the previous pair kept until the files agree again.

Client credentials (the engine's certificate towards the store) are read once at start-up: gRPC
Python has no reloading channel credentials, so rotating them means restarting the replica.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import grpc
import grpc.aio
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from prometheus_client import Gauge

from flowledger.errors import PermissionDenied
from flowledger_core.server.env import Env, SettingsError
from flowledger_core.server.guard import guarded_handler

__all__ = [
    "CERTIFICATE_NOT_AFTER",
    "OPEN_METHODS",
    "CertificateFiles",
    "ClientNameInterceptor",
    "ClientTLS",
    "ServerTLS",
    "TLSError",
    "channel_credentials",
    "channel_options",
    "read_client_tls",
    "read_server_tls",
    "server_credentials",
]

log = logging.getLogger("flowledger_core.server.tls")

OPEN_METHODS = frozenset({"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"})
"""Methods every caller may use: health checks stay open."""

CERTIFICATE_NOT_AFTER = Gauge(
    "flowledger_tls_certificate_not_after_seconds",
    "Expiry (Unix time) of the certificate this process serves or presents, by file.",
    ("file",),
)


class TLSError(Exception):
    """Certificate files that cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class ServerTLS:
    """A server's certificate and key; with ``client_ca_file``, clients must present a
    certificate signed by that CA (mutual TLS), and with ``client_names`` one of those names."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None
    client_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.client_names and self.client_ca_file is None:
            raise ValueError("client_names need client_ca_file (mutual TLS)")

    @property
    def mutual(self) -> bool:
        return self.client_ca_file is not None

    def describe(self) -> str:
        if not self.mutual:
            return f"TLS ({self.cert_file})"
        names = f", client names {', '.join(self.client_names)}" if self.client_names else ""
        return f"mutual TLS ({self.cert_file}, clients of {self.client_ca_file}{names})"


@dataclass(frozen=True)
class ClientTLS:
    """How a client verifies the server (``ca_file``; None: the system's roots) and, for mutual
    TLS, the certificate it presents. ``server_name`` overrides the name checked in the
    server's certificate (when the address is an IP or a Service name the cert does not carry)."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")

    def describe(self) -> str:
        who = f", client certificate {self.cert_file}" if self.cert_file else ""
        return f"TLS (CA {self.ca_file or 'system roots'}{who})"


# -- settings ------------------------------------------------------------------------------------


def read_server_tls(env: Env, prefix: str, *, mutual: bool) -> ServerTLS | None:
    """``<prefix>_TLS_CERT_FILE``, ``_KEY_FILE``, ``_CLIENT_CA_FILE``, ``_CLIENT_NAMES``; None when
    no certificate is set. With ``mutual``, the client CA is required."""
    cert, key = env.file(f"{prefix}_TLS_CERT_FILE"), env.file(f"{prefix}_TLS_KEY_FILE")
    client_ca = env.file(f"{prefix}_TLS_CLIENT_CA_FILE")
    names = env.names(f"{prefix}_TLS_CLIENT_NAMES")
    if cert is None and key is None:
        for extra, value in (("CLIENT_CA_FILE", client_ca), ("CLIENT_NAMES", names)):
            if value:
                raise SettingsError(
                    f"{prefix}_TLS_{extra}", f"needs {prefix}_TLS_CERT_FILE and _KEY_FILE"
                )
        return None
    if cert is None:
        raise SettingsError(f"{prefix}_TLS_CERT_FILE", f"is required with {prefix}_TLS_KEY_FILE")
    if key is None:
        raise SettingsError(f"{prefix}_TLS_KEY_FILE", f"is required with {prefix}_TLS_CERT_FILE")
    if mutual and client_ca is None:
        raise SettingsError(
            f"{prefix}_TLS_CLIENT_CA_FILE",
            "is required with TLS: the store accepts only clients with a certificate of this CA",
        )
    if names and client_ca is None:
        raise SettingsError(f"{prefix}_TLS_CLIENT_NAMES", f"needs {prefix}_TLS_CLIENT_CA_FILE")
    tls = ServerTLS(cert, key, client_ca, names)
    try:
        CertificateFiles(tls).load()  # the files are read again when the server starts
    except TLSError as exc:
        files = {"CERT_FILE": cert, "KEY_FILE": key, "CLIENT_CA_FILE": client_ca}
        raise _naming(exc, prefix, files) from None
    return tls


def read_client_tls(env: Env, prefix: str) -> ClientTLS | None:
    """``<prefix>_TLS_CA_FILE``, ``_CERT_FILE``, ``_KEY_FILE``, ``_SERVER_NAME``; None when none
    is set (the caller decides whether plaintext is allowed)."""
    ca, cert = env.file(f"{prefix}_TLS_CA_FILE"), env.file(f"{prefix}_TLS_CERT_FILE")
    key, name = env.file(f"{prefix}_TLS_KEY_FILE"), env.optional(f"{prefix}_TLS_SERVER_NAME")
    if ca is None and cert is None and key is None:
        if name is not None:
            raise SettingsError(f"{prefix}_TLS_SERVER_NAME", f"needs {prefix}_TLS_CA_FILE")
        return None
    if (cert is None) != (key is None):
        missing = "CERT_FILE" if cert is None else "KEY_FILE"
        raise SettingsError(f"{prefix}_TLS_{missing}", "the certificate and key go together")
    tls = ClientTLS(ca, cert, key, name)
    try:
        channel_credentials(tls)
    except TLSError as exc:
        raise _naming(exc, prefix, {"CA_FILE": ca, "CERT_FILE": cert, "KEY_FILE": key}) from None
    return tls


def _naming(exc: TLSError, prefix: str, files: dict[str, Path | None]) -> SettingsError:
    """The settings error for ``exc``, naming the variable of the file it is about."""
    message = str(exc)
    about = next(
        (n for n, p in files.items() if p is not None and message.startswith(str(p))),
        next(iter(files)),
    )
    return SettingsError(f"{prefix}_TLS_{about}", message)


# -- server credentials --------------------------------------------------------------------------

_Signature = tuple[tuple[int, int, int], ...]


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TLSError(f"{path}: cannot read: {exc.strerror or exc}") from None


def _certificates(path: Path, pem: bytes) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise TLSError(f"{path}: not a PEM certificate (chain)") from None
    return certs


def _check_pair(cert_file: Path, cert_pem: bytes, key_file: Path, key_pem: bytes) -> float:
    """Check that the key belongs to the (first) certificate; returns its expiry (Unix time)."""
    leaf = _certificates(cert_file, cert_pem)[0]
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise TLSError(f"{key_file}: encrypted private keys are not supported") from None
    except ValueError:
        raise TLSError(f"{key_file}: not a PEM private key") from None
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if key.public_key().public_bytes(der, spki) != leaf.public_key().public_bytes(der, spki):
        raise TLSError(f"{key_file} is not the key of the certificate in {cert_file}")
    return leaf.not_valid_after_utc.timestamp()


class CertificateFiles:
    """The files of a :class:`ServerTLS`, reloaded when they change (see the module docstring)."""

    def __init__(self, tls: ServerTLS) -> None:
        self.tls = tls
        self._paths = tuple(
            p for p in (tls.cert_file, tls.key_file, tls.client_ca_file) if p is not None
        )
        self._lock = threading.Lock()
        self._loaded: _Signature | None = None
        self._refused: _Signature | None = None
        self.reloads = 0

    def _signature(self) -> _Signature:
        stats = [os.stat(p) for p in self._paths]
        return tuple((s.st_ino, s.st_mtime_ns, s.st_size) for s in stats)

    def load(self) -> grpc.ServerCertificateConfiguration:
        """Read and check the files now; raises :class:`TLSError`."""
        try:
            signature = self._signature()
        except OSError as exc:
            raise TLSError(f"cannot stat {exc.filename}: {exc.strerror}") from None
        config = self._configuration()
        with self._lock:
            self._loaded = signature
        return config

    def _configuration(self) -> grpc.ServerCertificateConfiguration:
        tls = self.tls
        cert_pem, key_pem = _read(tls.cert_file), _read(tls.key_file)
        not_after = _check_pair(tls.cert_file, cert_pem, tls.key_file, key_pem)
        ca_pem: bytes | None = None
        if tls.client_ca_file is not None:
            ca_pem = _read(tls.client_ca_file)
            _certificates(tls.client_ca_file, ca_pem)
        CERTIFICATE_NOT_AFTER.labels(str(tls.cert_file)).set(not_after)
        return grpc.ssl_server_certificate_configuration([(key_pem, cert_pem)], ca_pem)

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """gRPC's callback before each handshake: a new configuration, or None (unchanged).

        Never raises: a failure keeps the pair already served (and is logged once per change).
        """
        try:
            signature = self._signature()
        except OSError as exc:
            log.error("TLS files: cannot stat %s (%s); serving the loaded certificate",
                      exc.filename, exc.strerror)
            return None
        with self._lock:
            if signature in (self._loaded, self._refused):
                return None
        try:
            config = self._configuration()
        except TLSError as exc:
            with self._lock:
                self._refused = signature
            log.error("TLS files changed but cannot be used (%s); serving the loaded "
                      "certificate", exc)
            return None
        with self._lock:
            self._loaded, self._refused = signature, None
            self.reloads += 1
        log.info("TLS certificate reloaded from %s", self.tls.cert_file)
        return config


def server_credentials(tls: ServerTLS) -> tuple[grpc.ServerCredentials, CertificateFiles]:
    """Credentials that follow rotation of ``tls``'s files; raises :class:`TLSError` when they
    cannot be used now."""
    files = CertificateFiles(tls)
    initial = files.load()
    # The stubs say the fetcher returns a configuration; grpc documents None as "unchanged".
    fetch = cast("Callable[[], grpc.ServerCertificateConfiguration]", files.fetch)
    credentials = grpc.dynamic_ssl_server_credentials(
        initial, fetch, require_client_authentication=tls.mutual
    )
    return credentials, files


# -- client credentials --------------------------------------------------------------------------


def channel_credentials(tls: ClientTLS) -> grpc.ChannelCredentials:
    """Credentials of a channel from ``tls``'s files (read now); raises :class:`TLSError`."""
    ca_pem = key_pem = cert_pem = None
    if tls.ca_file is not None:
        ca_pem = _read(tls.ca_file)
        _certificates(tls.ca_file, ca_pem)
    if tls.cert_file is not None and tls.key_file is not None:
        cert_pem, key_pem = _read(tls.cert_file), _read(tls.key_file)
        not_after = _check_pair(tls.cert_file, cert_pem, tls.key_file, key_pem)
        CERTIFICATE_NOT_AFTER.labels(str(tls.cert_file)).set(not_after)
    return grpc.ssl_channel_credentials(ca_pem, key_pem, cert_pem)


def channel_options(tls: ClientTLS) -> list[tuple[str, Any]]:
    """Channel options that go with :func:`channel_credentials` (the server name override)."""
    if tls.server_name is None:
        return []
    return [("grpc.ssl_target_name_override", tls.server_name)]


# -- client names --------------------------------------------------------------------------------

_Context = grpc.aio.ServicerContext[Any, Any]


def peer_names(context: _Context) -> set[str]:
    """The DNS/URI subject alternative names and the common name of the client certificate."""
    auth = context.auth_context()
    names = [
        *auth.get("x509_subject_alternative_name", ()),
        *auth.get("x509_common_name", ()),
    ]
    return {n.decode(errors="replace").lower() for n in names}


class ClientNameInterceptor(grpc.aio.ServerInterceptor):
    """Refuses (PERMISSION_DENIED) calls whose client certificate carries none of ``names``.

    The CA check happens in the handshake; this narrows "any certificate of our CA" to "the
    engine's certificate" when the CA also signs other things. Health checks stay open.
    """

    def __init__(self, names: tuple[str, ...]) -> None:
        self._names = frozenset(n.lower() for n in names)
        self._cache: dict[str, tuple[object, Any]] = {}

    async def _check(self, request: object, context: _Context) -> None:
        if not peer_names(context) & self._names:
            raise PermissionDenied(
                "this client certificate is not one this service accepts: its names are not "
                "in the configured client names",
                reason="CLIENT_CERTIFICATE_NAME",
            )

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method in OPEN_METHODS:
            return handler
        cached = self._cache.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        guarded = guarded_handler(handler, self._check)
        self._cache[method] = (handler, guarded)
        return guarded
