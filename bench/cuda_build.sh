#!/usr/bin/env bash
# Verify that the CUDA variant of Caffe compiles here (nvcc, no GPU needed):
# builds it (cached after the first time), then prints what it links and
# the GPU code it carries.  Exits 0 with a note when nvcc is absent.
# One GPU target (CUDA_ARCH, default 90) keeps the check short; the
# full list of build.py compiles several times as long.
set -euo pipefail
cd "$(dirname "$0")/.."
nvcc=${CUDA_HOME:-/usr/local/cuda}/bin/nvcc
[ -x "$nvcc" ] || nvcc=$(command -v nvcc || true)
[ -n "$nvcc" ] || { echo "nvcc not found: CUDA build not checked"; exit 0; }
t0=$(date +%s)
export CUDA_ARCH=${CUDA_ARCH:-90}
.venv/bin/python caffe_ext/build.py --cuda
root=$(cat "${DEEPCONTEXT_CACHE:-$HOME/.cache/deepcontext}/caffe-cuda-latest")
lib=$root/install/lib/libcaffe.so.1.0.0
echo "CUDA build: $root ($(( $(date +%s) - t0 )) s this run)"
echo "libcaffe: $(du -h "$lib" | cut -f1), links:"
ldd "$lib" | grep -E 'cud|cublas|curand|nccl' | sed 's/ (0x.*//'
echo "GPU code: $(.venv/bin/python -c "import sys; sys.path.insert(0, 'caffe_ext'); import build; print(' '.join(build.fatbin_targets(sys.argv[1])))" "$lib")," \
     "cuDNN engine: $(grep -c cudnn "$root/build/CMakeCache.txt" | tr -d ' ') cache entries"
