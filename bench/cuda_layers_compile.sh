#!/usr/bin/env bash
# Compile-check caffe_ext's CUDA layers (ROIPooling, SmoothL1Loss) with nvcc
# for Hopper (sm_90), against the cached Caffe build's headers.  Needs nvcc and
# cuBLAS/cuRAND headers (e.g. from PyPI nvidia-cublas / nvidia-curand wheels:
# CUDA_EXTRA_INCLUDE=.../nvidia/cu13/include).  Prints one line per file.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
build=$(sed -n 's/^build: //p' "$here"/.venv/lib/python3*/site-packages/caffe/BUILD_INFO)
inc=${CUDA_EXTRA_INCLUDE:?set CUDA_EXTRA_INCLUDE to a folder with cublas_v2.h and curand.h}
command -v nvcc >/dev/null || { echo "nvcc not found"; exit 2; }
out=$(mktemp -d); trap 'rm -rf "$out"' EXIT
for cu in "$here"/caffe_ext/layers/*.cu; do
  t0=$(date +%s.%N)
  nvcc -c -std=c++17 -arch=sm_90 -I"$build/src/include" -I"$build/build/include" \
       -I"$inc" -I/usr/include/x86_64-linux-gnu -Xcompiler -fPIC "$cu" \
       -o "$out/$(basename "$cu" .cu).o" 2> "$out/err" \
    || { cat "$out/err"; echo "FAILED $(basename "$cu")"; exit 1; }
  printf 'compiled %-26s for sm_90 in %.1f s\n' "$(basename "$cu")" \
    "$(echo "$(date +%s.%N) - $t0" | bc)"
done
