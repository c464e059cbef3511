#!/usr/bin/env bash
# Print the Python interpreter the venv is made from: the one this system's
# Boost.Python is built for.  pycaffe's _caffe.so links libboost_python3XY,
# which exists for one Python version per distribution (Debian 12: 3.11,
# Ubuntu 24.04: 3.12, Debian 13: 3.13); a venv of any other version cannot
# import it.  A python3 first on PATH from pyenv, conda or a module system
# is used when its version matches, else the distribution's python3.X.
#
# Usage: caffe_ext/pick_python.sh [PYTHON]
#   PYTHON  the interpreter the user asked for (make PYTHON=...): used if it
#           can work, refused with one line naming the mismatch if not.
# Prints the interpreter's path on stdout and one line on stderr saying
# which it is and why; exits 1 with one line when none can work.
set -euo pipefail
asked=${1:-}
SUPPORTED="3.11 3.12 3.13"

die() { echo "deepcontext: $*" >&2; exit 1; }

# Versions "3.XY" of the Boost.Python libraries a build can link.
boost_versions() {
  local f v
  for f in /usr/lib/*/libboost_python3*.so /usr/lib/libboost_python3*.so \
           /usr/lib64/libboost_python3*.so /usr/local/lib/libboost_python3*.so; do
    [ -e "$f" ] || continue
    v=${f##*libboost_python3}; v=${v%.so}
    [[ $v =~ ^[0-9]+$ ]] && echo "3.$v"
  done | sort -u
}

# "3.XY" of an interpreter that runs and can build pycaffe (its headers are
# there); nothing if it cannot run (e.g. a pyenv shim of an unselected version).
version_of() {
  "$1" -c 'import os, sys, sysconfig
inc = sysconfig.get_paths()["include"]
sys.exit(0 if os.path.exists(os.path.join(inc, "Python.h")) else 3)' \
    >/dev/null 2>&1 || return 0
  "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || true
}
# The interpreter itself, not a pyenv shim that picks one by the directory.
real_of() { "$1" -c 'import sys; print(sys.executable)' 2>/dev/null || echo "$1"; }

mapfile -t boost < <(boost_versions)
[ ${#boost[@]} -gt 0 ] || die "no Boost.Python library (libboost_python3XY.so) found: install libboost-python-dev (make sysdeps does)"
names=$(printf 'libboost_python%s ' "${boost[@]/./}")
names=${names% }

usable() {  # is version $1 one Boost.Python is built for, and supported?
  local b
  [[ " $SUPPORTED " == *" $1 "* ]] || return 1
  for b in "${boost[@]}"; do [ "$b" = "$1" ] && return 0; done
  return 1
}

if [ -n "$asked" ]; then
  path=$(command -v "$asked" || true)
  [ -n "$path" ] || die "PYTHON=$asked: no such interpreter"
  ver=$(version_of "$path")
  [ -n "$ver" ] || die "PYTHON=$asked ($path) does not run or has no C headers (Python.h), which the pycaffe build needs"
  [[ " $SUPPORTED " == *" $ver "* ]] || die "PYTHON=$asked is Python $ver; deepcontext supports Python ${SUPPORTED// /, }"
  usable "$ver" || die "PYTHON=$asked is Python $ver, but this system's Boost.Python is for Python ${boost[*]} ($names): pycaffe could not import; use PYTHON=python${boost[0]} or leave PYTHON unset"
  path=$(real_of "$path")
  echo "deepcontext: Python $ver ($path), as PYTHON= asks; Boost.Python: $names" >&2
  echo "$path"
  exit 0
fi

# python3 on PATH first, then python3.X for each Boost.Python version: on
# PATH (pyenv shims of unselected versions do not run and are passed over),
# then the distribution's /usr/bin/python3.X.
onpath=$(command -v python3 || true)
candidates=()
[ -n "$onpath" ] && candidates+=("$onpath")
for v in "${boost[@]}"; do
  while IFS= read -r p; do candidates+=("$p"); done < <(type -ap "python$v" || true)
  candidates+=("/usr/bin/python$v")
done
for path in "${candidates[@]}"; do
  [ -x "$path" ] || continue
  ver=$(version_of "$path")
  [ -n "$ver" ] && usable "$ver" || continue
  why="python3 on PATH"
  real=$(real_of "$path")
  if [ "$path" != "$onpath" ]; then
    why="python3 on PATH is $( [ -n "$onpath" ] && { v=$(version_of "$onpath"); echo "Python ${v:-?} ($onpath)"; } || echo none), which cannot load it"
  fi
  echo "deepcontext: Python $ver ($real), the version of this system's Boost.Python ($names); $why" >&2
  echo "$real"
  exit 0
done
supported=$(for b in "${boost[@]}"; do [[ " $SUPPORTED " == *" $b "* ]] && echo -n "$b "; done)
if [ -z "$supported" ]; then
  die "this system's Boost.Python is for Python ${boost[*]} ($names); deepcontext supports Python ${SUPPORTED// /, } (Debian 12 and 13, Ubuntu 24.04)"
fi
die "no Python ${supported% } interpreter with C headers found for this system's Boost.Python ($names): install python3-dev (make sysdeps does) or give PYTHON="
