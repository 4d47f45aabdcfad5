#!/usr/bin/env bash
# Fails when a lock is stale (decision 0025): uv.lock against pyproject.toml, and the image's
# hash-pinned requirements (requirements/runtime.txt, exported from uv.lock) against uv.lock.
# `make lock` brings both up to date.
set -euo pipefail
cd "$(dirname "$0")/.."
uv="$(scripts/uv.sh)"
if ! "$uv" lock --check --quiet; then
  echo "uv.lock is stale against pyproject.toml: run \`make lock\` and commit uv.lock" >&2
  exit 1
fi
if ! "$uv" export --quiet --frozen --no-default-groups --no-emit-project --no-header \
    | diff -u requirements/runtime.txt - >&2; then
  echo "requirements/runtime.txt is stale against uv.lock: run \`make lock\` and commit it" >&2
  exit 1
fi
echo "locks: uv.lock and requirements/runtime.txt are current"
