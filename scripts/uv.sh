#!/usr/bin/env bash
# Prints the path of the uv this repository pins (requirements/uv.txt, hash-checked by pip),
# installing it into .tools/uv first when it is missing or another version. The Makefile,
# deploy/check.sh and scripts/check_locks.sh get uv through this (decision 0025).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dir="$root/.tools/uv"
want="$(sed -n 's/^uv==\([^ ;]*\).*/\1/p' "$root/requirements/uv.txt")"
have="$("$dir/bin/uv" --version 2>/dev/null | cut -d' ' -f2 || true)"
if [ "$have" != "$want" ]; then
  rm -rf "$dir"
  "${PYTHON:-python3}" -m venv "$dir" >&2
  "$dir/bin/pip" install --quiet --disable-pip-version-check --require-hashes --no-deps \
    -r "$root/requirements/uv.txt" >&2
fi
echo "$dir/bin/uv"
