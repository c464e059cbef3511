"""Build BVLC Caffe and pycaffe from source and install pycaffe into a venv.

The source is Debian's source package ``caffe`` 1.0.0+git20180821.99bd997-8
(BVLC master of 2018-08-21), downloaded with apt from the Debian 11 suite and
verified against pinned SHA-256 sums; it is never committed here.  The
patches listed in ``caffe_ext/patches/series`` are applied, Caffe is built
with CMake into a cache folder outside the checkout, keyed by a hash of
everything that changes the result (sources, patches, options, Python and
numpy versions), and installed into the running interpreter's site-packages.

A second run with the same key only checks stamps and re-installs if needed.

Usage (the Makefile runs it with the venv's Python)::

    .venv/bin/python caffe_ext/build.py [--tarball ORIG.tar.gz]
                                        [--debian-tarball DEBIAN.tar.xz]
                                        [--no-tests] [--jobs N]

Environment: ``DEEPCONTEXT_CACHE`` (default ``~/.cache/deepcontext``),
``CAFFE_TARBALL`` / ``CAFFE_DEBIAN_TARBALL`` (local copies of the source).
"""
import argparse
import glob
import hashlib
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PATCH_DIR = os.path.join(HERE, 'patches')
LAYER_DIR = os.path.join(HERE, 'layers')

DEB_VERSION = '1.0.0+git20180821.99bd997-8'
ORIG_NAME = 'caffe_1.0.0+git20180821.99bd997.orig.tar.gz'
ORIG_SHA256 = 'e0eb3f06794f7402c77b7dec8e8480273ee1a1bb192e9122b621a69d4147ad0c'
ORIG_SIZE = 8518844
DEBIAN_NAME = 'caffe_%s.debian.tar.xz' % DEB_VERSION
DEBIAN_SHA256 = '07cf073227494a6b07234e40cb5df91db566616593eef9baafdc4d06ad159f21'

# CMake options of the CPU build.  OpenCV is off: deepcontext decodes images
# with Pillow, and Caffe's OpenCV-only layers (ImageData, WindowData) are not
# used.  Bump BUILD_REVISION when the build logic changes in a way the
# options do not show.
BUILD_REVISION = '1'
CPU_OPTIONS = [
    '-DCMAKE_BUILD_TYPE=Release',
    '-DCPU_ONLY=ON',
    '-DBUILD_python=ON',
    '-DBUILD_python_layer=ON',
    '-DUSE_OPENCV=OFF',
    '-DUSE_LEVELDB=ON',
    '-DUSE_LMDB=ON',
    '-DUSE_HDF5=ON',
    '-DBLAS=Open',
    '-DBUILD_docs=OFF',
]
# The CUDA variant (build.py --cuda): CUDA 13 + cuDNN 9, HDF5 off for a lean
# runtime.  nvcc and cudart come from the machine (/usr/local/cuda); cuBLAS,
# cuRAND and cuDNN headers and libraries from NVIDIA's PyPI wheels, pinned to
# CUDA 13.0-era releases so the result runs with the CUDA 13.0 runtime
# libraries of the GPU machines; NCCL (USE_NCCL: pycaffe's caffe.NCCL, the
# multi-GPU group of deepcontext/train/multigpu.py) from NVIDIA's wheel for
# CUDA 13.  The GPU targets are cuda_archs()'s.
CUDA_BASE_OPTIONS = [o for o in CPU_OPTIONS
                     if not o.startswith(('-DCPU_ONLY', '-DUSE_HDF5'))] + [
    '-DCPU_ONLY=OFF',
    '-DUSE_CUDNN=ON',
    '-DUSE_NCCL=ON',
    '-DUSE_HDF5=OFF',
    '-DCUDA_ARCH_NAME=Manual',
]
# Every GPU generation CUDA 13 compiles for (it dropped sm_50 ... sm_70):
# Turing, Ampere (A100; RTX 30xx, A10, A40), Ada (RTX 40xx, L4, L40S),
# Hopper, Blackwell datacenter (B200) and Blackwell workstation (RTX 50xx,
# RTX PRO 6000).  SASS for each, and PTX of the newest, which the driver
# compiles for GPUs newer than the list.  CUDA_ARCH=90 (or "80 90") builds
# only those: sm_90 alone is 2 (SASS, PTX) of the 8 GPU compiles of each
# .cu file.
CUDA_ARCHS = ('75', '80', '86', '89', '90', '100', '120')


