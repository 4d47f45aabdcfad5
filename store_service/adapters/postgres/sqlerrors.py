"""The one seam where database errors become flowledger errors.

:func:`transient_reason` says whether a failure may be retried (and why, as the label of
``flowledger_store_retries_total``); :func:`translate` turns a failure that may not be retried into
the flowledger error callers see. Raw database text never leaves this module: it is logged with a
short reference that the generic message carries, so an operator can find it.
"""

from __future__ import annotations

import logging
import uuid
from typing import Literal

import psycopg
import psycopg_pool

from flowledger.errors import (
    Aborted,
    DeadlineExceeded,
    FlowledgerError,
    InternalError,
    InvalidArgument,
    ResourceExhausted,
    Unavailable,
)

log = logging.getLogger(__name__)

RetryReason = Literal["serialization", "deadlock", "connection"]

# Server states meaning "this connection (or server) is going away / not reachable right now".
_CONNECTION_SQLSTATES = frozenset(
    {
        "57P01",  # admin_shutdown
        "57P02",  # crash_shutdown
        "57P03",  # cannot_connect_now (starting up, recovering)
        "53300",  # too_many_connections
        "40003",  # statement_completion_unknown
        "25006",  # read_only_sql_transaction: connected to a standby after a failover
    }
)

# Unique keys that only a concurrent writer bypassing our row locks could violate; re-running the
# operation re-reads the state and decides again, so they are retried like serialization failures.
RETRYABLE_UNIQUE_CONSTRAINTS = frozenset(
    {"event_log_flow_generation_version_key", "flow_commands_pkey", "flow_generations_pkey"}
)


def transient_reason(exc: BaseException) -> RetryReason | None:
    """The retry reason when ``exc`` is transient, else None."""
    if isinstance(exc, psycopg_pool.PoolClosed):
        return None  # the store is shutting down: retrying cannot help
    if isinstance(exc, psycopg_pool.PoolTimeout | psycopg_pool.TooManyRequests):
        return "connection"
    if not isinstance(exc, psycopg.Error):
        return None
    state = exc.sqlstate
    if state == "40001":
        return "serialization"
    if state == "40P01":
        return "deadlock"
    if state == "23505" and exc.diag.constraint_name in RETRYABLE_UNIQUE_CONSTRAINTS:
        return "serialization"
    if state is not None and (state.startswith("08") or state in _CONNECTION_SQLSTATES):
        return "connection"
    # Client-side failures (server closed the connection, "the connection is closed", connect
    # timeouts) carry no SQLSTATE.
    if state is None and isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        return "connection"
    return None


def exhausted(reason: RetryReason, attempts: int) -> FlowledgerError:
    """The error for a transient failure that outlived the retry budget."""
    if reason == "connection":
        return Unavailable(
            "the database could not be reached within the retry budget; retry later "
            "(a repeated command id makes that safe)",
            reason="DATABASE_UNAVAILABLE",
            metadata={"attempts": str(attempts)},
        )
    return Aborted(
        f"the operation kept conflicting with concurrent writers ({reason}); retry it",
        reason="TRANSIENT_CONFLICT",
        metadata={"retry_reason": reason, "attempts": str(attempts)},
    )


def translate(exc: BaseException) -> FlowledgerError:
    """The flowledger error for a non-transient failure (logged here with a reference)."""
    if isinstance(exc, FlowledgerError):
        return exc
    if isinstance(exc, psycopg_pool.PoolClosed):
        return Unavailable("the store is shutting down; retry later", reason="SHUTTING_DOWN")
    state = exc.sqlstate if isinstance(exc, psycopg.Error) else None
    ref = uuid.uuid4().hex[:12]
    log.warning("database error ref=%s sqlstate=%s: %r", ref, state, exc, exc_info=exc)
    if state is not None and state.startswith("22"):
        # Data exceptions come from values callers sent (invalid JSON, \u0000 in jsonb text, ...).
        return InvalidArgument(
            f"a value could not be stored: it is not valid JSON or contains text Postgres cannot "
            f"store, such as \\u0000 (ref {ref})",
            reason="UNSTORABLE_VALUE",
        )
    if state == "54000":
        return ResourceExhausted(f"a value exceeds a database limit (ref {ref})")
    if state == "57014":
        return DeadlineExceeded(f"the database cancelled a statement that ran too long (ref {ref})")
    return InternalError(f"internal database error (ref {ref})")
