"""Security settings from the environment: plaintext and open access only when asked for, every
variable read, and a bad one named. Plus both services as real processes, secured."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest

from engine_service.settings import ServiceSettings
from flowledger.v1 import engine_pb2
from flowledger_core.server.auth_settings import AuthSettings, JwtSettings, RateLimit
from flowledger_core.server.env import SettingsError
from flowledger_core.server.tls import ClientTLS, ServerTLS
from store_service.settings import StoreSettings
from tests.engine_service.api.processes import base_env, free_port, service_process
from tests.security.helpers import AUDIENCE, ISSUER, Keys, Pki, call, engine

OPEN = {"FLOWLEDGER_INSECURE": "1", "ENGINE_AUTH_DISABLED": "1"}


def engine_tls_env(pki: Pki) -> dict[str, str]:
    return {
        "ENGINE_TLS_CERT_FILE": str(pki.engine_server.cert_file),
        "ENGINE_TLS_KEY_FILE": str(pki.engine_server.key_file),
        "ENGINE_STORE_TLS_CA_FILE": str(pki.ca.cert_file),
        "ENGINE_STORE_TLS_CERT_FILE": str(pki.engine_client.cert_file),
        "ENGINE_STORE_TLS_KEY_FILE": str(pki.engine_client.key_file),
    }


def jwt_env(keys: Keys) -> dict[str, str]:
    return {
        "ENGINE_AUTH_JWT_KEY_FILE": str(keys.public_file),
        "ENGINE_AUTH_JWT_ISSUER": ISSUER,
        "ENGINE_AUTH_JWT_AUDIENCE": AUDIENCE,
    }


def store_tls_env(pki: Pki) -> dict[str, str]:
    return {
        "DATABASE_URL": "memory:",
        "STORE_TLS_CERT_FILE": str(pki.store.cert_file),
        "STORE_TLS_KEY_FILE": str(pki.store.key_file),
        "STORE_TLS_CLIENT_CA_FILE": str(pki.ca.cert_file),
    }


def test_every_engine_security_variable_is_read(pki: Pki, keys: Keys, token_file: Path) -> None:
    settings = ServiceSettings.from_env({
        **engine_tls_env(pki),
        "ENGINE_TLS_CLIENT_CA_FILE": str(pki.ca.cert_file),
        "ENGINE_TLS_CLIENT_NAMES": "a.example, b.example",
        "ENGINE_STORE_TLS_SERVER_NAME": "store.flowledger",
        "ENGINE_AUTH_TOKEN_FILE": str(token_file),
        **jwt_env(keys),
        "ENGINE_AUTH_JWT_ALGORITHMS": "ES256,RS256",
        "ENGINE_AUTH_JWT_LEEWAY_SECONDS": "5",
        "ENGINE_AUTH_RATE_LIMIT_PER_SECOND": "50",
        "ENGINE_AUTH_RATE_LIMIT_BURST": "200",
        "ENGINE_HEALTH_LISTEN": "0.0.0.0:8081",
    })
    assert settings.tls == ServerTLS(pki.engine_server.cert_file, pki.engine_server.key_file,
                                     pki.ca.cert_file, ("a.example", "b.example"))
    assert settings.store_tls == ClientTLS(pki.ca.cert_file, pki.engine_client.cert_file,
                                           pki.engine_client.key_file, "store.flowledger")
    assert settings.auth == AuthSettings(
        token_file=token_file,
        jwt=JwtSettings(ISSUER, AUDIENCE, keys.public_file, None, ("ES256", "RS256"), 5.0),
        rate_limit=RateLimit(50.0, 200),
    )
    assert (settings.insecure, settings.auth_disabled) == (False, False)
    assert settings.health_listen == "0.0.0.0:8081"


def test_every_store_security_variable_is_read(pki: Pki) -> None:
    settings = StoreSettings.from_env({
        **store_tls_env(pki),
        "STORE_TLS_CLIENT_NAMES": "engine.flowledger",
        "STORE_HEALTH_LISTEN": "0.0.0.0:8082",
    })
    assert settings.tls == ServerTLS(pki.store.cert_file, pki.store.key_file, pki.ca.cert_file,
                                     ("engine.flowledger",))
    assert (settings.insecure, settings.health_listen) == (False, "0.0.0.0:8082")


def test_plaintext_and_open_access_are_explicit() -> None:
    settings = ServiceSettings.from_env(OPEN)
    assert (settings.tls, settings.store_tls, settings.auth) == (None, None, None)
    assert (settings.insecure, settings.auth_disabled) == (True, True)
    store = StoreSettings.from_env({"DATABASE_URL": "memory:", "FLOWLEDGER_INSECURE": "yes"})
    assert store.insecure


def _engine_cases(pki: Pki, keys: Keys, tmp: Path) -> dict[str, tuple[dict[str, str], str]]:
    tls, jwt = engine_tls_env(pki), jwt_env(keys)
    broken = tmp / "broken.pem"
    broken.write_text("not a pem")
    return {
        "nothing said": ({}, "ENGINE_TLS_CERT_FILE"),
        "no store TLS": ({**{k: v for k, v in tls.items() if "STORE" not in k}, **jwt},
                         "ENGINE_STORE_TLS_CA_FILE"),
        "no authentication": (tls, "ENGINE_AUTH_TOKEN_FILE"),
        "auth and disabled": ({**tls, **jwt, "ENGINE_AUTH_DISABLED": "1"},
                              "ENGINE_AUTH_DISABLED"),
        "key of another cert": ({**tls, **jwt,
                                 "ENGINE_TLS_KEY_FILE": str(pki.engine_client.key_file)},
                                "ENGINE_TLS_KEY_FILE"),
        "missing file": ({**tls, **jwt, "ENGINE_TLS_CERT_FILE": str(tmp / "nope.pem")},
                         "ENGINE_TLS_CERT_FILE"),
        "not a certificate": ({**tls, **jwt, "ENGINE_TLS_CERT_FILE": str(broken)},
                              "ENGINE_TLS_CERT_FILE"),
        "store CA without a client cert": (
            {**{k: v for k, v in tls.items()
                if k not in ("ENGINE_STORE_TLS_CERT_FILE", "ENGINE_STORE_TLS_KEY_FILE")},
             **jwt}, "ENGINE_STORE_TLS_CERT_FILE"),
        "client names without client CA": ({**tls, **jwt, "ENGINE_TLS_CLIENT_NAMES": "a"},
                                           "ENGINE_TLS_CLIENT_NAMES"),
        "no issuer": ({**tls, **{k: v for k, v in jwt.items() if "ISSUER" not in k}},
                      "ENGINE_AUTH_JWT_ISSUER"),
        "no audience": ({**tls, **{k: v for k, v in jwt.items() if "AUDIENCE" not in k}},
                        "ENGINE_AUTH_JWT_AUDIENCE"),
        "key and key set": ({**tls, **jwt, "ENGINE_AUTH_JWKS_FILE": str(keys.jwks_file)},
                            "ENGINE_AUTH_JWKS_FILE"),
        "symmetric algorithm": ({**tls, **jwt, "ENGINE_AUTH_JWT_ALGORITHMS": "HS256"},
                                "ENGINE_AUTH_JWT_ALGORITHMS"),
        "unreadable key": ({**tls, **jwt, "ENGINE_AUTH_JWT_KEY_FILE": str(broken)},
                           "ENGINE_AUTH_JWT_KEY_FILE"),
        "broken token file": ({**tls, "ENGINE_AUTH_TOKEN_FILE": str(broken)},
                              "ENGINE_AUTH_TOKEN_FILE"),
        "limit without auth": ({**OPEN, "ENGINE_AUTH_RATE_LIMIT_PER_SECOND": "5"},
                               "ENGINE_AUTH_RATE_LIMIT_PER_SECOND"),
        "not a flag": ({"FLOWLEDGER_INSECURE": "maybe"}, "FLOWLEDGER_INSECURE"),
    }


ENGINE_CASES = [
    "nothing said", "no store TLS", "no authentication", "auth and disabled",
    "key of another cert", "missing file", "not a certificate", "store CA without a client cert",
    "client names without client CA", "no issuer", "no audience", "key and key set",
    "symmetric algorithm", "unreadable key", "broken token file", "limit without auth",
    "not a flag",
]


@pytest.mark.parametrize("case", ENGINE_CASES)
def test_a_bad_engine_security_setting_is_named(
    pki: Pki, keys: Keys, tmp_path: Path, case: str
) -> None:
    environ, variable = _engine_cases(pki, keys, tmp_path)[case]
    with pytest.raises(SettingsError) as caught:
        ServiceSettings.from_env(environ)
    assert caught.value.variable == variable, caught.value


@pytest.mark.parametrize(
    ("change", "variable"),
    [
        ({"STORE_TLS_CERT_FILE": "", "STORE_TLS_KEY_FILE": "", "STORE_TLS_CLIENT_CA_FILE": ""},
         "STORE_TLS_CERT_FILE"),
        ({"STORE_TLS_CLIENT_CA_FILE": ""}, "STORE_TLS_CLIENT_CA_FILE"),
        ({"STORE_TLS_KEY_FILE": ""}, "STORE_TLS_KEY_FILE"),
    ],
)
def test_a_bad_store_security_setting_is_named(
    pki: Pki, change: dict[str, str], variable: str
) -> None:
    with pytest.raises(SettingsError) as caught:
        StoreSettings.from_env({**store_tls_env(pki), **change})
    assert caught.value.variable == variable


async def test_both_services_as_processes_secured(
    pki: Pki, keys: Keys, token_file: Path, tmp_path: Path
) -> None:
    """``python -m store_service`` with mutual TLS and ``python -m engine_service`` with TLS,
    tokens and mutual TLS to it: a token's call gets through, and the logs say how."""
    secured = {"FLOWLEDGER_INSECURE": "0", "ENGINE_AUTH_DISABLED": "0"}
    store_env = base_env(**secured, **store_tls_env(pki),
                         STORE_LISTEN=f"127.0.0.1:{free_port()}",
                         STORE_METRICS_LISTEN="127.0.0.1:0")
    async with service_process("store_service", store_env) as store:
        engine_env = base_env(
            **secured, **engine_tls_env(pki), **jwt_env(keys),
            ENGINE_AUTH_TOKEN_FILE=str(token_file), STORE_ADDR=store.address,
            ENGINE_LISTEN="127.0.0.1:0", ENGINE_METRICS_LISTEN="off",
            ENGINE_STORE_PROBE_SECONDS="0.2",
        )
        async with service_process("engine_service", engine_env) as engine_proc:
            channel = grpc.aio.secure_channel(
                engine_proc.address, grpc.ssl_channel_credentials(pki.ca.cert_pem)
            )
            try:
                token = keys.mint("proc", "viewer", ["ns"])
                request: Any = engine_pb2.ListFlowRunsRequest(namespace="ns")
                outcome = await call(channel, engine("ListFlowRuns"), request, token)
                assert outcome.code == grpc.StatusCode.OK, outcome
                anonymous = await call(channel, engine("ListFlowRuns"), request, None)
                assert anonymous.code == grpc.StatusCode.UNAUTHENTICATED
            finally:
                await channel.close()
            assert "clients connect with TLS" in engine_proc.log
            assert "the store is reached with TLS" in engine_proc.log
            assert "PLAINTEXT" not in engine_proc.log + store.log
        assert "the store accepts mutual TLS" in store.log