def cuda_archs(env=None):
    """The SASS targets of the CUDA build and its PTX target: from the
    environment variable CUDA_ARCH (numbers, space- or comma-separated,
    e.g. "90" or "80,90"), else CUDA_ARCHS.  PTX is the newest target."""
    env = os.environ if env is None else env
    text = env.get('CUDA_ARCH', '').replace(',', ' ').strip()
    if not text:
        archs = list(CUDA_ARCHS)
    else:
        archs = []
        for a in text.split():
            a = a.replace('sm_', '').replace('.', '')
            if not a.isdigit() or int(a) < 75:
                die('CUDA_ARCH=%r: give compute capabilities of CUDA 13 '
                    'GPUs as numbers, 75 or later (e.g. CUDA_ARCH=90 or '
                    'CUDA_ARCH="80 90")' % env['CUDA_ARCH'])
            if a not in archs:
                archs.append(a)
        archs.sort(key=int)
    return archs, archs[-1]


def cuda_options(archs=None):
    """CMake options of the CUDA variant for the given (SASS list, PTX)."""
    bins, ptx = archs or cuda_archs()
    return CUDA_BASE_OPTIONS + ['-DCUDA_ARCH_BIN=' + ' '.join(bins),
                                '-DCUDA_ARCH_PTX=' + ptx]


def gencode_flags(archs):
    """nvcc's -gencode flags for (SASS list, PTX), as Caffe's Cuda.cmake
    writes them for CUDA_ARCH_NAME=Manual."""
    bins, ptx = archs
    flags = []
    for a in bins:
        flags += ['-gencode', 'arch=compute_%s,code=sm_%s' % (a, a)]
    return flags + ['-gencode', 'arch=compute_%s,code=compute_%s' % (ptx, ptx)]


def fatbin_targets(path):
    """The GPU code in an object file or library, as ['sm_75', ...,
    'compute_120']: SASS entries as sm_N, PTX as compute_N.  Reads the
    .nv_fatbin section (cuobjdump --list-elf / --list-ptx, which the
    CUDA 13 compiler package leaves out)."""
    import struct
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, 'fatbin')
        subprocess.run(['objcopy', '-O', 'binary', '--only-section=.nv_fatbin',
                        path, out], check=True)
        with open(out, 'rb') as f:
            data = f.read()
    found = []
    pos = 0
    # fat binary containers: magic, version, header size, payload size;
    # then entries: kind (1 PTX, 2 ELF), version, header size, padded
    # payload size, ..., the SM number at byte 28 of the entry header
    while pos + 16 <= len(data):
        magic, _, hsize, size = struct.unpack_from('<IHHQ', data, pos)
        if magic != 0xBA55ED50:
            break
        p, end = pos + hsize, pos + hsize + size
        while p < end:
            kind, _, ehsize, padded = struct.unpack_from('<HHIQ', data, p)
            sm = struct.unpack_from('<I', data, p + 28)[0]
            name = ('compute_%d' if kind == 1 else 'sm_%d') % sm
            if name not in found:
                found.append(name)
            p += ehsize + padded
        pos = end
    return found


def describe_archs(archs):
    bins, ptx = archs
    return 'SASS %s + PTX compute_%s' % (' '.join('sm_' + a for a in bins),
                                          ptx)


CUDA_WHEELS = ['nvidia-cublas==13.0.2.14', 'nvidia-curand==10.4.0.35',
               'nvidia-cudnn-cu13==9.13.0.50', 'nvidia-nccl-cu13==2.32.3']
CUDA_HOME = os.environ.get('CUDA_HOME', '/usr/local/cuda')

# Caffe tools copied next to the venv's python (used by benches and tests).
TOOLS = ['caffe', 'convert_imageset', 'compute_image_mean']
# Caffe's Python scripts (Python 3 by python3-scripts.patch), source path ->
# name in the venv's bin/, where they run with the venv's python: e.g.
# `.venv/bin/parse_log.py OUT_DIR/train_out/out.log .` reads a run's log.
SCRIPTS = {'tools/extra/parse_log.py': 'parse_log.py',
           'tools/extra/parse_log.sh': 'parse_log.sh',
           'tools/extra/extract_seconds.py': 'extract_seconds.py',
           'tools/extra/plot_training_log.py.example': 'plot_training_log.py',
           'python/draw_net.py': 'draw_net.py',
           'python/classify.py': 'classify.py',
           'python/train.py': 'train.py'}


def log(msg):
    print('[caffe_ext] ' + msg, flush=True)


def die(msg):
    print('[caffe_ext] ERROR: ' + msg, file=sys.stderr, flush=True)
    sys.exit(1)


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            h.update(chunk)
    return h.hexdigest()


def cache_root():
    return os.path.expanduser(os.environ.get('DEEPCONTEXT_CACHE',
                                             '~/.cache/deepcontext'))


def read_series(cuda=False):
    """Return the patch names of ``patches/series`` (and, for the CUDA
    variant, ``patches/series-cuda``) in order."""
    names = []
    for series in ('series', 'series-cuda') if cuda else ('series',):
        with open(os.path.join(PATCH_DIR, series)) as f:
            for line in f:
                line = line.strip()
                if line and not line.startswith('#'):
                    names.append(line)
    return names


