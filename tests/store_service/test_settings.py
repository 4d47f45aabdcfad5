"""StoreSettings.from_env: defaults, overrides, and errors that name the variable."""

from __future__ import annotations

import pytest

from store_service.settings import MIB, SettingsError, StoreSettings, parse_address

# Plaintext must be asked for (tests/security covers TLS).
OPEN = {"FLOWLEDGER_INSECURE": "1"}


def test_defaults() -> None:
    s = StoreSettings.from_env({**OPEN, "DATABASE_URL": "postgresql://app@db:5432/flowledger"})
    assert s.backend == "postgres"
    assert (s.database_min_connections, s.database_max_connections) == (2, 16)
    assert (s.listen, s.metrics_listen) == ("127.0.0.1:50051", "127.0.0.1:9464")
    assert s.limits.max_payload_bytes == 2 * MIB
    assert s.limits.max_message_bytes == 4 * MIB
    assert s.limits.max_id_length == 128
    assert s.shutdown_grace_seconds > 0
    assert s.retry_budget_seconds > 0


def test_overrides() -> None:
    s = StoreSettings.from_env({
        **OPEN,
        "DATABASE_URL": "memory:",
        "DATABASE_MIN_CONNECTIONS": "4",
        "DATABASE_MAX_CONNECTIONS": "32",
        "STORE_LISTEN": "[::]:6000",
        "STORE_METRICS_LISTEN": "0.0.0.0:0",
        "STORE_MAX_PAYLOAD_BYTES": "1048576",
        "STORE_MAX_EVENTS_PER_APPEND": "10",
        "STORE_SHUTDOWN_GRACE_SECONDS": "2.5",
        "LOG_LEVEL": "debug",
    })
    assert s.backend == "memory"
    assert (s.database_min_connections, s.database_max_connections) == (4, 32)
    assert s.listen == "[::]:6000"
    assert s.metrics_listen == "0.0.0.0:0"
    assert s.limits.max_payload_bytes == MIB
    assert s.limits.max_events_per_append == 10
    assert s.shutdown_grace_seconds == 2.5
    assert s.log_level == "DEBUG"


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({}, "DATABASE_URL"),
        ({"DATABASE_URL": "   "}, "DATABASE_URL"),
        ({"DATABASE_URL": "host=db port"}, "DATABASE_URL"),
        ({"DATABASE_MIN_CONNECTIONS": "-1"}, "DATABASE_MIN_CONNECTIONS"),
        ({"DATABASE_MAX_CONNECTIONS": "1"}, "DATABASE_MAX_CONNECTIONS"),
        ({"DATABASE_MIN_CONNECTIONS": "8", "DATABASE_MAX_CONNECTIONS": "4"},
         "DATABASE_MAX_CONNECTIONS"),
        ({"STORE_LISTEN": "50051"}, "STORE_LISTEN"),
        ({"STORE_METRICS_LISTEN": "localhost:99999"}, "STORE_METRICS_LISTEN"),
        ({"STORE_MAX_PAYLOAD_BYTES": "2x"}, "STORE_MAX_PAYLOAD_BYTES"),
        ({"STORE_MAX_PAYLOAD_BYTES": str(4 * MIB)}, "STORE_MAX_PAYLOAD_BYTES"),
        ({"STORE_MAX_ID_LENGTH": "500"}, "STORE_MAX_ID_LENGTH"),
        ({"STORE_SHUTDOWN_GRACE_SECONDS": "nan"}, "STORE_SHUTDOWN_GRACE_SECONDS"),
        ({"STORE_RETRY_BUDGET_SECONDS": "-3"}, "STORE_RETRY_BUDGET_SECONDS"),
        ({"LOG_LEVEL": "chatty"}, "LOG_LEVEL"),
    ],
)
def test_errors_name_the_variable(env: dict[str, str], variable: str) -> None:
    full = {"DATABASE_URL": "memory:", **env} if "DATABASE_URL" not in env and env else env
    with pytest.raises(SettingsError) as caught:
        StoreSettings.from_env({**OPEN, **full})
    assert caught.value.variable == variable
    assert str(caught.value).startswith(variable + ":")


def test_a_malformed_url_is_not_echoed() -> None:
    with pytest.raises(SettingsError) as caught:
        StoreSettings.from_env({"DATABASE_URL": "host=db password=s3cret port"})
    assert "s3cret" not in str(caught.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("127.0.0.1:50051", ("127.0.0.1", 50051)), ("[::1]:0", ("::1", 0)),
     ("localhost:9464", ("localhost", 9464))],
)
def test_parse_address(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text) == expected
