"""``make gpu-bundle``: a relocatable tarball that trains on a GPU machine.

For air-gapped GPU clusters: x86-64 Linux with an NVIDIA driver and the
CUDA 13 runtime libraries (cudart, cuBLAS, cuRAND, cuDNN 9, NCCL 2), no
internet, no compilers.  The tarball holds

    deepcontext-gpu/
      bin/python        launcher: Debian's Python 3.11 with the bundle's
                        paths (PYTHONHOME, PYTHONPATH, LD_LIBRARY_PATH)
      env.sh            the same settings, to source in a shell
      python/           Debian's python3.11 runtime, pruned
      lib/              libcaffe (CUDA build) and the Debian libraries it
                        needs, $ORIGIN rpaths
      site-packages/    pycaffe, numpy, protobuf, six, Pillow, lmdb,
                        deepcontext
      train.py, tools/, deepcontext_config.py.example

CUDA's own libraries, cuDNN's and NCCL's are not included (hundreds of MB,
and the machine's must match its driver): env.sh finds them in the CUDA
folders, in LD_LIBRARY_PATH, or in the NVIDIA wheels of the machine's
python3.  Usage there::

    tar xJf deepcontext-gpu.tar.xz && cd deepcontext-gpu
    bin/python train.py --config my_config.py     # with gpu = 0
"""
import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DEBS = ['python3.11-minimal', 'libpython3.11-minimal',
        'libpython3.11-stdlib', 'libpython3.11']
PY_PACKAGES = ['numpy', 'numpy.libs', 'google', 'six.py', 'PIL',
               'pillow.libs', 'lmdb']
STDLIB_PRUNE = ['test', 'idlelib', 'tkinter', 'turtledemo', 'ensurepip',
                'lib2to3', 'pydoc_data', 'distutils', 'venv', 'unittest/test',
                'sqlite3/test', 'ctypes/test', 'config-3.11-x86_64-linux-gnu']
# Provided by the target machine: glibc's own libraries, CUDA's and NCCL's
# (libnccl.so.2 alone is 344 MB).
SYSTEM = re.compile(r'^(linux-vdso|ld-linux|libc\.|libm\.|libpthread|libdl|'
                    r'librt|libresolv|libcuda|libcudart|libcublas|libcurand|'
                    r'libcudnn|libnccl|libnvidia|libnvrtc)')


def log(msg):
    print('[gpu-bundle] ' + msg, flush=True)


def cuda_build():
    path = os.path.join(os.path.expanduser(os.environ.get(
        'DEEPCONTEXT_CACHE', '~/.cache/deepcontext')), 'caffe-cuda-latest')
    if not os.path.exists(path):
        sys.exit('no CUDA build: run .venv/bin/python caffe_ext/build.py '
                 '--cuda first')
    return open(path).read().strip()


