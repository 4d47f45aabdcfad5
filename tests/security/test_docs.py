"""docs/security.md agrees with the code: the roles table is the code's table, and the
configuration table names exactly the security variables the services read."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from engine_service.settings import ServiceSettings
from flowledger_core.server.auth_policy import roles_table
from store_service.settings import StoreSettings
from tests.security.helpers import Keys, Pki
from tests.security.test_settings import engine_tls_env, jwt_env, store_tls_env

DOC = Path(__file__).resolve().parents[2] / "docs" / "security.md"
# What counts as a security variable: transport, authentication, health ports, egress and the
# limits.
_SECURITY = re.compile(
    r"TLS|AUTH|INSECURE|HEALTH_LISTEN|EGRESS|_MAX_(MESSAGE|PAYLOAD|JSON|ID|PENDING|EVENTS|ARTIFACTS)"
)


class Recording(dict[str, str]):
    """An environment that remembers every variable asked for."""

    def __init__(self, values: dict[str, str]) -> None:
        super().__init__(values)
        self.asked: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:
        self.asked.add(key)
        return super().get(key, default)


def test_the_roles_table_is_the_codes() -> None:
    text = DOC.read_text()
    documented = text.split("<!-- roles:begin -->\n", 1)[1].split("\n<!-- roles:end -->", 1)[0]
    assert documented == roles_table()


def test_the_configuration_table_names_every_variable_read(
    pki: Pki, keys: Keys, token_file: Path
) -> None:
    engine_env = Recording({**engine_tls_env(pki), **jwt_env(keys),
                            "ENGINE_AUTH_TOKEN_FILE": str(token_file),
                            "ENGINE_AUTH_RATE_LIMIT_PER_SECOND": "5"})
    ServiceSettings.from_env(engine_env)
    store_env = Recording(store_tls_env(pki))
    StoreSettings.from_env(store_env)
    read = {v for v in engine_env.asked | store_env.asked if _SECURITY.search(v)}
    table = DOC.read_text().split("## Configuration", 1)[1].split("\n### ", 1)[0]
    documented = set(re.findall(r"^\| `([A-Z0-9_]+)` \|", table, re.MULTILINE))
    assert len(read) > 30
    assert documented == read
