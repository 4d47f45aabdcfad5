"""Fixtures of the security tests: one PKI and one issuer key per session, the token file, and a
module-wide stack (store with mutual TLS, engine with TLS and tokens) for the read-mostly cases."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.security.helpers import (
    STATIC_SUBJECT,
    STATIC_TOKEN,
    Keys,
    Pki,
    SecureStack,
    make_pki,
    secure_stack,
    write_token_file,
)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return Keys(tmp_path_factory.mktemp("jwt"))


@pytest.fixture(scope="session")
def token_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tokens") / "tokens.yaml"
    return write_token_file(path, [(STATIC_TOKEN, STATIC_SUBJECT, "viewer", ["ns-a"])])


@pytest.fixture(scope="module")
async def stack(pki: Pki, keys: Keys, token_file: Path) -> AsyncIterator[SecureStack]:
    async with secure_stack(pki, keys, token_file) as running:
        yield running
