"""ServiceSettings.from_env: defaults, every variable, and one error naming the variable."""

from __future__ import annotations

import os

import pytest

from engine_service.settings import ServiceSettings, SettingsError

# Plaintext and no authentication must be asked for (tests/security covers the rest).
OPEN = {"FLOWLEDGER_INSECURE": "1", "ENGINE_AUTH_DISABLED": "1"}


def test_defaults() -> None:
    settings = ServiceSettings.from_env(OPEN)
    assert settings.store_addr == "127.0.0.1:50051"
    assert settings.listen == "127.0.0.1:50052"
    assert settings.metrics_listen == "127.0.0.1:9465"
    assert settings.engine_id.endswith(f"-{os.getpid()}")
    assert (settings.lease_ms, settings.heartbeat_ms) == (10_000, 3_333)
    assert (settings.claim_batch, settings.poll_ms, settings.snapshot_every) == (16, 500, 100)
    assert settings.step_plugins == ()
    assert settings.engine_settings().snapshot_every == 100
    client = settings.store_client_settings()
    assert (client.call_timeout, client.retry_budget) == (10.0, 30.0)


def test_every_variable_is_read() -> None:
    settings = ServiceSettings.from_env({
        **OPEN,
        "STORE_ADDR": "store:1", "ENGINE_LISTEN": "[::]:7", "ENGINE_METRICS_LISTEN": "off",
        "ENGINE_ID": "replica-a", "ENGINE_LEASE_MS": "3000", "ENGINE_HEARTBEAT_MS": "500",
        "ENGINE_CLAIM_BATCH": "4", "ENGINE_POLL_MS": "20", "ENGINE_MAX_CONCURRENT_FLOWS": "3",
        "ENGINE_NAMESPACES": "a,b.c", "ENGINE_SNAPSHOT_EVERY": "0",
        "ENGINE_STORE_CALL_TIMEOUT_SECONDS": "1.5", "ENGINE_STORE_RETRY_BUDGET_SECONDS": "4",
        "ENGINE_STORE_PROBE_SECONDS": "0.5", "ENGINE_STEP_PLUGINS": "a.b:c, d:e.f",
        "ENGINE_SHUTDOWN_GRACE_SECONDS": "0", "ENGINE_MAX_MESSAGE_BYTES": "65536",
        "LOG_LEVEL": "debug",
    })
    assert settings == ServiceSettings(
        store_addr="store:1", listen="[::]:7", metrics_listen="", engine_id="replica-a",
        lease_ms=3000, heartbeat_ms=500, claim_batch=4, poll_ms=20, max_concurrent_flows=3,
        namespaces=("a", "b.c"), snapshot_every=0, store_call_timeout_seconds=1.5,
        store_retry_budget_seconds=4.0, store_probe_seconds=0.5, step_plugins=("a.b:c", "d:e.f"),
        shutdown_grace_seconds=0.0, max_message_bytes=65536, log_level="DEBUG",
        insecure=True, auth_disabled=True,
    )


def test_the_heartbeat_defaults_to_a_third_of_the_lease() -> None:
    assert ServiceSettings.from_env({**OPEN, "ENGINE_LEASE_MS": "900"}).heartbeat_ms == 300


@pytest.mark.parametrize(
    ("environ", "variable"),
    [
        ({"ENGINE_LEASE_MS": "99"}, "ENGINE_LEASE_MS"),
        ({"ENGINE_LEASE_MS": "600001"}, "ENGINE_LEASE_MS"),
        ({"ENGINE_LEASE_MS": "1000", "ENGINE_HEARTBEAT_MS": "501"}, "ENGINE_HEARTBEAT_MS"),
        ({"ENGINE_CLAIM_BATCH": "101"}, "ENGINE_CLAIM_BATCH"),
        ({"ENGINE_POLL_MS": "x"}, "ENGINE_POLL_MS"),
        ({"ENGINE_NAMESPACES": "a,,b"}, "ENGINE_NAMESPACES"),
        ({"ENGINE_STORE_CALL_TIMEOUT_SECONDS": "0"}, "ENGINE_STORE_CALL_TIMEOUT_SECONDS"),
        ({"ENGINE_STORE_CALL_TIMEOUT_SECONDS": "5", "ENGINE_STORE_RETRY_BUDGET_SECONDS": "1"},
         "ENGINE_STORE_RETRY_BUDGET_SECONDS"),
        ({"ENGINE_SHUTDOWN_GRACE_SECONDS": "inf"}, "ENGINE_SHUTDOWN_GRACE_SECONDS"),
        ({"ENGINE_METRICS_LISTEN": "9465"}, "ENGINE_METRICS_LISTEN"),
        ({"ENGINE_STEP_PLUGINS": "module_without_attribute"}, "ENGINE_STEP_PLUGINS"),
        ({"LOG_LEVEL": "loud"}, "LOG_LEVEL"),
    ],
)
def test_a_bad_variable_is_named(environ: dict[str, str], variable: str) -> None:
    with pytest.raises(SettingsError) as info:
        ServiceSettings.from_env({**OPEN, **environ})
    assert info.value.variable == variable
    assert str(info.value).startswith(variable)
