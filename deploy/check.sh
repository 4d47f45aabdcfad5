#!/usr/bin/env bash
# Checks of deploy/ with the real tools, installed here when missing (CI runs this as root on a
# fresh clone, before `make test`): kustomize renders the base, the production and dev overlays
# and production with every optional component (cert-manager, jwt-auth), the output validates
# against the Kubernetes 1.30 JSON schemas, promtool checks and unit-tests the alert
# rules and parses every dashboard expression, and the dashboard type-checks against
# @grafana/schema. Tools land in deploy/.tools (gitignored).
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
if [ ! -x "$TOOLS/venv/bin/kubernetes-validate" ]; then
  python3 -m venv "$TOOLS/venv"
  "$TOOLS/venv/bin/pip" install -q --disable-pip-version-check 'kubernetes-validate==1.37.0' 2>&1 \
    | grep -v "^WARNING: Location" || true
fi
TSC=1
if ! command -v npm >/dev/null; then
  TSC=0
  echo "    SKIP dashboard type check: npm is not installed"
elif [ ! -x "$TOOLS/node_modules/.bin/tsc" ] || [ ! -d "$TOOLS/node_modules/@grafana/schema" ]; then
  npm install --silent --no-audit --no-fund --prefix "$TOOLS" \
    '@grafana/schema@13.2.3' 'typescript@7.0.2' >/dev/null
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
echo "deploy checks passed"
