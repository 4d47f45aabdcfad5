"""The Python SDK as its own distribution (clients/python/pyproject.toml, ``flowledger-client``).

The wheel is built from a copy of clients/python (so the build needs nothing outside it and
leaves nothing in the tree) in an isolated build environment, then installed with its
dependencies into an empty virtual environment. There, with ``python -I`` (no current directory
or PYTHONPATH on sys.path), the package imports without the services' code, and the README's
examples run, in order, against a store and an engine started as processes from the repository,
the engine with TLS and bearer tokens. The dependencies come from the package index (pip's cache
makes that fast); the versions of the repository's locked environment constrain them, so the SDK
is tested with the versions the rest of the repository is.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import textwrap
import tomllib
import zipfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.engine_service.api.processes import REPO, ServiceProcess, engine_env, service_process
from tests.engine_service.api.processes import store_env as plain_store_env
from tests.security.certs import Authority
from tests.security.helpers import write_token_file

SDK = REPO / "clients" / "python"
README = SDK / "README.md"
STEP_S = 120.0  # bound of one build/install step (a cold pip cache downloads grpcio)
RUN_S = 60.0
ENGINE_PLACEHOLDER = '"engine.example:50052"'
CA_PLACEHOLDER = '"ca.pem"'
# What the SDK may need at run time; a server-side dependency showing up here is a mistake.
SDK_DEPENDENCIES = {"grpcio", "grpcio-status", "protobuf", "googleapis-common-protos", "rfc8785"}
SDK_MODULES = [
    "flowledger", "flowledger.client", "flowledger.worker", "flowledger.types",
    "flowledger.errors", "flowledger.rpc_status", "flowledger.canonical", "flowledger._wire",
    *(f"flowledger.v1.{proto}_pb2{grpc}" for proto in ("common", "engine", "store", "worker")
      for grpc in ("", "_grpc")),
]  # fmt: skip
NOT_SHIPPED = [
    "store_service", "engine_service", "flowledger_core", "flowctl",
]  # fmt: skip


def pyproject(path: Path) -> dict[str, object]:
    return tomllib.loads(path.read_text())


def project(path: Path) -> dict[str, object]:
    table = pyproject(path)["project"]
    assert isinstance(table, dict)
    return table


def run(*args: str | Path, cwd: Path | None = None) -> str:
    done = subprocess.run(
        [str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=STEP_S,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, f"{args} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@dataclass(frozen=True)
class Installed:
    wheel: Path
    python: Path
    home: Path


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    home = tmp_path_factory.mktemp("sdk")
    source = home / "src"
    shutil.copytree(
        SDK, source, ignore=shutil.ignore_patterns("__pycache__", "build", "dist", "*.egg-info")
    )
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    # A path, not a name: `pip wheel src` would look for a package called "src" on the index.
    run(*pip, "wheel", "--no-deps", "--wheel-dir", home / "dist", f"{source}{os.sep}")
    (wheel,) = (home / "dist").glob("flowledger_client-*.whl")
    run(sys.executable, "-m", "venv", "--without-pip", home / "venv")
    python = home / "venv" / "bin" / "python"
    # Every distribution at the version this (locked, uv.lock) environment has: the SDK and what
    # it pulls in are tested with the versions the rest of the repository is, whatever the index
    # has published since.
    pins = sorted({
        f"{d.metadata['Name']}=={d.version}" for d in importlib.metadata.distributions()
        if d.metadata["Name"] and not d.metadata["Name"].startswith("flowledger")
    })  # fmt: skip
    (home / "constraints.txt").write_text("\n".join(pins) + "\n")
    # The repository's pip installs into the new environment (--python): it needs no pip of its own.
    run(*pip, "--python", python, "install", "--constraint", home / "constraints.txt", wheel)
    return Installed(wheel, python, home)


def dependencies(table: dict[str, object]) -> list[str]:
    deps = table["dependencies"]
    assert isinstance(deps, list)
    return [str(d) for d in deps]


# -- the two pyprojects ----------------------------------------------------------------------


def test_the_sdk_s_dependencies_admit_the_versions_the_root_pins() -> None:
    root = {r.name: r for r in map(Requirement, dependencies(project(REPO / "pyproject.toml")))}
    sdk = [Requirement(d) for d in dependencies(project(SDK / "pyproject.toml"))]
    assert {r.name for r in sdk} == SDK_DEPENDENCIES
    for requirement in sdk:
        pinned = [s.version for s in root[requirement.name].specifier if s.operator == "=="]
        floors = [s.version for s in root[requirement.name].specifier if s.operator == ">="]
        for version in pinned or floors:
            assert requirement.specifier.contains(version), (requirement, version)


def test_the_root_distribution_still_carries_the_sdk_at_the_same_version() -> None:
    import flowledger

    root = pyproject(REPO / "pyproject.toml")
    assert project(REPO / "pyproject.toml")["version"] == flowledger.__version__
    find = root["tool"]["setuptools"]["packages"]["find"]  # type: ignore[index]
    assert "clients/python" in find["where"]
    assert "flowledger*" in find["include"]
    # The installed SDK of this environment is the source tree (the root's editable install).
    assert Path(flowledger.__file__).resolve().parent == SDK / "flowledger"


# -- the wheel ---------------------------------------------------------------------------------


def test_the_wheel_holds_the_sdk_and_its_stubs_only(installed: Installed) -> None:
    names = zipfile.ZipFile(installed.wheel).namelist()
    packages = {n.split("/")[0] for n in names}
    assert packages == {"flowledger", f"flowledger_client-{installed.wheel.name.split('-')[1]}"
                        ".dist-info"}  # fmt: skip
    for excluded in ("flowledger/server/", "flowledger/devserver/", "flowledger/cli/"):
        assert not [n for n in names if n.startswith(excluded)], excluded
    assert "flowledger/py.typed" in names
    assert "flowledger/v1/engine_pb2.pyi" in names
    assert "flowledger/v1/worker_pb2_grpc.py" in names


def test_the_installed_sdk_imports_without_the_services(installed: Installed) -> None:
    # Standard library only: the new environment has nothing but the SDK and its dependencies.
    probe = textwrap.dedent(f"""
        import importlib, importlib.metadata, importlib.util, json, sys
        for name in {SDK_MODULES!r}:
            importlib.import_module(name)
        absent = {{}}
        for name in {NOT_SHIPPED!r}:
            try:
                absent[name] = importlib.util.find_spec(name) is None
            except ModuleNotFoundError:
                absent[name] = True
        requires = importlib.metadata.requires("flowledger-client") or []
        print(json.dumps({{
            "file": sys.modules["flowledger"].__file__,
            "absent": absent,
            "requires": requires,
            "typed": any(str(f) == "flowledger/py.typed"
                         for f in importlib.metadata.files("flowledger-client") or []),
        }}))
    """)
    report = json.loads(run(installed.python, "-I", "-c", probe, cwd=installed.home))
    assert Path(report["file"]).is_relative_to(installed.home / "venv")
    assert report["absent"] == dict.fromkeys(NOT_SHIPPED, True)
    names = {re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0].lower() for r in report["requires"]}
    assert names == SDK_DEPENDENCIES
    assert report["typed"] is True
    run(sys.executable, "-m", "pip", "--disable-pip-version-check", "--python", installed.python,
        "check")  # fmt: skip


# -- the README, against live services ----------------------------------------------------------


@dataclass(frozen=True)
class SecureEngine:
    engine: ServiceProcess
    ca_file: Path
    manager_token: str
    worker_token: str


@pytest.fixture
async def secure_engine(
    migrated_database_url: str, tmp_path: Path
) -> AsyncIterator[SecureEngine]:
    """A store (plaintext on loopback) and an engine serving TLS and checking static tokens."""
    ca = Authority(tmp_path, "sdk")
    server = ca.issue("engine", ("localhost", "127.0.0.1"))
    manager, worker = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    tokens = write_token_file(
        tmp_path / "tokens.yaml",
        [(manager, "readme-client", "manager", ["default"]),
         (worker, "readme-worker", "worker", ["default"])],
    )  # fmt: skip
    async with service_process("store_service", plain_store_env(migrated_database_url, 0)) as store:
        env = engine_env(
            store.address, tmp_path,
            ENGINE_TLS_CERT_FILE=str(server.cert_file), ENGINE_TLS_KEY_FILE=str(server.key_file),
            ENGINE_AUTH_TOKEN_FILE=str(tokens),
        )  # fmt: skip
        env.pop("ENGINE_AUTH_DISABLED")  # FLOWLEDGER_INSECURE stays: plaintext to the store only
        async with service_process("engine_service", env) as engine:
            yield SecureEngine(engine, ca.cert_file, manager, worker)


def readme_script(engine_address: str, ca_file: Path) -> str:
    """The README's python blocks in order, as one coroutine (they are written for
    ``python -m asyncio``), pointed at the test's engine and CA."""
    code = "\n".join(re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL))
    assert ENGINE_PLACEHOLDER in code
    assert CA_PLACEHOLDER in code
    code = code.replace(ENGINE_PLACEHOLDER, repr(engine_address))
    code = code.replace(CA_PLACEHOLDER, repr(str(ca_file)))
    return "import asyncio\n\n\nasync def main():\n" + textwrap.indent(code, "    ") + (
        "\n\nasyncio.run(main())\n"
    )


async def test_the_readme_examples_run_from_the_installed_sdk(
    installed: Installed, secure_engine: SecureEngine, tmp_path: Path
) -> None:
    script = tmp_path / "readme_examples.py"
    script.write_text(readme_script(secure_engine.engine.address, secure_engine.ca_file))
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "FLOWLEDGER_TOKEN": secure_engine.manager_token,
        "FLOWLEDGER_WORKER_TOKEN": secure_engine.worker_token,
    }
    proc = await asyncio.create_subprocess_exec(
        installed.python, "-I", script, cwd=installed.home, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(), RUN_S)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, f"{err.decode()}\nengine log:\n{secure_engine.engine.log}"
    lines = out.decode().splitlines()
    events = [line.split()[1] for line in lines if re.fullmatch(r"\d+ \w+", line)]
    assert events[0] == "flow_initialized"
    assert events[-1] == "flow_completed"
    assert {"task_scheduled", "signal_received"} <= set(events)
    # status, the task's output (the worker's), the flow's fingerprint
    assert re.fullmatch(r"completed \{'message': 'HELLO, ANA'\} [0-9a-f]{64}", lines[len(events)])
    assert lines[len(events) + 1 :] == ["cancelled", "FLOW_ENDED"]
