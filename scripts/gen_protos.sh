#!/usr/bin/env bash
# Regenerates the Python stubs of protos/ into clients/python/flowledger/v1 (or into $1).
# Generated code is never edited by hand; CI runs scripts/check_generated.sh to catch drift.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-$root/clients/python}"
py="${PYTHON:-$root/.venv/bin/python}"
mkdir -p "$out/flowledger/v1"
PATH="$(dirname "$py"):$PATH" "$py" -m grpc_tools.protoc \
  -I "$root/protos" \
  --python_out="$out" \
  --grpc_python_out="$out" \
  --mypy_out=quiet:"$out" \
  --mypy_grpc_out=quiet:"$out" \
  "$root"/protos/flowledger/v1/*.proto
# Mark every generated file so nobody edits it by hand (psycopg does the same).
for f in "$out"/flowledger/v1/*_pb2*.py "$out"/flowledger/v1/*_pb2*.pyi; do
  if ! head -n1 "$f" | grep -q "DO NOT EDIT"; then
    { echo "# DO NOT EDIT: generated from protos/ by scripts/gen_protos.sh."; cat "$f"; } >"$f.tmp"
    mv "$f.tmp" "$f"
  fi
done
cat >"$out/flowledger/v1/__init__.py" <<'PY'
# DO NOT EDIT: generated from protos/ by scripts/gen_protos.sh.
"""Generated protobuf and gRPC stubs of the flowledger.v1 contracts."""
PY