def debian_mirror():
    """The Debian mirror this machine's apt already uses, if any."""
    candidates = ['/etc/apt/sources.list.d/debian.sources',
                  '/etc/apt/sources.list']
    for path in candidates:
        if not os.path.exists(path):
            continue
        with open(path) as f:
            text = f.read()
        for uri in re.findall(r'(?:^URIs:|^deb(?:-src)?)\s+(\S+)', text, re.M):
            if 'debian' in uri and 'security' not in uri:
                return uri.rstrip('/')
    return 'http://deb.debian.org/debian'


def apt_download(dest):
    """Fetch the source package with apt, without touching apt's own state."""
    if shutil.which('apt-get') is None:
        die('apt-get not found: give local copies of the source with '
            'CAFFE_TARBALL=%s and CAFFE_DEBIAN_TARBALL=%s' % (ORIG_NAME,
                                                             DEBIAN_NAME))
    keyring = '/usr/share/keyrings/debian-archive-keyring.gpg'
    # Integrity rests on the pinned SHA-256 sums checked afterwards; the
    # archive signature is checked too where Debian's keyring is installed.
    opt = '[signed-by=%s]' % keyring if os.path.exists(keyring) else \
        '[trusted=yes]'
    with tempfile.TemporaryDirectory(prefix='caffe-apt-') as tmp:
        lists = os.path.join(tmp, 'lists')
        os.makedirs(os.path.join(lists, 'partial'))
        srclist = os.path.join(tmp, 'sources.list')
        with open(srclist, 'w') as f:
            f.write('deb-src %s %s bullseye main\n' % (opt, debian_mirror()))
        apt = ['apt-get', '-q', '-o', 'Dir::Etc::sourcelist=' + srclist,
               '-o', 'Dir::Etc::sourceparts=-',
               '-o', 'Dir::State::Lists=' + lists,
               '-o', 'APT::Sandbox::User=root']
        log('downloading Debian source package caffe=%s' % DEB_VERSION)
        for cmd in (apt + ['update'],
                    apt + ['source', '--download-only',
                           'caffe=' + DEB_VERSION]):
            r = subprocess.run(cmd, cwd=tmp, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
            if r.returncode != 0:
                die('%s failed:\n%s\nGive local copies of the source with '
                    'CAFFE_TARBALL and CAFFE_DEBIAN_TARBALL.'
                    % (' '.join(cmd[-2:]), r.stdout[-2000:]))
        for name in (ORIG_NAME, DEBIAN_NAME):
            shutil.move(os.path.join(tmp, name), os.path.join(dest, name))


def fetch_sources(tarball, debian_tarball):
    """Return verified paths of the orig and debian tarballs."""
    dl = os.path.join(cache_root(), 'downloads')
    os.makedirs(dl, exist_ok=True)
    orig = tarball or os.path.join(dl, ORIG_NAME)
    deb = debian_tarball or os.path.join(dl, DEBIAN_NAME)
    if not (os.path.exists(orig) and os.path.exists(deb)):
        with tempfile.TemporaryDirectory(dir=dl) as tmp:
            apt_download(tmp)
            for name, path in ((ORIG_NAME, orig), (DEBIAN_NAME, deb)):
                if not os.path.exists(path):
                    shutil.move(os.path.join(tmp, name), path)
    for path, want in ((orig, ORIG_SHA256), (deb, DEBIAN_SHA256)):
        got = sha256_file(path)
        if got != want:
            die('%s: SHA-256 %s, expected %s. The file is not the pinned Caffe '
                'source; delete it (or give the right one) and run again.'
                % (path, got, want))
    if os.path.getsize(orig) != ORIG_SIZE:
        die('%s: unexpected size' % orig)
    return orig, deb


def nvcc_version():
    nvcc = os.path.join(CUDA_HOME, 'bin', 'nvcc')
    if not os.path.exists(nvcc):
        nvcc = shutil.which('nvcc')
    if nvcc is None:
        die('nvcc not found (CUDA_HOME=%s): the CUDA variant needs the CUDA '
            '13 compiler' % CUDA_HOME)
    out = subprocess.run([nvcc, '--version'], stdout=subprocess.PIPE,
                         text=True, check=True).stdout
    return re.search(r'release ([\d.]+)', out).group(1)


def fetch_cuda_libs():
    """cuBLAS, cuRAND, cuDNN and NCCL from their pinned PyPI wheels.

    Returns (include folders, library folder); the library folder gets the
    unversioned .so links a linker looks for.
    """
    import zipfile
    h = hashlib.sha256(' '.join(CUDA_WHEELS).encode()).hexdigest()[:12]
    root = os.path.join(cache_root(), 'cuda-libs-' + h)
    lib = os.path.join(root, 'lib')
    incs = [os.path.join(root, 'include')]
    if not os.path.exists(os.path.join(root, 'done.stamp')):
        wheels = os.path.join(cache_root(), 'downloads', 'cuda-wheels')
        os.makedirs(wheels, exist_ok=True)
        log('downloading %s' % ', '.join(CUDA_WHEELS))
        subprocess.run([sys.executable, '-m', 'pip', 'download', '-q',
                        '--no-deps', '--only-binary=:all:', '-d', wheels] +
                       CUDA_WHEELS, check=True)
        shutil.rmtree(root, ignore_errors=True)
        os.makedirs(lib)
        os.makedirs(incs[0])
        for path in pinned_wheels(wheels):
            with zipfile.ZipFile(path) as z:
                for member in z.namelist():
                    parts = member.split('/')
                    if len(parts) >= 2 and parts[-2] in ('include', 'lib') \
                            and parts[-1]:
                        dest = incs[0] if parts[-2] == 'include' else lib
                        with z.open(member) as fsrc, open(
                                os.path.join(dest, parts[-1]), 'wb') as fd:
                            shutil.copyfileobj(fsrc, fd)
        for name in os.listdir(lib):
            m = re.match(r'(lib\w+\.so)\.\d+$', name)
            if m and not os.path.exists(os.path.join(lib, m.group(1))):
                os.symlink(name, os.path.join(lib, m.group(1)))
        open(os.path.join(root, 'done.stamp'), 'w').close()
    return incs, lib


def pinned_wheels(folder):
    """The files of CUDA_WHEELS in a folder of downloaded wheels."""
    prefixes = tuple(w.replace('-', '_').replace('==', '-') + '-'
                     for w in CUDA_WHEELS)
    return [os.path.join(folder, n) for n in sorted(os.listdir(folder))
            if n.startswith(prefixes)]


def nvcc_launcher():
    """nvcc behind ccache, so a patch change recompiles only the .cu files
    it touches (FindCUDA ignores CMAKE_*_COMPILER_LAUNCHER)."""
    path = os.path.join(cache_root(), 'nvcc-ccache')
    text = '#!/bin/sh\nexec ccache %s "$@"\n' % os.path.join(CUDA_HOME, 'bin',
                                                          'nvcc')
    if not (os.path.exists(path) and open(path).read() == text):
        with open(path, 'w') as f:
            f.write(text)
        os.chmod(path, 0o755)
    return path


def cuda_cmake_args(incs, lib):
    inc_flags = ' '.join('-I' + i for i in incs)
    link = '-Wl,-rpath-link,%s -L%s' % (lib, lib)
    launcher = (['-DCUDA_NVCC_EXECUTABLE=' + nvcc_launcher()]
                if shutil.which('ccache') else [])
    return launcher + ['-DCUDA_TOOLKIT_ROOT_DIR=' + CUDA_HOME,
            '-DCMAKE_LIBRARY_PATH=' + lib,
            '-DCUDNN_INCLUDE=' + incs[0],
            '-DCUDNN_LIBRARY=' + os.path.join(lib, 'libcudnn.so'),
            '-DCUDA_cublas_LIBRARY=' + os.path.join(lib, 'libcublas.so'),
            '-DCUDA_curand_LIBRARY=' + os.path.join(lib, 'libcurand.so'),
            # Caffe's FindNCCL searches system folders only
            '-DNCCL_INCLUDE_DIR=' + incs[0],
            '-DNCCL_LIBRARIES=' + os.path.join(lib, 'libnccl.so'),
            '-DCMAKE_CXX_FLAGS=' + inc_flags,
            '-DCUDA_NVCC_FLAGS=' + ';'.join('-I' + i for i in incs),
            '-DCMAKE_EXE_LINKER_FLAGS=' + link,
            '-DCMAKE_SHARED_LINKER_FLAGS=' + link]


def python_facts():
    import numpy
    ver = '%d.%d' % sys.version_info[:2]
    inc = sysconfig.get_paths()['include']
    libdir = sysconfig.get_config_var('LIBDIR') or ''
    ldlib = sysconfig.get_config_var('LDLIBRARY') or ''
    lib = os.path.join(libdir, ldlib)
    if not os.path.exists(lib):
        multi = sysconfig.get_config_var('MULTIARCH') or ''
        lib = os.path.join(libdir, multi, ldlib)
    return {'version': ver, 'include': inc, 'library': lib,
            'numpy': numpy.__version__, 'numpy_include': numpy.get_include()}


def check_boost_python(py):
    """pycaffe links libboost_python3XY for the venv's Python; Caffe's CMake
    falls back to another version's library without a word, and the import
    then fails.  caffe_ext/pick_python.sh makes the venv from the right one;
    this says so, in one line, for a venv made some other way."""
    want = 'libboost_python' + py['version'].replace('.', '')
    found = sorted(set(os.path.basename(f) for d in (
        '/usr/lib/*', '/usr/lib', '/usr/lib64', '/usr/local/lib')
        for f in glob.glob(os.path.join(d, 'libboost_python3*.so'))))
    if want + '.so' not in found:
        die('the venv is Python %s but this system has no %s (it has: %s): '
            'make the venv again with `make venv` (caffe_ext/pick_python.sh '
            'picks the Python of this system\'s Boost.Python)'
            % (py['version'], want, ', '.join(found) or 'none'))


def build_key(orig, deb, options, py, cuda=False):
    h = hashlib.sha256()
    parts = [ORIG_SHA256, DEBIAN_SHA256, BUILD_REVISION, ' '.join(options),
             py['version'], py['numpy']]
    if cuda:
        parts += CUDA_WHEELS + [nvcc_version()]
    for part in parts:
        h.update(part.encode() + b'\0')
    for name in read_series(cuda):
        h.update(name.encode() + b'\0')
        if not name.startswith('debian:'):
            with open(os.path.join(PATCH_DIR, name), 'rb') as f:
                h.update(f.read())
    for name in layer_files():
        h.update(name.encode() + b'\0')
        with open(os.path.join(LAYER_DIR, name), 'rb') as f:
            h.update(f.read())
    return h.hexdigest()[:16]


def layer_files():
    return sorted(n for n in os.listdir(LAYER_DIR)
                  if n.endswith(('.hpp', '.cpp', '.cu')))


def add_layers(src):
    """Copy our layers (and their tests) from caffe_ext/layers into Caffe.

    Caffe's CMake globs its sources at configure time, so copied files are
    compiled like Caffe's own.
    """
    for name in layer_files():
        if name.endswith('.hpp'):
            dest = os.path.join(src, 'include', 'caffe', 'layers')
        elif name.startswith('test_'):
            dest = os.path.join(src, 'src', 'caffe', 'test')
        else:
            dest = os.path.join(src, 'src', 'caffe', 'layers')
        shutil.copy2(os.path.join(LAYER_DIR, name), dest)
        log('added %s' % name)


def extract(tar_path, dest):
    with tarfile.open(tar_path) as t:
        if hasattr(tarfile, 'data_filter'):  # Python >= 3.11.4
            t.extractall(dest, filter='data')
        else:
            t.extractall(dest)


def apply_patches(src, deb_tarball, cuda=False):
    with tempfile.TemporaryDirectory() as tmp:
        extract(deb_tarball, tmp)
        for name in read_series(cuda):
            if name.startswith('debian:'):
                path = os.path.join(tmp, 'debian', 'patches',
                                    name[len('debian:'):])
            else:
                path = os.path.join(PATCH_DIR, name)
            if not os.path.exists(path):
                die('patch %s not found (%s)' % (name, path))
            with open(path, 'rb') as f:
                r = subprocess.run(['patch', '-p1', '--forward', '--batch'],
                                   cwd=src, stdin=f, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)
            if r.returncode != 0:
                die('patch %s does not apply:\n%s' % (name, r.stdout))
            log('applied %s' % name)


def run_logged(cmd, cwd, logf, progress=False):
    """Run cmd, append its output to logf; echo make's [ NN%] lines."""
    logf.write('$ %s\n' % ' '.join(cmd))
    logf.flush()
    p = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    last = ''
    tail = []
    for line in p.stdout:
        logf.write(line)
        tail = (tail + [line])[-40:]
        m = re.match(r'\[\s*(\d+)%\]', line)
        if progress and m and m.group(1) != last:
            last = m.group(1)
            log('  %3s%%  %s' % (last, line[m.end():].strip()[:90]))
    if p.wait() != 0:
        die('%s failed (exit %d); last lines:\n%s\nfull log: %s'
            % (cmd[0], p.returncode, ''.join(tail), logf.name))


def build(root, orig, deb, options, py, jobs, tests, extra_cmake=(),
          cuda=False):
    src = os.path.join(root, 'src')
    bld = os.path.join(root, 'build')
    inst = os.path.join(root, 'install')
    os.makedirs(root, exist_ok=True)
    if not os.path.exists(os.path.join(root, 'patched.stamp')):
        shutil.rmtree(src, ignore_errors=True)
        log('extracting %s' % os.path.basename(orig))
        extract(orig, src)  # the orig tarball has no top-level folder
        apply_patches(src, deb, cuda)
        add_layers(src)
        open(os.path.join(root, 'patched.stamp'), 'w').close()
    os.makedirs(bld, exist_ok=True)
    cmake = ['cmake', src, '-DCMAKE_INSTALL_PREFIX=' + inst,
             '-Dpython_version=' + py['version'],
             '-DPYTHON_EXECUTABLE=' + sys.executable,
             '-DPYTHON_INCLUDE_DIR=' + py['include'],
             '-DPYTHON_LIBRARY=' + py['library'],
             '-DNUMPY_INCLUDE_DIR=' + py['numpy_include'],
             '-DNUMPY_VERSION=' + py['numpy']] + options + list(extra_cmake)
    if shutil.which('ccache'):   # same output, faster rebuilds
        cmake += ['-DCMAKE_CXX_COMPILER_LAUNCHER=ccache',
                  '-DCMAKE_C_COMPILER_LAUNCHER=ccache']
        # paths relative to the build folder: builds with another key (a
        # changed patch) reuse every object the change does not touch
        os.environ.setdefault('CCACHE_BASEDIR', cache_root())
    t0 = time.time()
    with open(os.path.join(root, 'build.log'), 'a') as logf:
        log('configuring (cmake); full log in %s' % logf.name)
        run_logged(cmake, bld, logf)
        log('compiling libcaffe, tools and pycaffe with %d jobs '
            '(on 2 cores: about 6 minutes; with CUDA about 6 for one '
            'GPU target, 12 for every target)' % jobs)
        run_logged(['make', '-j%d' % jobs, 'all'], bld, logf, progress=True)
        if tests:
            log('compiling Caffe\'s C++ test suite (on 2 cores: about 3 '
                'minutes, 8 with CUDA)')
            run_logged(['make', '-j%d' % jobs, 'test.testbin'], bld, logf,
                       progress=True)
        run_logged(['make', 'install'], bld, logf)
    log('built in %.0f s' % (time.time() - t0))


def install_into_site(root, tests, cuda=None, site=None, bindir=None):
    """Copy pycaffe (with libcaffe beside it) into this interpreter's site.

    ``cuda``: None for the CPU build; for the CUDA build, (archs, CUDA
    library folders): the ELF files get run paths to those folders (the
    pinned wheels installed in the venv, and the machine's cudart), and
    BUILD_INFO names the targets.  ``site`` and ``bindir`` default to this
    interpreter's (tests give temporary ones).
    """
    inst = os.path.join(root, 'install')
    site = site or sysconfig.get_paths()['purelib']
    bindir = bindir or os.path.dirname(sys.executable)
    dst = os.path.join(site, 'caffe')
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(os.path.join(inst, 'python', 'caffe'), dst)
    libdir = os.path.join(inst, 'lib')
    (libname,) = [n for n in os.listdir(libdir)
                  if re.match(r'libcaffe\.so\.\d', n) and
                  not os.path.islink(os.path.join(libdir, n))]
    shutil.copy2(os.path.join(libdir, libname), dst)
    soname = subprocess.run(['patchelf', '--print-soname', libname], cwd=dst,
                            stdout=subprocess.PIPE, text=True,
                            check=True).stdout.strip()
    if soname != libname:
        os.symlink(libname, os.path.join(dst, soname))
    cuda_dirs = cuda[1] if cuda else []
    # $ORIGIN: _caffe.so finds libcaffe next to itself, wherever the venv is.
    tree = os.path.commonpath([site, bindir])    # the venv
    for name in ('_caffe.so', libname):
        set_rpath(os.path.join(dst, name), [dst] + cuda_dirs, tree)
    # Caffe's own Python tests travel with the package (CMake leaves them out).
    shutil.copytree(os.path.join(root, 'src', 'python', 'caffe', 'test'),
                    os.path.join(dst, 'test'))
    for tool in TOOLS:
        path = os.path.join(bindir, tool)
        shutil.copy2(os.path.join(inst, 'bin', tool), path)
        set_rpath(path, [dst] + cuda_dirs, tree)
    install_scripts(os.path.join(root, 'src'), bindir)
    testbin = os.path.join(root, 'build', 'test', 'test.testbin')
    with open(os.path.join(dst, 'BUILD_INFO'), 'w') as f:
        f.write('source: Debian caffe %s\nbuild: %s\ntestbin: %s\n'
                'cpu_only: %s\n' % (DEB_VERSION, root,
                                    testbin if tests else '',
                                    'no' if cuda else 'yes'))
        if cuda:
            f.write('cuda_arch: %s\ncuda_ptx: %s\ncuda_libs: %s\n'
                    % (' '.join(cuda[0][0]), cuda[0][1],
                       ' '.join(cuda_dirs)))
    missing = unresolved(os.path.join(dst, '_caffe.so'))
    if missing:
        die('pycaffe in %s cannot load %s' % (dst, ', '.join(missing)))
    log('installed pycaffe (%s build) into %s'
        % ('CUDA' if cuda else 'CPU', dst))


def rpath_for(elf_dir, dirs, tree):
    """A run path for an ELF file in elf_dir that finds libraries in dirs:
    relative to $ORIGIN for folders inside ``tree`` (the venv, which then
    still works when moved), absolute for the others (the machine's CUDA
    runtime)."""
    entries = []
    tree = os.path.abspath(tree)
    for d in dirs:
        if os.path.commonpath([os.path.abspath(d), tree]) == tree:
            rel = os.path.relpath(d, elf_dir)
            entries.append('$ORIGIN' if rel == '.' else '$ORIGIN/' + rel)
        else:
            entries.append(os.path.abspath(d))
    return ':'.join(dict.fromkeys(entries))


def set_rpath(path, dirs, tree):
    subprocess.run(['patchelf', '--set-rpath',
                    rpath_for(os.path.dirname(os.path.abspath(path)), dirs,
                              tree), path], check=True)


def unresolved(elf):
    """Shared libraries ``elf`` needs that the loader cannot find."""
    r = subprocess.run(['ldd', elf], stdout=subprocess.PIPE, text=True,
                       env={k: v for k, v in os.environ.items()
                            if k != 'LD_LIBRARY_PATH'})
    return re.findall(r'^\s*(\S+) => not found', r.stdout, re.M)


def install_scripts(src, bindir):
    """Caffe's Python scripts (SCRIPTS) into bindir, run by this Python."""
    for rel, name in SCRIPTS.items():
        with open(os.path.join(src, rel)) as f:
            text = f.read()
        shebang = '#!/usr/bin/env python\n'
        if text.startswith(shebang):
            text = '#!%s\n%s' % (sys.executable, text[len(shebang):])
        path = os.path.join(bindir, name)
        with open(path, 'w') as f:
            f.write(text)
        os.chmod(path, 0o755)
    log('installed %s into %s' % (', '.join(SCRIPTS.values()), bindir))


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--tarball', default=os.environ.get('CAFFE_TARBALL'),
                   help='local copy of %s' % ORIG_NAME)
    p.add_argument('--debian-tarball',
                   default=os.environ.get('CAFFE_DEBIAN_TARBALL'),
                   help='local copy of %s' % DEBIAN_NAME)
    p.add_argument('--jobs', type=int, default=os.cpu_count() or 2)
    p.add_argument('--no-tests', action='store_true',
                   help="skip building Caffe's C++ test binary")
    which = p.add_mutually_exclusive_group()
    which.add_argument('--cuda', action='store_true',
                       help='build the CUDA 13 + cuDNN 9 variant (targets: '
                            'CUDA_ARCH, default every CUDA 13 GPU) and '
                            'install it into the venv')
    which.add_argument('--cpu', action='store_true',
                       help='install the CPU build, also over a CUDA one; '
                            'without --cuda or --cpu the venv keeps the '
                            'variant it has (a new venv: the CPU build)')
    p.add_argument('--no-install', action='store_true',
                   help='with --cuda: build into the cache only (for '
                        'bundle.py); the venv keeps what it has')
    p.add_argument('--cuda-tests', action='store_true',
                   help="with --cuda: also build Caffe's C++ test binary")
    return p.parse_args()