def deps(paths, extra_dirs):
    """Non-system shared libraries the given ELF files need (transitively).
    """
    env = dict(os.environ, LD_LIBRARY_PATH=':'.join(extra_dirs))
    found = {}
    todo = list(paths)
    while todo:
        r = subprocess.run(['ldd', todo.pop()], env=env, text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        for line in r.stdout.splitlines():
            m = re.match(r'\s*(\S+) => (/\S+)', line)
            if m and not SYSTEM.match(m.group(1)) and m.group(1) not in found:
                found[m.group(1)] = m.group(2)
                todo.append(m.group(2))
    return found


def fetch_debs(dest):
    os.makedirs(dest, exist_ok=True)
    missing = [d for d in DEBS if not glob.glob(os.path.join(dest,
                                                             d + '_*.deb'))]
    if missing:
        log('downloading Debian packages %s' % ' '.join(missing))
        subprocess.run(['apt-get', 'download', '-q'] + missing, cwd=dest,
                       check=True)
    return [glob.glob(os.path.join(dest, d + '_*.deb'))[0] for d in DEBS]


def stage(out, build, cuda_lib):
    """Lay the bundle out in ``out``."""
    cache = os.path.dirname(build)
    with tempfile.TemporaryDirectory() as tmp:
        for deb in fetch_debs(os.path.join(cache, 'downloads', 'debs')):
            subprocess.run(['dpkg-deb', '-x', deb, tmp], check=True)
        py = os.path.join(out, 'python')
        os.makedirs(os.path.join(py, 'bin'))
        shutil.copy2(os.path.join(tmp, 'usr/bin/python3.11'),
                     os.path.join(py, 'bin'))
        shutil.copytree(os.path.join(tmp, 'usr/lib/python3.11'),
                        os.path.join(py, 'lib/python3.11'), symlinks=True)
        libpy = glob.glob(os.path.join(tmp, 'usr/lib/x86_64-linux-gnu/'
                                       'libpython3.11.so.1.0'))[0]
        os.makedirs(os.path.join(out, 'lib'))
        shutil.copy2(libpy, os.path.join(out, 'lib'))
    stdlib = os.path.join(out, 'python/lib/python3.11')
    for name in STDLIB_PRUNE:
        shutil.rmtree(os.path.join(stdlib, name), ignore_errors=True)
    for cache_dir in glob.glob(os.path.join(stdlib, '**/__pycache__'),
                               recursive=True):
        shutil.rmtree(cache_dir)
    site = os.path.join(out, 'site-packages')
    os.makedirs(site)
    shutil.copytree(os.path.join(build, 'install/python/caffe'),
                    os.path.join(site, 'caffe'), symlinks=False)
    shutil.rmtree(os.path.join(site, 'caffe', 'test'), ignore_errors=True)
    venv_site = sysconfig.get_paths()['purelib']
    for name in PY_PACKAGES:
        src = os.path.join(venv_site, name)
        if os.path.isdir(src):
            shutil.copytree(src, os.path.join(site, name),
                            ignore=shutil.ignore_patterns(
                                'tests', '__pycache__', '*.pyi', 'f2py',
                                '*.h', 'include'))
        else:
            shutil.copy2(src, site)
    shutil.copytree(os.path.join(ROOT, 'deepcontext'),
                    os.path.join(site, 'deepcontext'),
                    ignore=shutil.ignore_patterns('__pycache__'))
    for name in ('train.py', 'deepcontext_config.py.example', 'README.md'):
        shutil.copy2(os.path.join(ROOT, name), out)
    shutil.copytree(os.path.join(ROOT, 'docs'), os.path.join(out, 'docs'))
    shutil.copytree(os.path.join(ROOT, 'tools'), os.path.join(out, 'tools'),
                    ignore=shutil.ignore_patterns('__pycache__'))
    # Caffe and the Debian libraries it and Python's modules need
    libdir = os.path.join(out, 'lib')
    libcaffe = glob.glob(os.path.join(build, 'install/lib/libcaffe.so.*'))
    libcaffe = [p for p in libcaffe if not os.path.islink(p)][0]
    shutil.copy2(libcaffe, libdir)
    soname = subprocess.run(['patchelf', '--print-soname', libcaffe],
                            text=True, stdout=subprocess.PIPE).stdout.strip()
    if soname != os.path.basename(libcaffe):
        os.symlink(os.path.basename(libcaffe), os.path.join(libdir, soname))
    elfs = [os.path.join(site, 'caffe/_caffe.so'), libcaffe,
            os.path.join(out, 'python/bin/python3.11')]
    elfs += glob.glob(os.path.join(stdlib, 'lib-dynload/*.so'))
    for name, path in sorted(deps(elfs, [cuda_lib,
                                         '/usr/local/cuda/lib64']).items()):
        if name.startswith(('libcaffe', 'libpython3.11')):
            continue
        shutil.copy2(os.path.realpath(path), os.path.join(libdir, name))
    for path in glob.glob(os.path.join(libdir, '*.so*')):
        if not os.path.islink(path):
            subprocess.run(['patchelf', '--set-rpath', '$ORIGIN', path],
                           check=True)
    subprocess.run(['patchelf', '--set-rpath', '$ORIGIN/../../lib',
                    os.path.join(site, 'caffe/_caffe.so')], check=True)
    write_launchers(out)


ENV_SH = '''# Source me: the bundle's Python, pycaffe and deepcontext on the paths.
DEEPCONTEXT_BUNDLE=$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")" && pwd)
export PYTHONHOME="$DEEPCONTEXT_BUNDLE/python"
export PYTHONPATH="$DEEPCONTEXT_BUNDLE/site-packages:$DEEPCONTEXT_BUNDLE"
export PYTHONNOUSERSITE=1
# CUDA 13 runtime libraries, cuDNN 9 and NCCL 2: the machine's own (add
# yours to LD_LIBRARY_PATH if they live elsewhere).  Last, as a fallback,
# NVIDIA's pip wheels of the machine's python3 (e.g. PyTorch's nvidia-*).
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib \\
         /usr/local/cuda-13.0/targets/x86_64-linux/lib; do
  [ -d "$d" ] && CUDA_DIRS="${CUDA_DIRS:+$CUDA_DIRS:}$d"
done
WHEEL_DIRS=$(PYTHONHOME= PYTHONPATH= python3 -c "import glob, site
print(':'.join(d for s in site.getsitepackages()
               for d in sorted(glob.glob(s + '/nvidia/*/lib'))))" 2>/dev/null)
export LD_LIBRARY_PATH="$DEEPCONTEXT_BUNDLE/lib${CUDA_DIRS:+:$CUDA_DIRS}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}${WHEEL_DIRS:+:$WHEEL_DIRS}"
export PATH="$DEEPCONTEXT_BUNDLE/bin:$PATH"
'''

LAUNCHER = '''#!/usr/bin/env bash
# deepcontext GPU bundle: Python 3.11 with pycaffe (CUDA) and deepcontext.
here=$(cd "$(dirname "$0")/.." && pwd)
source "$here/env.sh"
exec "$here/python/bin/python3.11" "$@"
'''


def write_launchers(out):
    with open(os.path.join(out, 'env.sh'), 'w') as f:
        f.write(ENV_SH)
    os.makedirs(os.path.join(out, 'bin'))
    path = os.path.join(out, 'bin', 'python')
    with open(path, 'w') as f:
        f.write(LAUNCHER)
    os.chmod(path, 0o755)


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--out', default=os.path.join(ROOT, 'dist'))
    p.add_argument('--build', default=None,
                   help='a Caffe build folder (default: the latest CUDA '
                        'build of caffe_ext/build.py --cuda)')
    args = p.parse_args()
    build = args.build or cuda_build()
    cuda_lib = glob.glob(os.path.join(os.path.dirname(build),
                                      'cuda-libs-*', 'lib'))[0]
    os.makedirs(args.out, exist_ok=True)
    tarball = os.path.join(args.out, 'deepcontext-gpu.tar.xz')
    with tempfile.TemporaryDirectory() as tmp:
        top = os.path.join(tmp, 'deepcontext-gpu')
        log('staging from %s' % build)
        stage(top, build, cuda_lib)
        log('compressing (xz)')
        with tarfile.open(tarball + '.tmp', 'w:xz') as t:
            t.add(top, arcname='deepcontext-gpu')
    os.replace(tarball + '.tmp', tarball)
    log('wrote %s (%.1f MB)' % (tarball, os.path.getsize(tarball) / 1e6))


if __name__ == '__main__':
    main()
