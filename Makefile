# deepcontext: two commands for a fresh Debian 12 / 13 or Ubuntu 24.04 machine.
#   make demo   install everything, build Caffe (cached), train on the
#               embedded photos for a few minutes on the CPU
#   make test   install everything, run the tests
# On a GPU machine with CUDA 13's nvcc: `make cuda` (or CUDA=1 with either)
# puts the CUDA build of pycaffe into the venv, and later runs keep it;
# `make cpu` (or CUDA=0) goes back to the CPU build (docs/gpu.md).
# Caffe is built once per source+patches+options into $(DEEPCONTEXT_CACHE)
# (default ~/.cache/deepcontext); later runs start in seconds.

# PYTHON=... names the interpreter of the venv; unset, caffe_ext/pick_python.sh
# takes the one this system's Boost.Python is built for (python3 on PATH if
# its version matches, else the distribution's python3.X) and says which.
PYTHON_ASKED := $(if $(filter command line environment,$(origin PYTHON)),$(PYTHON))
VENV := .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
# CUDA=1: the CUDA build of pycaffe in the venv; CUDA=0: the CPU build;
# unset: the one the venv has (a new venv: CPU).  build.py says which.
CUDA ?=
CAFFE_VARIANT := $(if $(filter 1 yes,$(CUDA)),--cuda,$(if $(filter 0 no,$(CUDA)),--cpu,))

.PHONY: all setup sysdeps venv caffe photos bridge bridge-optional cuda cpu gpu-bundle test demo bench clean

all: setup

sysdeps:
	@bash caffe_ext/sysdeps.sh

# The loaders' C kernels (deepcontext/data/_patchops.c, loaded with ctypes).
# -ffp-contract=off keeps every float operation rounding as the numpy one
# it replaces; no -march, so the library also runs on the GPU machines.
PATCHOPS := deepcontext/data/_patchops.so
$(PATCHOPS): deepcontext/data/_patchops.c
	cc -O3 -ffp-contract=off -fPIC -shared -o $@.tmp $< -lm && mv $@.tmp $@

# The venv (caffe_ext/venv.sh): the pinned packages of its Python version,
# from wheels, and deepcontext; its IPython gets execfile()
# (deepcontext/train/ipython.py).  Made anew when its Python version is not
# the one Caffe can be built for here.
venv: sysdeps $(PATCHOPS)
	@bash caffe_ext/venv.sh $(VENV) "$(PYTHON_ASKED)"

caffe: venv
	@$(PY) caffe_ext/build.py $(CAFFE_VARIANT)

# The demo photos from Debian packages (deepcontext/data/debian_photos.py):
# pinned .debs, downloaded once, only the photos kept in the cache.
photos: venv
	@$(PY) -m deepcontext.data.debian_photos

setup: caffe photos

# The CUDA 13 + cuDNN 9 variant, compiled here (nvcc, no GPU needed), for
# every CUDA 13 GPU (sm_75 ... sm_120 + PTX) or, with CUDA_ARCH=90 (say),
# one target.  `make cuda` installs it into the venv (gpu = 0 then trains
# on the GPU); `make gpu-bundle` leaves the venv alone and packs it into
# the relocatable tarball for GPU machines without compilers (dist/).
export CUDA_ARCH

cuda: venv
	@$(PY) caffe_ext/build.py --cuda

cpu: venv
	@$(PY) caffe_ext/build.py --cpu

gpu-bundle: venv
	@$(PY) caffe_ext/build.py --cuda --no-install
	$(PY) caffe_ext/bundle.py

# The bridge to PyTorch and ONNX (tools/export_torch.py; requirements-bridge.txt):
# torch's CPU build, onnx, onnxruntime.  `make test` installs it where its
# wheels exist, and otherwise says so and skips its tests.
bridge: venv
	@bash caffe_ext/bridge.sh $(VENV)

bridge-optional: venv
	@bash caffe_ext/bridge.sh $(VENV) --optional

test: setup bridge-optional
	$(PY) -m pytest $(PYTEST_ARGS) tests

demo: setup
	$(PY) -m deepcontext.demo

bench: setup
	$(PY) bench/loader_throughput.py
	$(PY) bench/cpu_step_time.py

clean:
	rm -rf $(VENV) .pytest_cache dist $(PATCHOPS)