def build_cuda(orig, deb, py, jobs, tests=False, archs=None):
    """Build (or find cached) the CUDA variant for ``archs`` (SASS list,
    PTX; default cuda_archs()); return its cache folder.  ``tests`` adds
    Caffe's C++ test binary (build/test/test.testbin), to run on a GPU
    machine with bench/gpu_session.sh."""
    archs = archs or cuda_archs()
    options = cuda_options(archs)
    log('CUDA targets: %s%s' % (
        describe_archs(archs), '' if tuple(archs[0]) != CUDA_ARCHS else
        ' (CUDA_ARCH=90, for example, builds only sm_90: faster)'))
    incs, lib = fetch_cuda_libs()
    key = build_key(orig, deb, options, py, cuda=True)
    root = os.path.join(cache_root(), 'caffe-cuda-' + key)
    done = os.path.join(root, 'done-tests.stamp' if tests else 'done.stamp')
    if os.path.exists(done):
        log('cached CUDA build %s' % root)
    else:
        build(root, orig, deb, options, py, jobs, tests=tests,
              extra_cmake=cuda_cmake_args(incs, lib), cuda=True)
        open(done, 'w').close()
        open(os.path.join(root, 'done.stamp'), 'w').close()
    with open(os.path.join(cache_root(), 'caffe-cuda-latest'), 'w') as f:
        f.write(root + '\n')
    lib_caffe = os.path.join(root, 'install', 'lib', 'libcaffe.so')
    log('libcaffe carries GPU code for %s'
        % ' '.join(fatbin_targets(os.path.realpath(lib_caffe))))
    log('CUDA build ready: %s (install/, CUDA libraries in %s)' % (root, lib))
    return root


