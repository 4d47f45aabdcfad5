"""Live services for CLI and example tests, and a runner of the real ``flowctl`` executable.

``live_engine`` starts the store (over the in-memory backend, then over Postgres on a fresh
database) and an engine as real processes on loopback, through the same helpers as
``flowctl up`` and the demo (:mod:`flowctl.devserver.services`); module-scoped because
every test uses its own namespace.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from flowctl.devserver.services import services
from tests.fixtures.postgres import PgServer, fresh_database

REPO = Path(__file__).resolve().parents[4]
FLOWCTL = str(Path(sys.executable).with_name("flowctl"))
COMMAND_DEADLINE_S = 120.0


@dataclass(frozen=True)
class Done:
    code: int
    out: str
    err: str


def service_env() -> dict[str, str]:
    """The environment without settings that would redirect a service or the CLI."""
    return {
        k: v for k, v in os.environ.items()
        if not k.startswith(("DATABASE_", "STORE_", "ENGINE_", "FLOWLEDGER_"))
    }


def flowctl(*args: str, engine: str | None = None, namespace: str | None = None) -> Done:
    """Run the installed ``flowctl`` console script (a real process, no terminal)."""
    argv = [FLOWCTL]
    if engine is not None:
        argv += ["--engine", engine]
    if namespace is not None:
        argv += ["--namespace", namespace]
    done = subprocess.run(
        [*argv, *args], cwd=REPO, env=service_env(), capture_output=True, text=True,
        timeout=COMMAND_DEADLINE_S, check=False,
    )
    return Done(done.returncode, done.stdout, done.stderr)


@dataclass(frozen=True)
class Live:
    engine: str
    backend: str
    store: str = ""  # the store's address (never the one to give flowctl)

    def run(self, *args: str, namespace: str) -> Done:
        return flowctl(*args, engine=self.engine, namespace=namespace)


@pytest.fixture(scope="module", params=["memory", "postgres"])
def live_engine(request: pytest.FixtureRequest) -> Iterator[Live]:
    if request.param == "memory":
        with services("memory:", say=lambda _: None) as running:
            yield Live(running.engine.address, "memory", running.store.address)
        return
    pg: PgServer = request.getfixturevalue("pg_server")
    # The store applies its migrations to the empty database at start-up.
    with fresh_database(pg) as url, services(url, say=lambda _: None) as running:
        yield Live(running.engine.address, "postgres", running.store.address)


@pytest.fixture
def ns() -> str:
    return f"cli-{uuid.uuid4().hex[:12]}"
