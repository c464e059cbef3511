#!/usr/bin/env bash
# The README's two commands on a clean Debian root file system, as a new
# user runs them: debootstrap SUITE (minbase + git, make, python3), clone this
# checkout's HEAD into it, then `make demo` and `make test` from an empty
# Caffe cache, printing each one's wall time and the pytest summary line.
#
# Usage (as root): bench/distro_check.sh SUITE [--pyenv DIR] [--root DIR] [--fresh]
#   SUITE      a Debian suite: bookworm (12), trixie (13)
#   --pyenv D  put the host's Python D (say /root/.pyenv/versions/3.11.7)
#              first on PATH in the root, copied in at the same path: a python3
#              that is not the distribution's, as pyenv, conda or a module
#              system give; the Makefile must pick the one Boost.Python fits
#   --root D   where the root file system lives (default /var/tmp/dc-distro/SUITE);
#              made once and reused (its apt packages stay); --fresh makes it anew
# Each run clones into a new folder of the root and uses a new, empty
# DEEPCONTEXT_CACHE, so the Caffe build is timed too.  Logs: ROOT/runs/*.log.
#
# Behind an intercepting proxy (as on our development machines) the root
# cannot reach PyPI or the source archive until it trusts the proxy's
# certificate: the host's CA bundle and pip configuration (/etc/pip.conf,
# /etc/xdg/pip, PIP_* variables) are copied in, and resolv.conf for DNS.
set -euo pipefail
suite=${1:?usage: bench/distro_check.sh SUITE [--pyenv DIR] [--root DIR] [--fresh]}
shift
pyenv="" root="/var/tmp/dc-distro/$suite" fresh=0
while [ $# -gt 0 ]; do
  case $1 in
    --pyenv) pyenv=$2; shift 2 ;;
    --root) root=$2; shift 2 ;;
    --fresh) fresh=1; shift ;;
    *) echo "distro_check: unknown option $1" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" -eq 0 ] || { echo "distro_check: debootstrap and chroot need root" >&2; exit 1; }
command -v debootstrap >/dev/null || { echo "distro_check: debootstrap not found: apt-get install debootstrap" >&2; exit 1; }
[ -z "$pyenv" ] || [ -x "$pyenv/bin/python3" ] || { echo "distro_check: --pyenv $pyenv has no bin/python3" >&2; exit 1; }
src=$(cd "$(dirname "$0")/.." && pwd)

mounted=()
cleanup() {
  local i
  for ((i=${#mounted[@]}-1; i>=0; i--)); do umount -l "${mounted[i]}" 2>/dev/null || true; done
}
trap cleanup EXIT INT TERM

if grep -q " $root/" /proc/mounts; then   # never rm -rf through a bind mount of /dev
  echo "distro_check: something is still mounted under $root (an earlier run killed?): umount it first" >&2
  exit 1
fi
[ $fresh -eq 0 ] || rm -rf "$root"
if [ ! -f "$root/.debootstrap-done" ]; then
  rm -rf "$root"; mkdir -p "$(dirname "$root")"
  t0=$(date +%s)
  debootstrap --variant=minbase --include=ca-certificates,git,make,python3 \
    "$suite" "$root" http://deb.debian.org/debian >"$root.debootstrap.log" 2>&1 \
    || { echo "distro_check: debootstrap failed: $root.debootstrap.log" >&2; exit 1; }
  echo "deb http://deb.debian.org/debian-security $suite-security main" >>"$root/etc/apt/sources.list"
  touch "$root/.debootstrap-done"
  echo "distro_check: $suite root made in $(( $(date +%s) - t0 )) s"
fi
# The proxy's trust and pip's settings (see the comment above).
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
[ -f /etc/pip.conf ] && cp /etc/pip.conf "$root/etc/pip.conf"
[ -d /etc/xdg/pip ] && { mkdir -p "$root/etc/xdg"; rm -rf "$root/etc/xdg/pip"; cp -r /etc/xdg/pip "$root/etc/xdg/pip"; }
cp -L /etc/resolv.conf "$root/etc/resolv.conf"
for m in proc sys dev dev/pts; do
  mount --bind "/$m" "$root/$m"; mounted+=("$root/$m")
done

tag=$suite-$( [ -n "$pyenv" ] && echo "pyenv$(basename "$pyenv")" || echo distro)-$(date +%Y%m%d-%H%M%S)
work=/runs/$tag
mkdir -p "$root/runs"
git clone -q "$src" "$root$work"
path=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
if [ -n "$pyenv" ]; then
  mkdir -p "$root$(dirname "$pyenv")"
  rm -rf "$root$pyenv"; cp -a "$pyenv" "$root$pyenv"
  path=$pyenv/bin:$path
fi
envs=(env -i HOME=/root PATH="$path" LANG=C.UTF-8 TERM=dumb
      DEEPCONTEXT_CACHE="$work.cache")
for v in $(env | grep -o '^PIP_[A-Z_]*' || true); do
  [ "$v" = PIP_FIND_LINKS ] || envs+=("$v=${!v}")   # the host's wheel folder is not in the root
done
envs+=(SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
       REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt)

echo "distro_check: $suite ($(cat "$root/etc/debian_version")), python3 on PATH: $(chroot "$root" "${envs[@]}" sh -c 'command -v python3; python3 --version')"
echo "distro_check: HEAD $(git -C "$src" log -1 --format='%h %s' | cut -c1-70)"
status=0
for target in demo test; do
  log=$root$work.$target.log
  t0=$(date +%s)
  if chroot "$root" "${envs[@]}" sh -c "cd $work && make $target" >"$log" 2>&1; then rc=0; else rc=$?; fi
  dt=$(( $(date +%s) - t0 ))
  echo "distro_check: make $target: exit $rc, $((dt / 60)) min $((dt % 60)) s (log $log)"
  grep -m1 '^deepcontext: Python' "$log" | sed 's/^/  /' || true
  [ $target = test ] && { tail -n 3 "$log" | grep -E 'passed|failed|error' | sed 's/^/  pytest: /' || true; }
  [ $rc -eq 0 ] || { tail -n 15 "$log" | sed 's/^/  | /'; status=1; break; }
done
exit $status
