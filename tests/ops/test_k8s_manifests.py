"""The Kubernetes manifests start the services they describe, secured unless the dev overlay says
otherwise.

Each rendering's store and engine environment (ConfigMap + env, Secret volumes as local
directories holding the keys deploy/README.md documents) passes the services' own settings check,
and the kubelet's probes and the container ports point at what the services will listen on. The
schema owner's connection string reaches the migration Job only; the store gets the app role's.
Then production with every component runs for real: the Job's command migrates a fresh database
as the owner, both services run as processes with their environment (the store as a login member
of flowledger_app; listening on loopback instead of 0.0.0.0, the store dialled at 127.0.0.1 under
the name the manifests use), certificates made as the cert-manager Certificates ask, a JWT signed
by a key of the mounted JWKS: a flow runs through TLS, bearer token and mutual TLS to the store,
and the plaintext health ports answer. Skipped when kubectl (which renders kustomize) is absent.
"""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from engine_service.settings import ServiceSettings
from flowledger.client import FlowledgerClient
from flowledger.errors import Unauthenticated
from flowledger.types import FlowStatus
from flowledger_core.server.env import parse_address
from store_service.migrate import owner_url
from store_service.settings import StoreSettings
from tests.engine_service.api.conftest import BOUND_S, published
from tests.engine_service.api.processes import REPO, free_port, service_process
from tests.ops.expressions import DEPLOY
from tests.ops.manifests import Container, find, issuer_of, kubectl, render, write_tls_secrets
from tests.security.helpers import STATIC_TOKEN, Keys, write_token_file
from tests.security.test_db_role import app_login

pytestmark = pytest.mark.skipif(
    kubectl() is None, reason="kubectl (for kustomize) is not installed; deploy/check.sh says how"
)

RENDERINGS = ("base", "production", "production-components", "dev")
A_DATABASE_URL = "postgresql://flowledger_store@db.internal:5432/flowledger"
AN_OWNER_URL = "postgresql://flowledger_owner@db.internal:5432/flowledger"
APP_KEY = ("flowledger-database", "DATABASE_URL")
OWNER_KEY = ("flowledger-database", "STORE_MIGRATE_DATABASE_URL")


def secrets_dir(tmp_path: Path, objects: list[dict[str, Any]]) -> tuple[Path, Keys]:
    """Every Secret the manifests mount, as the kubelet lays it out under ``root``: the TLS
    Secrets as components/cert-manager makes them, and flowledger-engine-auth with both a static
    token file and a JWKS."""
    root = tmp_path / "secrets"
    with_cert_manager = objects
    if not any(o["kind"] == "Certificate" for o in objects):
        workdir = tmp_path / "render"
        workdir.mkdir()
        with_cert_manager = render("production-components", workdir)
    write_tls_secrets(with_cert_manager, root)
    auth = root / "flowledger-engine-auth"
    auth.mkdir()
    keys = Keys(auth)  # writes jwks.json (and the public key as jwt-public.pem)
    write_token_file(auth / "tokens.yaml", [(STATIC_TOKEN, "ops", "viewer", ["ops"])])
    return root, keys


def environments(
    objects: list[dict[str, Any]], root: Path, database_url: str
) -> tuple[Container, dict[str, str], Container, dict[str, str]]:
    store = Container.of(objects, "flowledger-store", "store")
    engine = Container.of(objects, "flowledger-engine", "engine")
    store_env = store.env(root, {"DATABASE_URL": database_url})
    engine_env = engine.env(root, {"ENGINE_ID": "flowledger-engine-0"})
    return store, store_env, engine, engine_env


def check_ports(container: Container, listen: str, metrics_listen: str, health: str) -> None:
    assert health, "no *_HEALTH_LISTEN: the kubelet's gRPC probes cannot speak TLS"
    health_port = parse_address(health)[1]
    probes = list(container.probe_ports())
    assert {probe for probe, _, _ in probes} == {"startupProbe", "readinessProbe",
                                                 "livenessProbe"}
    for probe, handler, port in probes:
        assert port == health_port, f"{probe} ({handler}) on {port}, health on {health_port}"
    assert container.port("grpc") == parse_address(listen)[1]
    assert container.port("metrics") == parse_address(metrics_listen)[1]
    assert container.port("health") == health_port


