"""Settings of the engine service (``python -m engine_service``), read once from the environment.

Every variable is validated here so that a typo stops the process with one line naming the
variable. Durations are milliseconds (``*_MS``) for the lease machinery, whose numbers people
compare with each other, and seconds (``*_SECONDS``) elsewhere, as in the store's settings.

The in-process core has its own :class:`engine_service.run.flow_host.EngineSettings` (snapshots,
read chunks); :meth:`ServiceSettings.engine_settings` derives it.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from engine_service.run.flow_host import EngineSettings
from engine_service.steps.egress import DEFAULT_POLICY, EgressPolicy
from engine_service.steps.egress import VARIABLE as EGRESS_ALLOW
from engine_service.store_client.retry import StoreClientSettings
from engine_service.work.local_logs import LocalLogLimits
from flowledger_core.server.auth_settings import AuthSettings, read_auth
from flowledger_core.server.auth_tokens import Authenticator, FileError
from flowledger_core.server.env import LOG_LEVELS, Env, SettingsError
from flowledger_core.server.tls import ClientTLS, ServerTLS, read_client_tls, read_server_tls

__all__ = ["ServiceSettings", "SettingsError"]

# store.proto: ClaimFlowsRequest.lease_ms is 100..600000, limit 1..100.
_LEASE_MS_RANGE = (100, 600_000)
_MAX_CLAIM_BATCH = 100
_MAX_ID = 128


@dataclass(frozen=True)
class ServiceSettings:
    store_addr: str = "127.0.0.1:50051"
    listen: str = "127.0.0.1:50052"
    metrics_listen: str = "127.0.0.1:9465"
    # Lease owner name of this replica (diagnostics only; fencing tokens decide who may write).
    engine_id: str = ""
    # A claimed flow is this replica's for lease_ms unless renewed; a killed replica's flows are
    # taken over at most lease_ms (+ one poll) after its last renewal.
    lease_ms: int = 10_000
    # Renewal period; at most a third of the lease, so two renewals may fail before it expires.
    heartbeat_ms: int = 3_333
    # Flows claimed per ClaimFlows call, and how often idle replicas look for work.
    claim_batch: int = 16
    poll_ms: int = 500
    # Flows this replica runs at once (each holds a lease).
    max_concurrent_flows: int = 64
    # Unconsumed signals a flow may hold; SignalFlow past it is RESOURCE_EXHAUSTED.
    max_pending_signals: int = 1000
    # WatchFlow's local logs of the flows this replica created (engine_service.work.local_logs):
    # how many flows, events per flow and bytes in all are kept; 0 flows keeps none.
    watch_log_flows: int = 4096
    watch_log_events: int = 1000
    watch_log_bytes: int = 64 * 1024 * 1024
    # Only flows of these namespaces (empty: all).
    namespaces: tuple[str, ...] = ()
    snapshot_every: int = 100
    # Store client: one attempt's deadline and the total retry budget of one call.
    store_call_timeout_seconds: float = 10.0
    store_retry_budget_seconds: float = 30.0
    # How often the store's health is probed (health NOT_SERVING while it is unreachable).
    store_probe_seconds: float = 1.0
    # Step types beyond the ``flowledger.steps`` entry points (which include the samples):
    # ``module:attr`` entries, each a StepType or a callable taking the registry.
    step_plugins: tuple[str, ...] = ()
    # After SIGTERM: time for in-flight steps and calls to finish before leases are released.
    shutdown_grace_seconds: float = 20.0
    max_message_bytes: int = 8 * 1024 * 1024
    log_level: str = "INFO"
    # Security (docs/security.md). Plaintext and unauthenticated access are never defaults:
    # ``insecure`` allows plaintext wherever no TLS is configured (clients, the store channel),
    # ``auth_disabled`` accepts every caller; from_env sets them only from FLOWLEDGER_INSECURE=1
    # and ENGINE_AUTH_DISABLED=1.
    insecure: bool = False
    tls: ServerTLS | None = None
    store_tls: ClientTLS | None = None
    auth: AuthSettings | None = None
    auth_disabled: bool = False
    # A plaintext health-only port (kubelet probes cannot speak TLS); "" runs none.
    health_listen: str = ""
    # Where the http and field_update steps may connect (engine_service/steps/egress.py): public
    # addresses, plus ENGINE_EGRESS_ALLOW; ENGINE_EGRESS_DENY_PORTS adds ports to the services'
    # own (refused on non-public addresses unless an allow entry names the port).
    egress: EgressPolicy = DEFAULT_POLICY
    egress_deny_ports: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not self.engine_id:
            object.__setattr__(self, "engine_id", default_engine_id())
        _check_security(self)
        if self.heartbeat_ms * 2 > self.lease_ms:
            raise SettingsError(
                "ENGINE_HEARTBEAT_MS",
                f"{self.heartbeat_ms} must be at most half of ENGINE_LEASE_MS ({self.lease_ms}), "
                "or a single slow renewal would lose the lease",
            )

    def egress_policy(self) -> EgressPolicy:
        """``egress`` with this replica's own ports and the store's added to the refused."""
        addresses = (self.store_addr, self.listen, self.metrics_listen, self.health_listen)
        ports = [int(a.rpartition(":")[2]) for a in addresses if a.rpartition(":")[2].isdigit()]
        return self.egress.with_own_ports([p for p in ports if p] + list(self.egress_deny_ports))

    def watch_log_limits(self) -> LocalLogLimits:
        return LocalLogLimits(self.watch_log_flows, self.watch_log_events, self.watch_log_bytes)

    def engine_settings(self) -> EngineSettings:
        return EngineSettings(snapshot_every=self.snapshot_every)

    def store_client_settings(self) -> StoreClientSettings:
        return StoreClientSettings(
            call_timeout=self.store_call_timeout_seconds,
            retry_budget=self.store_retry_budget_seconds,
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> ServiceSettings:
        """Build and validate the settings; raises :class:`SettingsError` naming the variable."""
        env = _EngineEnv(environ)
        lease_ms = env.integer("ENGINE_LEASE_MS", 10_000, *_LEASE_MS_RANGE)
        default_heartbeat = max(50, lease_ms // 3)
        heartbeat_ms = env.integer("ENGINE_HEARTBEAT_MS", default_heartbeat, 10, lease_ms)
        call_timeout = env.seconds("ENGINE_STORE_CALL_TIMEOUT_SECONDS", 10.0, positive=True)
        budget = env.seconds("ENGINE_STORE_RETRY_BUDGET_SECONDS", 30.0, positive=True)
        if budget < call_timeout:
            raise SettingsError(
                "ENGINE_STORE_RETRY_BUDGET_SECONDS",
                f"{budget:g} is below ENGINE_STORE_CALL_TIMEOUT_SECONDS ({call_timeout:g})",
            )
        return cls(
            store_addr=env.address("STORE_ADDR", "127.0.0.1:50051"),
            listen=env.address("ENGINE_LISTEN", "127.0.0.1:50052"),
            metrics_listen=env.address("ENGINE_METRICS_LISTEN", "127.0.0.1:9465", allow_off=True),
            engine_id=env.identifier("ENGINE_ID", default_engine_id()),
            lease_ms=lease_ms,
            heartbeat_ms=heartbeat_ms,
            claim_batch=env.integer("ENGINE_CLAIM_BATCH", 16, 1, _MAX_CLAIM_BATCH),
            poll_ms=env.integer("ENGINE_POLL_MS", 500, 10, 60_000),
            max_concurrent_flows=env.integer("ENGINE_MAX_CONCURRENT_FLOWS", 64, 1, 10_000),
            max_pending_signals=env.integer("ENGINE_MAX_PENDING_SIGNALS", 1000, 1, 1_000_000),
            watch_log_flows=env.integer("ENGINE_WATCH_LOG_FLOWS", 4096, 0, 1_000_000),
            watch_log_events=env.integer("ENGINE_WATCH_LOG_EVENTS", 1000, 1, 1_000_000),
            watch_log_bytes=env.integer(
                "ENGINE_WATCH_LOG_BYTES", 64 * 1024 * 1024, 0, 1024 * 1024 * 1024 * 1024
            ),
            namespaces=env.identifiers("ENGINE_NAMESPACES"),
            snapshot_every=env.integer("ENGINE_SNAPSHOT_EVERY", 100, 0, 1_000_000),
            store_call_timeout_seconds=call_timeout,
            store_retry_budget_seconds=budget,
            store_probe_seconds=env.seconds("ENGINE_STORE_PROBE_SECONDS", 1.0, positive=True),
            step_plugins=env.plugins("ENGINE_STEP_PLUGINS"),
            shutdown_grace_seconds=env.seconds("ENGINE_SHUTDOWN_GRACE_SECONDS", 20.0),
            max_message_bytes=env.integer(
                "ENGINE_MAX_MESSAGE_BYTES", 8 * 1024 * 1024, 64 * 1024, 1024 * 1024 * 1024
            ),
            log_level=env.choice("LOG_LEVEL", "INFO", LOG_LEVELS),
            egress=_egress(env),
            egress_deny_ports=_ports(env, "ENGINE_EGRESS_DENY_PORTS"),
            **_security(env),
        )


def _egress(env: Env) -> EgressPolicy:
    text = env.optional(EGRESS_ALLOW)
    if text is None:
        return DEFAULT_POLICY
    try:
        return EgressPolicy.parse(text)
    except ValueError as exc:
        raise SettingsError(EGRESS_ALLOW, str(exc)) from None


def _ports(env: Env, name: str) -> tuple[int, ...]:
    text = env.optional(name)
    if text is None:
        return ()
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not all(p.isdigit() and 1 <= int(p) <= 65535 for p in parts):
        raise SettingsError(name, f"{text!r} is not a comma-separated list of ports 1..65535")
    return tuple(int(p) for p in parts)


def _security(env: Env) -> dict[str, Any]:
    auth, auth_disabled = read_auth(env)
    if auth is not None:
        try:
            Authenticator(auth)  # reads the token, key or JWKS file now
        except FileError as exc:
            name = "ENGINE_AUTH_TOKEN_FILE" if auth.jwt is None else "ENGINE_AUTH_JWT_KEY_FILE"
            if auth.jwt is not None and auth.jwt.jwks_file is not None:
                name = "ENGINE_AUTH_JWKS_FILE"
            if auth.token_file is not None and str(auth.token_file) in str(exc):
                name = "ENGINE_AUTH_TOKEN_FILE"
            raise SettingsError(name, str(exc)) from None
    store_tls = read_client_tls(env, "ENGINE_STORE")
    if store_tls is not None and store_tls.cert_file is None:
        raise SettingsError(
            "ENGINE_STORE_TLS_CERT_FILE",
            "is required with ENGINE_STORE_TLS_CA_FILE: the store accepts only clients with a "
            "certificate (mutual TLS); set it and ENGINE_STORE_TLS_KEY_FILE",
        )
    return {
        "insecure": env.flag("FLOWLEDGER_INSECURE"),
        "tls": read_server_tls(env, "ENGINE", mutual=False),
        "store_tls": store_tls,
        "auth": auth,
        "auth_disabled": auth_disabled,
        "health_listen": env.address("ENGINE_HEALTH_LISTEN", ""),
    }


def _check_security(s: ServiceSettings) -> None:
    if s.tls is None and not s.insecure:
        raise SettingsError(
            "ENGINE_TLS_CERT_FILE",
            "clients would connect in plaintext: set ENGINE_TLS_CERT_FILE and "
            "ENGINE_TLS_KEY_FILE, or FLOWLEDGER_INSECURE=1 to allow plaintext",
        )
    if s.store_tls is None and not s.insecure:
        raise SettingsError(
            "ENGINE_STORE_TLS_CA_FILE",
            "the store would be reached in plaintext: set ENGINE_STORE_TLS_CA_FILE, "
            "ENGINE_STORE_TLS_CERT_FILE and ENGINE_STORE_TLS_KEY_FILE, or FLOWLEDGER_INSECURE=1",
        )
    if s.auth is None and not s.auth_disabled:
        raise SettingsError(
            "ENGINE_AUTH_TOKEN_FILE",
            "no authentication is configured: set ENGINE_AUTH_TOKEN_FILE and/or the "
            "ENGINE_AUTH_JWT_* settings, or ENGINE_AUTH_DISABLED=1 to accept every caller",
        )
    if s.auth is not None and s.auth_disabled:
        raise SettingsError("ENGINE_AUTH_DISABLED", "is set together with a token source")


def default_engine_id() -> str:
    """``<hostname>-<pid>``: unique per replica process, readable in lease diagnostics."""
    host = "".join(c if c.isalnum() or c in "._-" else "-" for c in socket.gethostname())
    return f"{host or 'engine'}-{os.getpid()}"[-_MAX_ID:]


class _EngineEnv(Env):
    """The shared readers plus the engine-only ones (identifiers, step plugins)."""

    def identifier(self, name: str, default: str) -> str:
        text = self.optional(name)
        return default if text is None else _identifier(name, text)

    def identifiers(self, name: str) -> tuple[str, ...]:
        """A comma-separated list of identifiers (empty: none)."""
        text = self.optional(name)
        if text is None:
            return ()
        return tuple(_identifier(name, part.strip()) for part in text.split(","))

    def plugins(self, name: str) -> tuple[str, ...]:
        text = self.optional(name)
        if text is None:
            return ()
        entries = tuple(part.strip() for part in text.split(",") if part.strip())
        for entry in entries:
            module, sep, attr = entry.partition(":")
            if not sep or not module or not attr or not all(
                piece.isidentifier() for piece in (*module.split("."), *attr.split("."))
            ):
                raise SettingsError(
                    name, f"{entry!r} is not of the form package.module:attribute"
                )
        return entries


def _identifier(name: str, text: str) -> str:
    if not 1 <= len(text) <= _MAX_ID or not all(c.isalnum() or c in "._:-" for c in text):
        raise SettingsError(
            name, f"{text!r} must be 1..{_MAX_ID} characters of letters, digits and . _ : -"
        )
    return text
