"""Throwaway local servers for tests and local use (not for production)."""

from flowctl.devserver.postgres import LocalPostgres, PostgresNotFoundError, find_bindir

__all__ = ["LocalPostgres", "PostgresNotFoundError", "find_bindir"]