def installed_variant(site=None):
    """What pycaffe in the venv is: None (none), ('cpu', None) or ('cuda',
    (SASS list, PTX)), from its BUILD_INFO."""
    site = site or sysconfig.get_paths()['purelib']
    path = os.path.join(site, 'caffe', 'BUILD_INFO')
    if not os.path.exists(path):
        return None
    info = {}
    with open(path) as f:
        for line in f:
            key, _, value = line.partition(':')
            info[key.strip()] = value.strip()
    if info.get('cpu_only') != 'no':
        return ('cpu', None)
    bins = info.get('cuda_arch', '').split()
    return ('cuda', (bins, info.get('cuda_ptx') or bins[-1]) if bins
            else None)


def choose_variant(asked, installed, env=None):
    """The variant to install and what to tell the user about it.

    asked: 'cuda', 'cpu' or None (make test, make demo: keep what the venv
    has).  A venv never changes variant without a line saying so, and a
    plain ``make test`` keeps a CUDA build (with its targets, unless
    CUDA_ARCH says otherwise): the GPU stays usable.  Returns (variant,
    archs or None, message or None).
    """
    env = os.environ if env is None else env
    have = installed[0] if installed else None
    want = asked or have or 'cpu'
    archs = None
    if want == 'cuda':
        archs = (installed[1] if asked is None and installed[1] and
                 not env.get('CUDA_ARCH') else cuda_archs(env))
    if have and want != have:
        return want, archs, (
            'switching pycaffe in the venv from the %s build to the %s build'
            ' (%s switches back)' % (have.upper(), want.upper(),
                                     'make cuda' if have == 'cuda'
                                     else 'make cpu or CUDA=0'))
    if asked is None and want == 'cuda':
        return want, archs, (
            'the venv has the CUDA build of pycaffe (%s): keeping it; '
            '`make cpu` (or CUDA=0) installs the CPU build'
            % describe_archs(archs))
    return want, archs, None


