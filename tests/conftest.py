"""Shared fixtures live in plugin modules under tests/fixtures/ (as psycopg's tests do)."""

pytest_plugins = [
    "tests.fixtures.postgres",
    "tests.fixtures.tcp_proxy",
    "tests.fixtures.store_server",
    "tests.fixtures.store_client",
]
