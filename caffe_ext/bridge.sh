#!/usr/bin/env bash
# Install the bridge (requirements-bridge.txt: torch CPU, onnx, onnxruntime)
# into the venv, from wheels, with requirements.txt so its pins hold.
# A stamp keeps a second run to a second.
#
# Usage: caffe_ext/bridge.sh VENV [--optional]
#   --optional   (make test) when the wheels are not to be had here, say so
#                in one line and exit 0: the bridge's tests skip
set -euo pipefail
venv=$1
optional=${2:-}
cd "$(dirname "$0")/.."
stamp=$venv/.bridge.stamp
want=$(sha256sum requirements.txt requirements-bridge.txt)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
ver=$("$venv/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if "$venv/bin/python" -m pip install -q --disable-pip-version-check \
    --only-binary=:all: -r requirements.txt -r requirements-bridge.txt >"$log" 2>&1; then
  echo "$want" > "$stamp"
  echo "deepcontext: bridge installed (torch $("$venv/bin/python" -c 'import torch; print(torch.__version__)'), onnx, onnxruntime)"
  exit 0
fi
line="deepcontext: the bridge's wheels (requirements-bridge.txt) are not to be had for Python $ver here; add PyTorch's CPU index: PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu make bridge"
if [ "$optional" = --optional ]; then
  echo "$line; its tests are skipped" >&2
  exit 0
fi
grep -v '^WARNING: Location' "$log" | tail -5 >&2
echo "$line" >&2
exit 1