def install_cuda_wheels():
    """The pinned cuBLAS, cuRAND, cuDNN and NCCL wheels, installed into the venv
    (as PyTorch's are); returns the folders holding their libraries."""
    fetch_cuda_libs()   # downloads them if needed
    files = pinned_wheels(os.path.join(cache_root(), 'downloads',
                                       'cuda-wheels'))
    subprocess.run([sys.executable, '-m', 'pip', 'install', '-q',
                    '--disable-pip-version-check', '--no-deps', '--no-index']
                   + files, check=True)
    site = sysconfig.get_paths()['purelib']
    dirs = set()
    for lib in ('libcublas.so', 'libcurand.so', 'libcudnn.so', 'libnccl.so'):
        for path in glob_libs(os.path.join(site, 'nvidia'), lib):
            dirs.add(os.path.dirname(path))
    return sorted(dirs)


def glob_libs(top, name):
    """Files named ``name`` or ``name.N...`` below ``top``."""
    return [os.path.join(d, n) for d, _, names in os.walk(top) for n in names
            if n == name or n.startswith(name + '.')]


def cudart_dir():
    for sub in ('lib64', 'targets/x86_64-linux/lib'):
        d = os.path.join(CUDA_HOME, sub)
        if glob_libs(d, 'libcudart.so'):
            return d
    die('libcudart.so not found under %s (CUDA_HOME)' % CUDA_HOME)


