#!/usr/bin/env bash
# Installs what `make test` and `make demo` need on a fresh Debian machine. Idempotent and quiet when done.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
py=${PYTHON:-python3}

missing=()
for pkg in $(grep -hv '^\s*#' "$here"/apt-*.txt | tr -s ' \n' '\n' | sort -u); do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "deps: apt-get install ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

stamp="$repo/.deps-stamp"
if [ ! -f "$stamp" ] || [ "$repo/pyproject.toml" -nt "$stamp" ]; then
  echo "deps: pip install -e .[dev]" >&2
  "$py" -m pip install -q --disable-pip-version-check -e "$repo[dev]" 2>&1 | grep -v "Running pip as the 'root' user" || true
  touch "$stamp"
fi
