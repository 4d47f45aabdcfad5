#!/usr/bin/env bash
# Fails when the committed stubs differ from what protos/ generates.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"$root/scripts/gen_protos.sh" "$tmp"
if ! diff -ru "$root/clients/python/flowledger/v1" "$tmp/flowledger/v1" -x __pycache__; then
  echo "generated stubs drifted from protos/: run scripts/gen_protos.sh and commit" >&2
  exit 1
fi
echo "generated stubs match protos/"
