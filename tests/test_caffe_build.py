"""Our Caffe build: pycaffe from the venv, Caffe's own suites, SGD round trip.
"""
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from google.protobuf import text_format

import caffe
from caffe import layers as L
from caffe.proto import caffe_pb2

from deepcontext.model import pycaffe

CAFFE_DIR = os.path.dirname(caffe.__file__)


def build_info():
    info = {}
    with open(os.path.join(CAFFE_DIR, 'BUILD_INFO')) as f:
        for line in f:
            key, _, value = line.partition(':')
            info[key.strip()] = value.strip()
    return info


def test_pycaffe_is_installed_in_the_venv():
    assert CAFFE_DIR.startswith(sys.prefix)
    assert os.path.isfile(os.path.join(CAFFE_DIR, '_caffe.so'))
    assert 'Debian caffe 1.0.0+git20180821.99bd997-8' in build_info()['source']


def test_layers_we_use_are_registered():
    types = set(caffe.layer_type_list())
    for t in ('BatchReindex', 'BatchNorm', 'Convolution', 'InnerProduct',
              'LRN', 'Pooling', 'ReLU', 'Concat', 'DummyData',
              'SoftmaxWithLoss', 'Data', 'Python'):
        assert t in types, t


def test_caffe_python_unit_tests(tmp_path):
    """Caffe's own python/caffe/test suite, against the installed pycaffe."""
    # The suite's layout: test_draw walks <root>/models and <root>/examples,
    # three folders above the tests, so mirror python/caffe/test there.
    src = os.path.join(build_info()['build'], 'src')
    suite = tmp_path / 'python' / 'caffe' / 'test'
    shutil.copytree(os.path.join(CAFFE_DIR, 'test'), suite)
    for name in ('models', 'examples'):
        os.symlink(os.path.join(src, name), tmp_path / name)
    # The CUDA variant is built without HDF5 (docs/gpu.md): Caffe aborts
    # on save_hdf5 there by design.
    skip = ([] if pycaffe.cpu_only() else
            ['--deselect',
             'python/caffe/test/test_net.py::TestNet::test_save_hdf5'])
    # Its net files are NamedTemporaryFile(delete=False), never removed (8
    # a run were left in /tmp): TMPDIR puts them in a folder pytest prunes.
    scratch = tmp_path / 'tmp'
    scratch.mkdir()
    r = subprocess.run([sys.executable, '-m', 'pytest', '-q', '-p',
                        'no:cacheprovider', '-W', 'ignore::DeprecationWarning',
                        str(suite)] + skip, cwd=tmp_path,
                       env=dict(os.environ, TMPDIR=str(scratch)),
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert re.search(r'\b5\d passed', r.stdout), r.stdout[-500:]
    assert any(scratch.iterdir()), 'TMPDIR was not honoured'


# Caffe's whole C++ suite on the CPU (1058 tests, about 50 s on 2 cores;
# BatchReindex, BatchNorm, Convolution, ..., Net and SGDSolver among them).
CPP_FILTER = '-*GPU*'


def test_caffe_cpp_suite(tmp_path):
    testbin = build_info().get('testbin')
    if not testbin or not os.path.isfile(testbin):
        pytest.skip('C++ test binary not built (build.py --no-tests)')
    # The tests open src/caffe/test/test_data/... relative to Caffe's root.
    # Caffe's MakeTempDir makes a caffe_test.XXXX-XXXX folder per test under
    # the system's temporary folder and never removes it (about 790 a run):
    # TMPDIR puts them in pytest's, which pytest prunes.
    env = dict(os.environ, TMPDIR=str(tmp_path))
    r = subprocess.run([testbin, '--gtest_filter=' + CPP_FILTER],
                       cwd=os.path.join(build_info()['build'], 'src'),
                       env=env, capture_output=True, text=True, timeout=900)
    tail = r.stdout[-3000:]
    assert r.returncode == 0, tail
    assert '[  PASSED  ]' in r.stdout and 'FAILED' not in r.stdout, tail
    assert any(tmp_path.glob('caffe_test.*')), 'TMPDIR was not honoured'


def tiny_net(path, batch=8):
    n = caffe.NetSpec()
    n.data, n.label = L.DummyData(
        shape=[dict(dim=[batch, 3, 12, 12]), dict(dim=[batch])],
        ntop=2)   # constant fillers: inputs we write persist across steps
    n.conv = L.Convolution(n.data, kernel_size=3, num_output=4,
                           weight_filler=dict(type='xavier'))
    n.bn = L.BatchNorm(n.conv, in_place=True,
                       param=[dict(lr_mult=0)] * 3)
    n.relu = L.ReLU(n.conv, in_place=True)
    n.fc = L.InnerProduct(n.conv, num_output=3,
                          weight_filler=dict(type='xavier'))
    n.loss = L.SoftmaxWithLoss(n.fc, n.label)
    path.write_text(str(n.to_proto()))


def make_solver(tmp_path):
    s = caffe_pb2.SolverParameter()
    s.net = str(tmp_path / 'net.prototxt')
    s.type = 'SGD'
    s.base_lr = 0.05
    s.momentum = 0.9
    s.lr_policy = 'fixed'
    s.max_iter = 1000
    s.snapshot_prefix = str(tmp_path / 'snap')
    s.random_seed = 3
    path = tmp_path / 'solver.prototxt'
    path.write_text(text_format.MessageToString(s))
    caffe.set_mode_cpu()
    return caffe.get_solver(str(path))


def params_of(net):
    return {k: [b.data.copy() for b in v] for k, v in net.params.items()}


def test_netspec_sgd_snapshot_restore_bit_identical(tmp_path):
    tiny_net(tmp_path / 'net.prototxt')
    solver = make_solver(tmp_path)
    rs = np.random.RandomState(0)
    batches = [(rs.randn(8, 3, 12, 12).astype(np.float32),
                rs.randint(0, 3, 8).astype(np.float32)) for _ in range(10)]

    def feed(s, i):
        s.net.blobs['data'].data[...] = batches[i][0]
        s.net.blobs['label'].data[...] = batches[i][1]

    before = params_of(solver.net)
    for i in range(5):
        feed(solver, i)
        solver.step(1)
    after = params_of(solver.net)
    assert any(not np.array_equal(before[k][0], after[k][0]) for k in before)
    solver.snapshot()
    state = tmp_path / 'snap_iter_5.solverstate'
    assert state.is_file() and (tmp_path / 'snap_iter_5.caffemodel').is_file()

    restored = make_solver(tmp_path)
    restored.restore(str(state))
    assert restored.iter == 5
    for k, blobs in params_of(restored.net).items():
        for a, b in zip(blobs, after[k]):
            assert np.array_equal(a, b), k
    # ... and the momentum history too: the next steps agree bit for bit.
    for s in (solver, restored):
        for i in range(5, 8):
            feed(s, i)
            s.step(1)
    p1, p2 = params_of(solver.net), params_of(restored.net)
    for k in p1:
        for a, b in zip(p1[k], p2[k]):
            assert np.array_equal(a, b), k


# ---- the CUDA variant's GPU targets (caffe_ext/build.py; no GPU needed) ----

def load_build_py(name='build'):
    """caffe_ext/<name>.py as a module (caffe_ext is not a package)."""
    import importlib.util
    path = os.path.join(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))), 'caffe_ext', name + '.py')
    spec = importlib.util.spec_from_file_location('caffe_ext_' + name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cuda_archs_every_cuda13_gpu_or_the_override(capsys):
    b = load_build_py()
    assert b.cuda_archs({}) == (['75', '80', '86', '89', '90', '100',
                                 '120'], '120')
    assert b.cuda_archs({'CUDA_ARCH': '90'}) == (['90'], '90')
    assert b.cuda_archs({'CUDA_ARCH': 'sm_90,80'}) == (['80', '90'], '90')
    assert b.cuda_options((['90'], '90'))[-2:] == ['-DCUDA_ARCH_BIN=90',
                                                   '-DCUDA_ARCH_PTX=90']
    with pytest.raises(SystemExit):
        b.cuda_archs({'CUDA_ARCH': '61'})      # CUDA 13 dropped Pascal
    assert 'CUDA_ARCH=' in capsys.readouterr().err


def test_cuda_arch_list_is_part_of_the_cache_key():
    b = load_build_py()
    if shutil.which(os.path.join(b.CUDA_HOME, 'bin', 'nvcc')) is None and \
            shutil.which('nvcc') is None:
        pytest.skip('no nvcc')
    py = {'version': '3.11', 'numpy': '1.26'}
    keys = {b.build_key(None, None, b.cuda_options(a), py, cuda=True)
            for a in ((['90'], '90'), (['80', '90'], '90'), b.cuda_archs({}))}
    assert len(keys) == 3


def test_nvcc_with_the_gencode_list_carries_each_target(tmp_path):
    """The -gencode list (as Caffe's Cuda.cmake writes it from build.py's
    options, cuda-archs.patch applied) puts SASS for every target and PTX
    of the newest into the fat binary."""
    b = load_build_py()
    nvcc = os.path.join(b.CUDA_HOME, 'bin', 'nvcc')
    if not os.path.exists(nvcc):
        pytest.skip('no nvcc')
    cu = tmp_path / 'axpy.cu'
    cu.write_text('__global__ void axpy(float a, const float *x, float *y)'
                  ' { y[threadIdx.x] += a * x[threadIdx.x]; }\n')
    archs = b.cuda_archs({})
    subprocess.run([nvcc, '-c', str(cu), '-o', str(tmp_path / 'axpy.o')] +
                   b.gencode_flags(archs), check=True, timeout=300)
    got = b.fatbin_targets(str(tmp_path / 'axpy.o'))
    assert sorted(got) == sorted(['sm_' + a for a in archs[0]] +
                                 ['compute_120'])


# ---- which build the venv has (make cuda / make cpu / CUDA=1|0) ----

def test_the_venv_never_changes_variant_without_saying_so():
    b = load_build_py()
    cpu, h90 = ('cpu', None), ('cuda', (['90'], '90'))
    assert b.choose_variant(None, None, {}) == ('cpu', None, None)
    assert b.choose_variant(None, cpu, {}) == ('cpu', None, None)
    # a plain make test after make cuda keeps the CUDA build and its targets
    v, archs, msg = b.choose_variant(None, h90, {})
    assert (v, archs) == ('cuda', (['90'], '90'))
    assert 'keeping it' in msg and 'make cpu' in msg and 'sm_90' in msg
    # CUDA_ARCH given: that list
    assert b.choose_variant(None, h90, {'CUDA_ARCH': '80'})[1] == (['80'],
                                                                   '80')
    # explicit switches are announced, both ways
    v, archs, msg = b.choose_variant('cpu', h90, {})
    assert v == 'cpu' and 'from the CUDA build to the CPU build' in msg
    v, archs, msg = b.choose_variant('cuda', cpu, {})
    assert v == 'cuda' and archs == b.cuda_archs({})
    assert 'from the CPU build to the CUDA build' in msg


def test_make_passes_the_variant_to_build_py():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for args, flag in ((['caffe'], ''), (['caffe', 'CUDA=1'], ' --cuda'),
                       (['demo', 'CUDA=1'], ' --cuda'),
                       (['test', 'CUDA=0'], ' --cpu'), (['cuda'], ' --cuda'),
                       (['cpu'], ' --cpu'),
                       (['gpu-bundle'], ' --cuda --no-install')):
        out = subprocess.run(['make', '-n'] + args, cwd=root, text=True,
                             capture_output=True, check=True).stdout
        line = [x for x in out.splitlines() if 'caffe_ext/build.py' in x]
        assert [x.split('build.py')[1].rstrip() for x in line] == [flag], \
            (args, line)


@pytest.mark.skipif(not pycaffe.cpu_only(),
                    reason="installs the venv's build as a CPU one: "
                           'needs the CPU build')
def test_install_into_a_venv_cpu_and_cuda_build_info(tmp_path):
    """install_into_site into a temporary site and bin folder, from our
    cached CPU build: BUILD_INFO, run paths, an importable pycaffe; then
    the same with the CUDA arguments (the CPU build's files standing in
    for the CUDA build's: this checks the run paths and BUILD_INFO a CUDA
    install writes, not CUDA)."""
    b = load_build_py()
    root = build_info()['build']
    site, bindir = tmp_path / 'lib' / 'site', tmp_path / 'bin'
    bindir.mkdir(parents=True)
    b.install_into_site(root, False, site=str(site), bindir=str(bindir))
    assert b.installed_variant(str(site)) == ('cpu', None)

    def rpath(path):
        return subprocess.run(['patchelf', '--print-rpath', str(path)],
                              capture_output=True, text=True,
                              check=True).stdout.strip()
    assert rpath(site / 'caffe' / '_caffe.so') == '$ORIGIN'
    assert rpath(bindir / 'caffe') == '$ORIGIN/../lib/site/caffe'
    r = subprocess.run([sys.executable, '-c', 'import caffe; '
                        'print(caffe.__file__)'], capture_output=True,
                       text=True, env=dict(os.environ,
                                           PYTHONPATH=str(site)))
    assert r.stdout.startswith(str(site)), r.stderr[-2000:]
    # the CUDA install's run paths: wheels inside the venv relative, the
    # machine's cudart absolute
    wheel_lib = tmp_path / 'lib' / 'site' / 'nvidia' / 'cu13' / 'lib'
    wheel_lib.mkdir(parents=True)
    b.install_into_site(root, False, site=str(site), bindir=str(bindir),
                        cuda=((['80', '90'], '90'),
                              [str(wheel_lib), '/usr/local/cuda/lib64']))
    assert b.installed_variant(str(site)) == ('cuda', (['80', '90'], '90'))
    assert rpath(site / 'caffe' / '_caffe.so') == \
        '$ORIGIN:$ORIGIN/../nvidia/cu13/lib:/usr/local/cuda/lib64'
    assert 'cpu_only: no' in (site / 'caffe' / 'BUILD_INFO').read_text()


def test_bundle_takes_cuda_cudnn_and_nccl_from_the_machine(tmp_path):
    """The GPU bundle leaves out CUDA's, cuDNN's and NCCL's libraries
    (libnccl.so.2 alone is 344 MB); env.sh finds them in the CUDA folders,
    LD_LIBRARY_PATH and, last, the NVIDIA wheels of the machine's python3
    (a venv with nvidia/*/lib folders stands for PyTorch's here)."""
    bundle = load_build_py('bundle')
    for name in ('libcudart.so.13', 'libcublasLt.so.13', 'libcudnn.so.9',
                 'libnccl.so.2'):
        assert bundle.SYSTEM.match(name), name
    assert not bundle.SYSTEM.match('libglog.so.1')
    (tmp_path / 'env.sh').write_text(bundle.ENV_SH)
    machine = tmp_path / 'machine'
    subprocess.run([sys.executable, '-m', 'venv', '--without-pip',
                    str(machine)], check=True)
    site = subprocess.run([str(machine / 'bin' / 'python3'), '-c',
                           'import site; print(site.getsitepackages()[0])'],
                          capture_output=True, text=True,
                          check=True).stdout.strip()
    wheels = [os.path.join(site, 'nvidia', n, 'lib') for n in ('cu13', 'nccl')]
    for d in wheels:
        os.makedirs(d)
    env = dict(os.environ, LD_LIBRARY_PATH='/opt/mine',
               PATH='%s:%s' % (machine / 'bin', os.environ['PATH']))
    r = subprocess.run(['bash', '-c', 'source env.sh; echo $LD_LIBRARY_PATH'],
                       cwd=tmp_path, env=env, capture_output=True, text=True,
                       check=True)
    dirs = r.stdout.strip().split(':')
    assert dirs[0] == str(tmp_path / 'lib')
    assert dirs[-3:] == ['/opt/mine'] + wheels, dirs


def test_make_demo_says_how_to_use_a_visible_gpu():
    from deepcontext import demo
    assert demo.gpu_hint(None, 'c.py', cpu_only=True, visible=False) is None
    assert demo.gpu_hint(0, 'c.py', cpu_only=False, visible=True) is None
    assert 'make demo CUDA=1' in demo.gpu_hint(None, 'c.py', True, True)
    assert 'gpu = 0 in c.py' in demo.gpu_hint(None, 'c.py', False, True)
