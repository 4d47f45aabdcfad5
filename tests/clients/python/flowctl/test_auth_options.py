"""flowctl's connection options against secured engines: TLS with ``--ca-file``, bearer tokens
(``--token``, ``--token-file``, ``FLOWLEDGER_TOKEN``), mutual TLS (``--client-cert/--client-key``),
and the loopback rule (plaintext only to loopback unless TLS is asked for).

The engines are the security suite's (tests/security/helpers.py: certificates made by the test,
a store behind mutual TLS, a static token file), served in this process; ``flowctl`` runs as a
real process in a worker thread, so that the event loop keeps serving while it calls.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from flowledger_core.server.tls import ServerTLS
from tests.clients.python.flowctl.live import COMMAND_DEADLINE_S, FLOWCTL, REPO, Done, service_env
from tests.clients.python.flowctl.test_commands import assert_one_line_error
from tests.security.certs import Leaf
from tests.security.helpers import Keys, Pki, make_pki, secure_stack, write_token_file

HELLO = str(REPO / "examples" / "hello.yaml")
NS = f"cli-auth-{uuid.uuid4().hex[:8]}"
MANAGER = "manager-token-" + uuid.uuid4().hex
VIEWER = "viewer-token-" + uuid.uuid4().hex


@dataclass(frozen=True)
class Secured:
    address: str
    pki: Pki
    tmp: Path


@pytest.fixture(scope="module")
def secured_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Pki, Keys, Path, Leaf]:
    """The PKI, the issuer keys, a token file (a manager and a viewer of NS), and a client
    certificate of the trusted CA (for the mutual-TLS engine)."""
    tmp = tmp_path_factory.mktemp("cli-auth")
    pki = make_pki(tmp)
    tokens = write_token_file(
        tmp / "tokens.yaml",
        [(MANAGER, "cli-manager", "manager", [NS]), (VIEWER, "cli-viewer", "viewer", [NS])],
    )
    client = pki.ca.issue("flowctl-client", ("flowctl.example",), server=False)
    return pki, Keys(tmp), tokens, client


@pytest.fixture(scope="module")
async def tls_engine(
    secured_files: tuple[Pki, Keys, Path, Leaf], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Secured]:
    """TLS (server certificate only) and bearer tokens: the usual production engine."""
    pki, keys, tokens, _ = secured_files
    async with secure_stack(pki, keys, tokens) as stack:
        yield Secured(stack.engine_address, pki, tmp_path_factory.mktemp("files"))


async def flowctl(*args: str, env: dict[str, str] | None = None) -> Done:
    """The installed ``flowctl`` with only ``env``'s FLOWLEDGER_* settings."""
    done = await asyncio.to_thread(
        subprocess.run, [FLOWCTL, *args], cwd=REPO, env={**service_env(), **(env or {})},
        capture_output=True, text=True, timeout=COMMAND_DEADLINE_S, check=False,
    )  # fmt: skip
    return Done(done.returncode, done.stdout, done.stderr)


def tls_args(engine: Secured) -> list[str]:
    return ["--engine", engine.address, "--namespace", NS,
            "--ca-file", str(engine.pki.ca.cert_file)]  # fmt: skip


# -- the right token ---------------------------------------------------------------------------


async def test_run_with_the_ca_and_a_token(tls_engine: Secured) -> None:
    done = await flowctl(
        *tls_args(tls_engine), "--token", MANAGER, "run", HELLO, "--input", '{"name": "tls"}'
    )
    assert done.code == 0, done.out + done.err
    assert re.search(r"^variants:\s+ISFSFSFC$", done.out, re.M), done.out


async def test_the_environment_and_a_token_file_work_too(tls_engine: Secured) -> None:
    env = {
        "FLOWLEDGER_ENGINE": tls_engine.address,
        "FLOWLEDGER_NAMESPACE": NS,
        "FLOWLEDGER_CA_FILE": str(tls_engine.pki.ca.cert_file),
        "FLOWLEDGER_TOKEN": VIEWER,
    }
    listed = await flowctl("flows", "ls", "--json", env=env)
    assert listed.code == 0, listed.err
    token_file = tls_engine.tmp / "token"
    token_file.write_text(VIEWER + "\n")
    env.pop("FLOWLEDGER_TOKEN")
    from_file = await flowctl("--token-file", str(token_file), "defs", "ls", "--json", env=env)
    assert from_file.code == 0, from_file.err


# -- no token, a wrong one, a role that may not ---------------------------------------------------


