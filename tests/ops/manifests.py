"""The Kubernetes manifests of ``deploy/k8s`` as the services would see them.

Rendered by ``kubectl kustomize``; one container's environment is its ConfigMap (``envFrom``)
plus its ``env``, with paths under its Secret volumes pointed at local directories (one per
Secret, holding its keys as files, as the kubelet lays them out). The certificates those
directories hold are made the way ``components/cert-manager`` asks: each Certificate's names,
usages and issuing CA.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.ops.expressions import DEPLOY
from tests.security.certs import Authority

K8S = DEPLOY / "k8s"
OVERLAYS = {
    "base": K8S / "base",
    "production": K8S / "overlays" / "production",
    "dev": K8S / "overlays" / "dev",
}
COMPONENTS = (K8S / "components" / "cert-manager", K8S / "components" / "jwt-auth")
"""Every optional component, added to the production overlay as deploy/README.md says."""

Object = dict[str, Any]


def kubectl() -> str | None:
    return shutil.which("kubectl")


def _kustomize(directory: Path) -> list[Object]:
    binary = kubectl()
    assert binary is not None
    out = subprocess.run(
        [binary, "kustomize", str(directory)], check=True, capture_output=True, text=True,
        timeout=60,
    ).stdout
    return [o for o in yaml.safe_load_all(out) if o]


def render(name: str, workdir: Path) -> list[Object]:
    """The objects of an overlay (``OVERLAYS``), or of ``production-components``."""
    if name in OVERLAYS:
        return _kustomize(OVERLAYS[name])
    assert name == "production-components", name
    # kustomize refuses absolute paths to other kustomizations: relative ones from workdir.
    def rel(path: Path) -> str:
        return os.path.relpath(path, workdir)

    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "namespace": "flowledger",
        "resources": [rel(OVERLAYS["production"])],
        "components": [rel(c) for c in COMPONENTS],
    }
    (workdir / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    return _kustomize(workdir)


def find(objects: list[Object], kind: str, name: str) -> Object:
    matches = [
        o for o in objects
        if o["kind"] == kind and (o["metadata"]["name"] == name
                                  or o["metadata"]["name"].startswith(f"{name}-"))
    ]
    assert len(matches) == 1, f"{kind} {name}: {len(matches)} found"
    return matches[0]


@dataclass(frozen=True)
class Container:
    """One container of a Deployment, in the context of the rendered objects."""

    objects: list[Object]
    pod: Object
    spec: Object

    @classmethod
    def of(
        cls, objects: list[Object], workload: str, container: str, kind: str = "Deployment"
    ) -> Container:
        """Container ``container`` of the ``kind`` (Deployment, Job) named ``workload``."""
        pod = find(objects, kind, workload)["spec"]["template"]["spec"]
        (spec,) = [c for c in pod["containers"] if c["name"] == container]
        return cls(objects, pod, spec)

    def secret_refs(self) -> dict[str, tuple[str, str]]:
        """Variable -> (Secret, key), for the ``env`` entries read from a Secret's key."""
        # A whole Secret through envFrom would hand the container every key, the owner's too.
        assert all("secretRef" not in source for source in self.spec.get("envFrom", [])), (
            self.spec["envFrom"]
        )
        return {
            var["name"]: (ref["name"], ref["key"])
            for var in self.spec.get("env", [])
            if (ref := var.get("valueFrom", {}).get("secretKeyRef")) is not None
        }

    def secret_mounts(self) -> dict[str, str]:
        """Mount path -> Secret name, for the container's Secret volumes."""
        secrets = {v["name"]: v["secret"]["secretName"] for v in self.pod["volumes"]
                   if "secret" in v}
        return {m["mountPath"]: secrets[m["name"]] for m in self.spec.get("volumeMounts", [])
                if m["name"] in secrets}

    def env(self, secrets_root: Path, value_from: Mapping[str, str]) -> dict[str, str]:
        """The container's environment; ``value_from`` supplies the ``valueFrom`` variables
        (Secret keys, the pod name), and paths under a Secret mount move to
        ``secrets_root/<secret name>/``."""
        env: dict[str, str] = {}
        for source in self.spec.get("envFrom", []):
            name = source["configMapRef"]["name"]
            env.update(find(self.objects, "ConfigMap", name).get("data", {}))
        for var in self.spec.get("env", []):
            if "valueFrom" in var:
                env[var["name"]] = value_from[var["name"]]
            else:
                env[var["name"]] = var["value"]
        mounts = self.secret_mounts()
        for name, value in env.items():
            for path, secret in mounts.items():
                if value.startswith(f"{path}/"):
                    env[name] = str(secrets_root / secret / value[len(path) + 1:])
        return env

    def port(self, name_or_number: str | int) -> int:
        if isinstance(name_or_number, int):
            return name_or_number
        (port,) = [p["containerPort"] for p in self.spec["ports"] if p["name"] == name_or_number]
        return int(port)

    def probe_ports(self) -> Iterator[tuple[str, str, int]]:
        """(probe, handler, port) for each probe."""
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            for handler in ("grpc", "tcpSocket", "httpGet"):
                if handler in self.spec.get(probe, {}):
                    yield probe, handler, self.port(self.spec[probe][handler]["port"])


# -- Secrets -------------------------------------------------------------------------------------


def write_tls_secrets(objects: list[Object], root: Path) -> dict[str, Authority]:
    """For every cert-manager Certificate of ``objects`` that is not a CA, the Secret it makes
    (``tls.crt``, ``tls.key``, ``ca.crt``) under ``root/<secretName>/``, signed by a CA that
    stands in for its Issuer's. Returns the CAs by Issuer name."""
    certificates = [o for o in objects if o["kind"] == "Certificate"]
    assert certificates, "no Certificate: render with components/cert-manager"
    ca_secrets = {o["metadata"]["name"]: o["spec"]["ca"]["secretName"]
                  for o in objects if o["kind"] == "Issuer" and "ca" in o["spec"]}
    pki = root / "pki"
    pki.mkdir(parents=True, exist_ok=True)
    authorities = {issuer: Authority(pki, issuer) for issuer in ca_secrets}
    for cert in certificates:
        spec = cert["spec"]
        if spec.get("isCA"):
            assert spec["secretName"] in ca_secrets.values(), spec["secretName"]
            continue
        issuer = spec["issuerRef"]["name"]
        names = tuple(dict.fromkeys([*filter(None, [spec.get("commonName")]),
                                     *spec.get("dnsNames", [])]))
        usages = set(spec["usages"])
        leaf = authorities[issuer].issue(
            spec["secretName"], names,
            server="server auth" in usages, client="client auth" in usages,
        )
        directory = root / spec["secretName"]
        directory.mkdir()
        (directory / "tls.crt").write_bytes(leaf.cert_pem)
        (directory / "tls.key").write_bytes(leaf.key_pem)
        (directory / "ca.crt").write_bytes(authorities[issuer].cert_pem)
    return authorities


def issuer_of(objects: list[Object], secret_name: str) -> str:
    """The Issuer of the Certificate that makes Secret ``secret_name``."""
    (cert,) = [o for o in objects
               if o["kind"] == "Certificate" and o["spec"]["secretName"] == secret_name]
    return str(cert["spec"]["issuerRef"]["name"])
