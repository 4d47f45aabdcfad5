"""The Postgres backend of the storage port (psycopg 3, async, pooled).

``PostgresEventStore`` and ``apply_migrations`` are imported lazily, so that importing one module
of the backend (the migration command imports only :mod:`.migrate`) does not import them all.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from store_service.adapters.postgres.migrate import apply_migrations
    from store_service.adapters.postgres.store import PostgresEventStore

__all__ = ["PostgresEventStore", "apply_migrations"]


def __getattr__(name: str) -> Any:
    if name == "PostgresEventStore":
        from store_service.adapters.postgres.store import PostgresEventStore

        return PostgresEventStore
    if name == "apply_migrations":
        from store_service.adapters.postgres.migrate import apply_migrations

        return apply_migrations
    raise AttributeError(name)