def install(root, key, tests, cuda=None):
    """install_into_site unless the venv already has the build ``key``."""
    site = sysconfig.get_paths()['purelib']
    stamp = os.path.join(site, 'caffe', 'BUILD_KEY')
    if os.path.exists(stamp) and open(stamp).read() == key:
        log('pycaffe %s already installed in %s' % (key, site))
        return
    if cuda:
        cuda = (cuda, install_cuda_wheels() + [cudart_dir()])
    install_into_site(root, tests, cuda=cuda)
    with open(stamp, 'w') as f:
        f.write(key)


def main():
    args = parse_args()
    for tool in ('cmake', 'make', 'patch', 'patchelf', 'protoc'):
        if shutil.which(tool) is None:
            die('%s not found: run caffe_ext/sysdeps.sh (as root) or '
                'install the packages in caffe_ext/apt-packages.txt' % tool)
    py = python_facts()
    check_boost_python(py)
    tests = not args.no_tests
    orig, deb = fetch_sources(args.tarball, args.debian_tarball)
    if args.no_install:
        if not args.cuda:
            die('--no-install goes with --cuda')
        build_cuda(orig, deb, py, args.jobs, tests=args.cuda_tests)
        return
    asked = 'cuda' if args.cuda else 'cpu' if args.cpu else None
    variant, archs, message = choose_variant(asked, installed_variant())
    if message:
        log(message)
    if variant == 'cuda':
        root = build_cuda(orig, deb, py, args.jobs, tests=args.cuda_tests,
                          archs=archs)
        install(root, os.path.basename(root), args.cuda_tests, cuda=archs)
        log('train on the GPU with gpu = 0 in the config (docs/gpu.md)')
        return
    key = build_key(orig, deb, CPU_OPTIONS, py)
    root = os.path.join(cache_root(), 'caffe-cpu-' + key)
    done = os.path.join(root, 'done-tests.stamp' if tests else 'done.stamp')
    if os.path.exists(done):
        log('cached build %s' % root)
    else:
        build(root, orig, deb, CPU_OPTIONS, py, args.jobs, tests)
        open(done, 'w').close()
        if tests:
            open(os.path.join(root, 'done.stamp'), 'w').close()
    install(root, key, tests)


if __name__ == '__main__':
    main()
