#!/usr/bin/env bash
# Install the Debian/Ubuntu packages listed in apt-packages.txt that are
# missing.  Idempotent: when everything is present it only checks (a second).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
mapfile -t wanted < <(grep -v '^\s*#' "$here/apt-packages.txt" | grep -v '^\s*$')
missing=()
for p in "${wanted[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "deepcontext: installing system packages: ${missing[*]}"
if [ "$(id -u)" -eq 0 ]; then sudo=""; elif command -v sudo >/dev/null; then sudo="sudo"; else
  echo "deepcontext: missing system packages and not root (no sudo): ${missing[*]}" >&2
  echo "  install them with: apt-get install --no-install-recommends ${missing[*]}" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -q >/dev/null || true
if ! $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"; then
  echo "deepcontext: apt-get could not install: ${missing[*]}" >&2
  exit 1
fi
