#!/usr/bin/env bash
# CI stage "clients" (issue 7): the contract and the Node client, on a fresh clone, as root.
#   buf lint + buf breaking against the committed baseline (decision 0009),
#   npm ci in clients/node (tools pinned by its package-lock.json: buf, ts-proto, typescript),
#   build (stubs generated from protos/ at build time) and node tests: the shared vectors in
#   tests/vectors/ and a live run against `python -m store_service` / `python -m engine_service`.
# Needs node >= 20 with npm, and the repository's .venv (built here through `make setup`).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

step() { printf -- '--- %s\n' "$*"; }

if ! command -v npm >/dev/null; then
  step "install nodejs/npm"
  apt-get update -qq && apt-get install -y -qq --no-install-recommends nodejs npm
fi
step "node $(node --version), npm $(npm --version)"

step "make setup (the services the live tests start)"
make --no-print-directory setup

step "npm ci (clients/node)"
(cd clients/node && npm ci --no-audit --no-fund --loglevel=error)
buf="$root/clients/node/node_modules/.bin/buf"

step "buf lint"
"$buf" lint
step "buf breaking against protos/baseline/flowledger-v1.binpb"
"$buf" breaking --against protos/baseline/flowledger-v1.binpb

step "node client: build and test"
(cd clients/node && npm test --silent)