@pytest.mark.parametrize("rendering", RENDERINGS)
def test_rendered_environments_pass_the_services_settings(
    rendering: str, tmp_path: Path
) -> None:
    objects = render(rendering, tmp_path)
    root, _ = secrets_dir(tmp_path, objects)
    store, store_env, engine, engine_env = environments(objects, root, A_DATABASE_URL)

    store_settings = StoreSettings.from_env(store_env)
    engine_settings = ServiceSettings.from_env(engine_env)

    check_ports(store, store_settings.listen, store_settings.metrics_listen,
                store_settings.health_listen)
    check_ports(engine, engine_settings.listen, engine_settings.metrics_listen,
                engine_settings.health_listen)
    if rendering == "dev":
        assert (store_settings.insecure, store_settings.tls) == (True, None)
        assert (engine_settings.insecure, engine_settings.tls, engine_settings.store_tls) == (
            True, None, None
        )
        assert (engine_settings.auth_disabled, engine_settings.auth) == (True, None)
        return
    assert not store_settings.insecure
    assert not engine_settings.insecure
    assert store_settings.tls is not None
    assert store_settings.tls.mutual
    assert store_settings.tls.client_names == ("flowledger-engine",)
    assert engine_settings.tls is not None
    assert engine_settings.store_tls is not None
    assert engine_settings.store_tls.cert_file is not None
    assert engine_settings.auth is not None
    assert not engine_settings.auth_disabled
    if rendering == "production-components":  # jwt-auth: JWKS instead of the token file
        assert engine_settings.auth.token_file is None
        assert engine_settings.auth.jwt is not None
        assert engine_settings.auth.jwt.jwks_file is not None
    else:
        assert engine_settings.auth.token_file is not None
        assert engine_settings.auth.jwt is None


@pytest.mark.parametrize("rendering", RENDERINGS)
def test_the_owner_connection_reaches_the_migration_job_only(
    rendering: str, tmp_path: Path
) -> None:
    objects = render(rendering, tmp_path)
    job = Container.of(objects, "flowledger-migrate", "migrate", kind="Job")
    store = Container.of(objects, "flowledger-store", "store")
    engine = Container.of(objects, "flowledger-engine", "engine")

    assert job.secret_refs() == {"STORE_MIGRATE_DATABASE_URL": OWNER_KEY}
    assert store.secret_refs() == {"DATABASE_URL": APP_KEY}
    assert engine.secret_refs() == {}
    assert job.spec["command"] == ["python", "-m", "store_service.migrate"]
    job_env = job.env(tmp_path, {"STORE_MIGRATE_DATABASE_URL": AN_OWNER_URL})
    assert owner_url(job_env) == AN_OWNER_URL
    # Each key exists where the pods will look: in the rendered Secret (dev), or else in the
    # README's `kubectl create secret` (a missing key keeps a pod from starting).
    readme = (DEPLOY / "README.md").read_text()
    for secret, key in (APP_KEY, OWNER_KEY):
        rendered = [o for o in objects
                    if o["kind"] == "Secret" and o["metadata"]["name"] == secret]
        if rendered:
            assert key in rendered[0].get("data", {}), (secret, key)
        else:
            assert f"--from-literal={key}=" in readme, (secret, key)
    if rendering == "dev":  # one superuser for both, as the overlay says
        (data,) = [o["data"] for o in objects if o["kind"] == "Secret"
                   and o["metadata"]["name"] == "flowledger-database"]
        urls = {base64.b64decode(data[key]).decode() for _, key in (APP_KEY, OWNER_KEY)}
        assert urls == {"postgresql://postgres@flowledger-postgres:5432/postgres"}


def run_job(job: Container, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The Job's command as a local process (this interpreter for the image's ``python``)."""
    command = job.spec["command"]
    assert command[0] == "python", command
    return subprocess.run(
        [sys.executable, *command[1:]], env=process_env(env), cwd=REPO, capture_output=True,
        text=True, timeout=BOUND_S, check=False,
    )


async def serving(port: int) -> bool:
    """Whether the plaintext health port answers SERVING."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=2
            )
        except grpc.RpcError:
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


async def wait_serving(port: int, what: str, log: Any) -> None:
    deadline = time.monotonic() + BOUND_S
    while not await serving(port):
        assert time.monotonic() < deadline, f"{what} health port {port} not SERVING:\n{log()}"
        await asyncio.sleep(0.1)