async def test_without_a_token_the_engine_says_unauthenticated(tls_engine: Secured) -> None:
    done = await flowctl(*tls_args(tls_engine), "flows", "ls")
    assert_one_line_error(done, "UNAUTHENTICATED", "--token")


async def test_a_wrong_token_is_unauthenticated(tls_engine: Secured) -> None:
    done = await flowctl(*tls_args(tls_engine), "--token", "not-a-token", "flows", "ls")
    assert_one_line_error(done, "UNAUTHENTICATED")
    assert "not-a-token" not in done.err


async def test_a_viewer_may_not_run(tls_engine: Secured) -> None:
    done = await flowctl(*tls_args(tls_engine), "--token", VIEWER, "run", HELLO)
    assert_one_line_error(done, "PERMISSION_DENIED")


# -- the transport ------------------------------------------------------------------------------


async def test_plaintext_to_a_tls_engine_fails_with_a_hint(tls_engine: Secured) -> None:
    # No TLS option and a loopback address: plaintext, which a TLS engine does not speak.
    done = await flowctl(
        "--engine", tls_engine.address, "--timeout", "5", "--token", MANAGER, "flows", "ls"
    )
    assert_one_line_error(done, "UNAVAILABLE", "--ca-file")


async def test_a_certificate_of_another_ca_is_refused(tls_engine: Secured) -> None:
    done = await flowctl(
        "--engine", tls_engine.address, "--timeout", "5", "--token", MANAGER,
        "--ca-file", str(tls_engine.pki.other_ca.cert_file), "flows", "ls",
    )  # fmt: skip
    assert_one_line_error(done, "UNAVAILABLE")


async def test_contradictions_are_usage_errors() -> None:
    done = await flowctl("--plaintext", "--ca-file", "ca.pem", "flows", "ls")
    assert done.code == 2, done.out + done.err
    assert "--plaintext contradicts --ca-file" in done.err
    lonely = await flowctl("--client-cert", "c.pem", "flows", "ls")
    assert lonely.code == 2
    assert "--client-cert and --client-key go together" in lonely.err


async def test_a_token_is_never_sent_in_plaintext_beyond_loopback() -> None:
    # Refused before any connection (the address is not even routable).
    done = await flowctl(
        "--engine", "192.0.2.1:50052", "--plaintext", "--token", MANAGER, "flows", "ls"
    )
    assert done.code == 2, done.out + done.err
    assert "refusing to send the token in plaintext" in done.err


async def test_an_unreadable_ca_file_is_one_line(tls_engine: Secured) -> None:
    done = await flowctl(
        "--engine", tls_engine.address, "--ca-file", str(tls_engine.tmp / "missing.pem"),
        "flows", "ls",
    )  # fmt: skip
    assert_one_line_error(done, "missing.pem", "cannot read")


# -- mutual TLS, and tokens over loopback plaintext ---------------------------------------------


async def test_mutual_tls_needs_the_client_certificate(
    secured_files: tuple[Pki, Keys, Path, Leaf],
) -> None:
    pki, keys, tokens, client = secured_files
    tls = ServerTLS(pki.engine_server.cert_file, pki.engine_server.key_file, pki.ca.cert_file)
    async with secure_stack(pki, keys, tokens, tls=tls) as stack:
        base = ["--engine", stack.engine_address, "--namespace", NS, "--timeout", "5",
                "--ca-file", str(pki.ca.cert_file), "--token", VIEWER]  # fmt: skip
        with_cert = await flowctl(
            *base, "--client-cert", str(client.cert_file), "--client-key", str(client.key_file),
            "flows", "ls", "--json",
        )  # fmt: skip
        assert with_cert.code == 0, with_cert.err
        without = await flowctl(*base, "flows", "ls")
        assert_one_line_error(without, "UNAVAILABLE")


async def test_a_token_over_loopback_plaintext(
    secured_files: tuple[Pki, Keys, Path, Leaf],
) -> None:
    """An engine with tokens but no TLS (FLOWLEDGER_INSECURE=1, say behind a mesh), on loopback:
    the token travels over a local connection, which gRPC accepts only on loopback."""
    pki, keys, tokens, _ = secured_files
    async with secure_stack(pki, keys, tokens, tls=None, insecure=True) as stack:
        base = ["--engine", stack.engine_address, "--namespace", NS]
        with_token = await flowctl(*base, "--token", VIEWER, "flows", "ls", "--json")
        assert with_token.code == 0, with_token.err
        assert_one_line_error(await flowctl(*base, "flows", "ls"), "UNAUTHENTICATED")
