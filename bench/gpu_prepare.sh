#!/usr/bin/env bash
# Prepare, on the build machine, what bench/gpu_session.sh needs on a GPU
# machine that has no internet and no compilers:
#   dist/deepcontext-gpu.tar.xz   the GPU bundle (make gpu-bundle)
#   gpudata/test.testbin          Caffe's C++ tests of the CUDA build, stripped
#   gpudata/photos/{train,held}/  the embedded demo photos, at most 500 px a side,
#                                 on the sides of photos.py's fixed split
#   gpudata/categories/           GCompris's 140 labelled pictures (5 classes)
#   gpudata/whl/                  pytest wheels for the bundle's Python 3.11
#   shared_bench/                 a copy of ../shared/bench (the PyTorch reference)
# gpudata/ and shared_bench/ are build outputs: keep them out of git
# (.git/info/exclude) and name them with dist in the device tool's carry.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
# The lent machines are Hopper (H100, H200): sm_90 alone builds in a
# fraction of the time of every CUDA 13 target (CUDA_ARCH=... overrides).
export CUDA_ARCH=${CUDA_ARCH:-90}
make gpu-bundle
$PY caffe_ext/build.py --cuda --cuda-tests --no-install
root=$(cat "${DEEPCONTEXT_CACHE:-$HOME/.cache/deepcontext}/caffe-cuda-latest")
mkdir -p gpudata/photos gpudata/whl
cp "$root/build/test/test.testbin" gpudata/test.testbin
strip gpudata/test.testbin
$PY - <<'EOF'
import os
import shutil
from PIL import Image
from deepcontext.data import photos
held = set(photos.held_out_photos())
for i, path in enumerate(photos.demo_photos()):
    side = 'held' if path in held else 'train'
    os.makedirs('gpudata/photos/' + side, exist_ok=True)
    out = 'gpudata/photos/%s/%03d.jpg' % (side, i)
    if not os.path.exists(out):
        im = Image.open(path).convert('RGB')
        im.thumbnail((500, 500), Image.BILINEAR)
        im.save(out, quality=92)
print('gpudata/photos: %d train, %d held out'
      % tuple(len(os.listdir('gpudata/photos/' + s)) for s in ('train', 'held')))
# the learning step's category retrieval: GCompris's labelled pictures
from deepcontext.data import debian_photos
if not os.path.isdir('gpudata/categories'):
    shutil.copytree(debian_photos.gcompris_categories(), 'gpudata/categories')
EOF
$PY -m pip download -q --no-deps --only-binary=:all: -d gpudata/whl \
    pytest==8.2.2 'pluggy>=1.5,<2' iniconfig packaging
if [ -d ../shared/bench ]; then
  mkdir -p shared_bench && cp ../shared/bench/*.py shared_bench/
fi
for d in gpudata shared_bench; do
  grep -qx "/$d/" .git/info/exclude 2>/dev/null || echo "/$d/" >> .git/info/exclude
done
du -sh dist gpudata shared_bench 2>/dev/null
echo "carry: dist gpudata shared_bench (64 MiB in all with the working tree)"