def process_env(settings: dict[str, str]) -> dict[str, str]:
    """The parent's environment without service settings (in particular without the test
    suite's FLOWLEDGER_INSECURE / ENGINE_AUTH_DISABLED), plus ``settings``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DATABASE_", "STORE_", "ENGINE_", "FLOWLEDGER_"))
           and k != "LOG_LEVEL"}
    return {**env, **settings}


async def test_production_with_components_runs_a_flow_secured(
    database_url: str, tmp_path: Path
) -> None:
    objects = render("production-components", tmp_path)
    root, keys = secrets_dir(tmp_path, objects)
    # The Job migrates the empty database as its owner (here the test server's superuser) ...
    job = Container.of(objects, "flowledger-migrate", "migrate", kind="Job")
    migrated = await asyncio.to_thread(
        run_job, job, job.env(root, {"STORE_MIGRATE_DATABASE_URL": database_url})
    )
    assert migrated.returncode == 0, migrated.stderr
    assert migrated.stdout.startswith("applied: [1, "), migrated.stdout
    with app_login(database_url) as app_url:  # ... and the store serves as flowledger_app's
        await run_secured_flow(objects, root, keys, app_url)


async def run_secured_flow(
    objects: list[dict[str, Any]], root: Path, keys: Keys, store_database_url: str
) -> None:
    _, store_env, _, engine_env = environments(objects, root, store_database_url)
    assert "STORE_MIGRATE_DATABASE_URL" not in store_env
    # Loopback instead of 0.0.0.0 and the manifests' ports; the store under the name the
    # engine dials it by (its certificate must carry it), resolved to 127.0.0.1.
    store_port, store_health, engine_health = free_port(), free_port(), free_port()
    store_env |= {"STORE_LISTEN": f"127.0.0.1:{store_port}", "STORE_METRICS_LISTEN": "127.0.0.1:0",
                  "STORE_HEALTH_LISTEN": f"127.0.0.1:{store_health}"}
    store_host = parse_address(engine_env["STORE_ADDR"])[0]
    engine_env.setdefault("ENGINE_STORE_TLS_SERVER_NAME", store_host)
    engine_env |= {"STORE_ADDR": f"127.0.0.1:{store_port}", "ENGINE_LISTEN": "127.0.0.1:0",
                   "ENGINE_METRICS_LISTEN": "127.0.0.1:0",
                   "ENGINE_HEALTH_LISTEN": f"127.0.0.1:{engine_health}"}
    engine_ca = root / "pki" / f"{issuer_of(objects, 'flowledger-engine-tls')}-ca.pem"
    engine_name = find(objects, "Certificate", "flowledger-engine-tls")["spec"]["dnsNames"][0]
    ns = f"ops-{uuid.uuid4().hex[:8]}"
    token = keys.mint("ops-deployer", "manager", [ns],
                      iss=engine_env["ENGINE_AUTH_JWT_ISSUER"],
                      aud=engine_env["ENGINE_AUTH_JWT_AUDIENCE"], headers={"kid": "k1"})
    tls = grpc.ssl_channel_credentials(engine_ca.read_bytes())
    options = [("grpc.ssl_target_name_override", engine_name)]

    async with (
        service_process("store_service", process_env(store_env)) as store,
        service_process("engine_service", process_env(engine_env)) as engine,
    ):
        await wait_serving(store_health, "store", lambda: store.log)
        await wait_serving(engine_health, "engine", lambda: engine.log)
        credentials = grpc.composite_channel_credentials(
            tls, grpc.access_token_call_credentials(token)
        )
        async with FlowledgerClient(engine.address, timeout=BOUND_S, credentials=credentials,
                                    options=options) as client:
            await published(client, ns, "hello")
            started = await client.start_flow(ns, "hello", {"name": "k8s"})
            flow = await client.wait_for_flow(ns, started.flow_id, within=BOUND_S)
            assert flow.status is FlowStatus.COMPLETED, (flow, engine.log)
            assert flow.started_by == "ops-deployer"  # the token's subject, recorded
        async with FlowledgerClient(engine.address, timeout=BOUND_S, credentials=tls,
                                    options=options) as anonymous:
            with pytest.raises(Unauthenticated):
                await anonymous.list_definitions(ns)
    for warning in ("PLAINTEXT", "DISABLED", "may change or delete the event log"):
        assert warning not in store.log + engine.log, store.log + engine.log
