"""Settings of the store service, read once from the environment at start-up.

Every variable is validated here, so that a typo stops the process with one line naming the
variable instead of failing later (or, worse, running with a silent default).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import psycopg.conninfo

from flowledger_core.limits import ID_LENGTH_CEILING, MIB, Limits, LimitsError
from flowledger_core.server.env import LOG_LEVELS, Env, SettingsError, parse_address
from flowledger_core.server.tls import ServerTLS, read_server_tls

__all__ = [
    "MEMORY_URL",
    "MIB",
    "Limits",
    "SettingsError",
    "StoreSettings",
    "parse_address",
]

MEMORY_URL = "memory:"
"""``DATABASE_URL`` value that selects the in-memory backend (development and tests only)."""

@dataclass(frozen=True)
class StoreSettings:
    database_url: str
    # The schema owner's connection string for migrations at start-up, when ``database_url`` is
    # the least-privileged role (docs/security.md); None: migrate with ``database_url``.
    migrate_database_url: str | None = None
    database_min_connections: int = 2
    database_max_connections: int = 16
    listen: str = "127.0.0.1:50051"
    metrics_listen: str = "127.0.0.1:9464"
    limits: Limits = field(default_factory=Limits)
    # Total time the backend may spend retrying transient database failures for one call.
    retry_budget_seconds: float = 10.0
    # In-flight calls get this long to finish after SIGTERM (keep it below the pod's
    # terminationGracePeriodSeconds, which defaults to 30).
    shutdown_grace_seconds: float = 20.0
    log_level: str = "INFO"
    # Security (docs/security.md): mutual TLS is the store's authentication (the engine is its
    # only client); plaintext only with ``insecure`` (FLOWLEDGER_INSECURE=1), never by default.
    insecure: bool = False
    tls: ServerTLS | None = None
    # A plaintext health-only port (kubelet probes cannot speak TLS); "" runs none.
    health_listen: str = ""

    def __post_init__(self) -> None:
        if self.tls is None and not self.insecure:
            raise SettingsError(
                "STORE_TLS_CERT_FILE",
                "the store would accept plaintext calls from anyone who can reach it: set "
                "STORE_TLS_CERT_FILE, STORE_TLS_KEY_FILE and STORE_TLS_CLIENT_CA_FILE, or "
                "FLOWLEDGER_INSECURE=1 to allow plaintext",
            )
        if self.tls is not None and not self.tls.mutual:
            raise SettingsError(
                "STORE_TLS_CLIENT_CA_FILE", "is required with TLS (the store needs mutual TLS)"
            )

    @property
    def backend(self) -> str:
        """``"memory"`` or ``"postgres"``."""
        return "memory" if self.database_url == MEMORY_URL else "postgres"

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> StoreSettings:
        """Build and validate the settings; raises :class:`SettingsError` naming the variable."""
        env = Env(environ)
        database_url = env.required(
            "DATABASE_URL",
            "a Postgres URL such as postgresql://user@host:5432/db, "
            f"or '{MEMORY_URL}' for the in-memory development backend",
        )
        if database_url != MEMORY_URL:
            _check_conninfo(database_url, "DATABASE_URL")
        migrate_url = env.optional("STORE_MIGRATE_DATABASE_URL")
        if migrate_url is not None:
            if database_url == MEMORY_URL:
                raise SettingsError(
                    "STORE_MIGRATE_DATABASE_URL", f"has no use with DATABASE_URL={MEMORY_URL}"
                )
            _check_conninfo(migrate_url, "STORE_MIGRATE_DATABASE_URL")
        min_conn = env.integer("DATABASE_MIN_CONNECTIONS", 2, minimum=0)
        # The Postgres backend needs two: appends and reads/the feed must not starve each other.
        max_conn = env.integer("DATABASE_MAX_CONNECTIONS", 16, minimum=2)
        if max_conn < min_conn:
            raise SettingsError(
                "DATABASE_MAX_CONNECTIONS",
                f"{max_conn} is below DATABASE_MIN_CONNECTIONS ({min_conn})",
            )
        defaults = Limits()
        limits_values = {
            "max_payload_bytes": env.integer(
                "STORE_MAX_PAYLOAD_BYTES", defaults.max_payload_bytes, minimum=1
            ),
            "max_message_bytes": env.integer(
                "STORE_MAX_MESSAGE_BYTES", defaults.max_message_bytes, minimum=1
            ),
            "max_events_per_append": env.integer(
                "STORE_MAX_EVENTS_PER_APPEND", defaults.max_events_per_append, minimum=1
            ),
            "max_artifacts_per_append": env.integer(
                "STORE_MAX_ARTIFACTS_PER_APPEND", defaults.max_artifacts_per_append, minimum=0
            ),
            "max_events_per_flow": env.integer(
                "STORE_MAX_EVENTS_PER_FLOW", defaults.max_events_per_flow, minimum=1
            ),
            "max_id_length": env.integer(
                "STORE_MAX_ID_LENGTH", defaults.max_id_length, minimum=1,
                maximum=ID_LENGTH_CEILING,
            ),
            "max_json_depth": env.integer(
                "STORE_MAX_JSON_DEPTH", defaults.max_json_depth, minimum=1, maximum=500
            ),
        }
        try:
            limits = Limits(**limits_values)
        except LimitsError as exc:
            raise SettingsError(exc.variable, exc.problem) from None
        return cls(
            database_url=database_url,
            migrate_database_url=migrate_url,
            database_min_connections=min_conn,
            database_max_connections=max_conn,
            listen=env.address("STORE_LISTEN", "127.0.0.1:50051"),
            metrics_listen=env.address("STORE_METRICS_LISTEN", "127.0.0.1:9464"),
            limits=limits,
            retry_budget_seconds=env.seconds("STORE_RETRY_BUDGET_SECONDS", 10.0),
            shutdown_grace_seconds=env.seconds("STORE_SHUTDOWN_GRACE_SECONDS", 20.0),
            log_level=env.choice("LOG_LEVEL", "INFO", LOG_LEVELS),
            insecure=env.flag("FLOWLEDGER_INSECURE"),
            tls=read_server_tls(env, "STORE", mutual=True),
            health_listen=env.address("STORE_HEALTH_LISTEN", ""),
        )


def _check_conninfo(url: str, variable: str) -> None:
    try:
        psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        # Neither the value nor libpq's message (which quotes it) is echoed: it may hold a password.
        raise SettingsError(
            variable,
            "is not a valid Postgres connection string "
            f"(postgresql://user@host:port/dbname, or '{MEMORY_URL}' for the in-memory backend)",
        ) from None
