#!/usr/bin/env bash
# On the GPU machine: unpack the GPU bundle (dist/deepcontext-gpu.tar.xz,
# carried), then run the given steps.  Output under $OUT (or /tmp/out).
# Usage: bash bench/gpu_session.sh STEP...   (steps: see case below)
# Carried with it (bench/gpu_prepare.sh makes them): dist/ (the bundle),
# gpudata/ (photos/: JPEGs of at most 500 px a side; whl/: pytest wheels;
# test.testbin from build.py --cuda --cuda-tests, stripped) and
# shared_bench/ (a copy of ../shared/bench, the PyTorch reference).
# Example: run(command="bash bench/gpu_session.sh info pytest gtest ratio e2e",
#              carry=["dist", "gpudata", "shared_bench"])
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
B=/tmp/dcb
if [ ! -x $B/deepcontext-gpu/bin/python ]; then
  mkdir -p $B && tar xJf dist/deepcontext-gpu.tar.xz -C $B || exit 1
fi
# The working tree comes first on PYTHONPATH (cpy), but its loader kernels
# (deepcontext/data/_patchops.so, a build output) do not travel with it:
# take the bundle's, built here from the same source.
so=deepcontext/data/_patchops.so
cmp -s deepcontext/data/_patchops.c $B/deepcontext-gpu/site-packages/${so%.so}.c \
  || { echo "the bundle's _patchops.c differs from the tree's: make gpu-bundle again"; exit 1; }
[ -f $so ] || cp $B/deepcontext-gpu/site-packages/$so $so || exit 1
export PYTHONUNBUFFERED=1
cpy() { ( source $B/deepcontext-gpu/env.sh; export PYTHONPATH=${PYTHONPATH_PRE:+$PYTHONPATH_PRE:}$PWD:$PYTHONPATH; "$B/deepcontext-gpu/python/bin/python3.11" "$@" ); }
# pytest for the bundle's Python, from the carried wheels, on tests/test_gpu.py
gpu_pytest() {
  mkdir -p /tmp/site && for w in gpudata/whl/*.whl; do
    python3 -c "import zipfile,sys; zipfile.ZipFile(sys.argv[1]).extractall('/tmp/site')" $w; done
  DEEPCONTEXT_TEST_IMAGES=$PWD/gpudata/photos PYTHONPATH_PRE=/tmp/site \
    cpy -m pytest -p no:cacheprovider tests/test_gpu.py "$@"
}
# the layers and pieces the patch network and Fast R-CNN export use (the
# CUDA build has no HDF5, which Caffe's solver tests read their data from)
GTEST_LAYERS=${GTEST_LAYERS:-'*Convolution*:*CuDNN*:*Pooling*:*LRN*:*BatchNorm*:*BatchReindex*:*InnerProduct*:*Concat*:*Softmax*:*Split*:*DummyData*:*ROIPooling*:*SmoothL1*:*SyncedMemory*:*MathFunctions*:*Im2col*:*Filler*:*Neuron*:-*HDF5*:*Deconvolution*'}
for step in "$@"; do
  echo "=== $step $(date +%T)"
  case $step in
    info) nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu,utilization.gpu --format=csv; nproc ;;
    torch) for f in "" --tf32; do python3 shared_bench/torch_reference.py --iters 50 $f; done ;;
    base) cpy bench/gpu_step.py --label find --layers ;;
    heur) CAFFE_CUDNN_FIND=0 cpy bench/gpu_step.py --label heuristic ;;
    nodbg) cpy bench/gpu_step.py --label find-nodbg --no-debug-info ;;
    ws4g) CAFFE_CUDNN_WORKSPACE_MB=4096 cpy bench/gpu_step.py --label find-ws4g --layers ;;
    algos) for ws in 256 4096; do for t in 0 1; do
        GLOG_minloglevel=0 CAFFE_TF32=$t CAFFE_CUDNN_WORKSPACE_MB=$ws cpy bench/gpu_step.py --iters 3 --warmup 1 2>&1 | grep -E "cuDNN algorithms|caffe-step" | sed "s/^.*\] //;s/^/ws=$ws tf32=$t /"; done; done ;;
    engine) cpy bench/gpu_step.py --label caffe-engine --caffe-engine --iters 10 ;;
    tf32) CAFFE_TF32=1 cpy bench/gpu_step.py --label tf32 --layers ;;
    tf32nodbg) CAFFE_TF32=1 cpy bench/gpu_step.py --label tf32-nodbg --no-debug-info ;;
    tf32ws4g) CAFFE_TF32=1 CAFFE_CUDNN_WORKSPACE_MB=4096 cpy bench/gpu_step.py --label tf32-ws4g ;;
    gtest) # Caffe's C++ tests of the layers and solver we use, on the GPU
      ( source $B/deepcontext-gpu/env.sh
        timeout ${GTEST_TIMEOUT:-300} gpudata/test.testbin \
          --gtest_filter="$GTEST_LAYERS" > $OUT/gtest.log 2>&1
        echo "exit $?"; grep -c "^\[       OK \]" $OUT/gtest.log
        grep -E "^\[  (PASSED|FAILED) |^\[  FAILED|tests ran" $OUT/gtest.log | head -20 ) ;;
    pytest1) # GPU tests matching PYTEST_K, uncaptured (glog's messages visible)
      GLOG_minloglevel=1 gpu_pytest -x -s -k "${PYTEST_K:-pass}" > $OUT/pytest1.log 2>&1
      grep -E "^F2026|Check failed|passed|failed|assert" $OUT/pytest1.log | head -20 ;;
    pytest) # our GPU tests (tests/test_gpu.py) with the bundle's Python
      gpu_pytest -v -x > $OUT/pytest.log 2>&1
      grep -E "PASS|FAIL|ERROR|passed|failed|Check failed|^F[0-9]|Error|error" $OUT/pytest.log | head -30 ;;
    compare) cpy bench/gpu_compare.py ;;
    ratio) # solver throughput against the PyTorch reference, same GPU, now
      for mode in fp32 tf32; do
        flag=; tf=0; [ $mode = tf32 ] && { flag=--tf32; tf=1; }
        t=$(python3 shared_bench/torch_reference.py --iters 50 $flag | grep -o 'patches_per_s=[0-9]*' | cut -d= -f2)
        c=$(CAFFE_TF32=$tf cpy bench/gpu_step.py | grep -o 'patches_per_s=[0-9]*' | cut -d= -f2)
        python3 -c "print('ratio $mode: caffe %s patches/s, torch %s patches/s, %.2fx' % ($c, $t, $c / $t))"
      done ;;
    loader) cpy bench/loader_throughput.py --images gpudata/photos --workers ${LOADER_WORKERS:-15} --batches ${LOADER_BATCHES:-60} ;;
    e2e) cpy bench/gpu_train.py --images gpudata/photos --iters ${ITERS:-600} ;;
    e2etf32) cpy bench/gpu_train.py --images gpudata/photos --iters 600 --tf32 ;;
    learning) # issue 14: does a run learn? ~8 minutes at batch 512, measured
      # on the held-out photos at every checkpoint (bench/learning.py)
      cpy bench/learning.py --gpu 0 --workers 15 --batch-size 512 \
        --base-lr 1e-5 --momentum 0.9 --iters ${LEARN_ITERS:-12000} \
        --every ${LEARN_EVERY:-2000} --images gpudata/photos/train \
        --held-out gpudata/photos/held --categories gpudata/categories \
        --out $OUT/learning ;;
    *) echo "unknown step $step" ;;
  esac
done
