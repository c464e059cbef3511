#!/usr/bin/env bash
# Make the venv, or keep it: from the interpreter pick_python.sh names (the
# one this system's Boost.Python is for), with the pinned packages of that
# Python version (requirements.txt's markers), all from wheels, and
# deepcontext itself installed editable.  A venv of another Python version
# (say, made before the system was upgraded) is made anew, with one line.
# A stamp holds the Python version and the hashes of the files that decide
# what is installed, so a second run with nothing changed takes a second.
#
# Usage: caffe_ext/venv.sh VENV [PYTHON]
set -euo pipefail
venv=$1
asked=${2:-}
cd "$(dirname "$0")/.."

py=$(bash caffe_ext/pick_python.sh "$asked")
ver_of() { "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])'; }
ver=$(ver_of "$py")

if [ -x "$venv/bin/python" ]; then
  have=$(ver_of "$venv/bin/python" 2>/dev/null || echo broken)
  if [ "$have" != "$ver" ]; then
    echo "deepcontext: $venv is Python $have, this system's Caffe needs $ver: making it anew" >&2
    rm -rf "$venv"
  fi
fi

stamp=$venv/.requirements.stamp
want="python $ver
$(sha256sum requirements.txt pyproject.toml deepcontext/train/ipython.py)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi

[ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check)
# Wheels only: a pin without a wheel for this Python fails here, in seconds,
# instead of starting a long source build of the scientific stack.
if ! "${pip[@]}" --only-binary=:all: -r requirements.txt; then
  echo "deepcontext: pip could not install requirements.txt for Python $ver from wheels (see above)" >&2
  exit 1
fi
"${pip[@]}" --no-deps -e .
"$venv/bin/python" -m deepcontext.train.ipython --install
echo "$want" > "$stamp"
