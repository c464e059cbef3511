"""caffe_ext/pick_python.sh, which names the venv's interpreter: the one
this system's Boost.Python is built for, whatever python3 is first on PATH
(issue 23).  Run against the interpreters this machine really has."""
import glob
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PICK = os.path.join(ROOT, 'caffe_ext', 'pick_python.sh')
SUPPORTED = ('3.11', '3.12', '3.13')


def boost_versions():
    libs = glob.glob('/usr/lib/*/libboost_python3*.so')
    return sorted({'3.' + os.path.basename(f)[len('libboost_python3'):-3]
                   for f in libs})


def version(exe):
    out = subprocess.run([exe, '-c', 'import sys; print("%d.%d" % '
                          'sys.version_info[:2])'], capture_output=True,
                         text=True)
    return out.stdout.strip() if out.returncode == 0 else None


def other_python():
    """A real interpreter of a version no Boost.Python here is for."""
    have = set(boost_versions())
    found = []
    for exe in sorted(glob.glob('/root/.pyenv/versions/3.*/bin/python3')
                      + glob.glob('/usr/bin/python3.[0-9]*')
                      + glob.glob('/usr/local/bin/python3.[0-9]*')):
        v = version(exe)
        if v and v not in have:
            found.append((v not in SUPPORTED, exe, v))
    if found:    # a supported version first: the mismatch is then Boost's
        return min(found)[1:]
    pytest.skip('no interpreter of another Python version on this machine')


def pick(*args, path=None):
    env = dict(os.environ)
    if path is not None:
        env['PATH'] = path
    env.pop('PYENV_VERSION', None)
    return subprocess.run(['bash', PICK, *args], capture_output=True,
                          text=True, env=env)


def test_the_venvs_python_is_the_one_boost_python_is_for():
    """What `make venv` made this venv from fits this system's library."""
    assert '%d.%d' % sys.version_info[:2] in boost_versions()
    out = pick()
    assert out.returncode == 0, out.stderr
    assert version(out.stdout.strip()) in boost_versions()
    assert len(out.stderr.strip().splitlines()) == 1
    assert 'Boost.Python (libboost_python3' in out.stderr


def test_another_python3_first_on_path_is_passed_over(tmp_path):
    """A pyenv / conda python3 of another version first on PATH: the
    distribution's python3.X is taken, and the line says why."""
    exe, v = other_python()
    bindir = tmp_path / 'bin'
    bindir.mkdir()
    os.symlink(exe, bindir / 'python3')
    out = pick(path='%s:/usr/bin:/bin' % bindir)
    if out.returncode != 0 and 'no Python' in out.stderr:
        pytest.skip('no distribution python3.X with headers: %s'
                    % out.stderr.strip())
    assert out.returncode == 0, out.stderr
    assert version(out.stdout.strip()) in boost_versions()
    line = out.stderr.strip()
    assert len(line.splitlines()) == 1
    assert 'python3 on PATH is Python %s' % v in line
    assert 'which cannot load it' in line


def test_a_python_of_another_version_is_refused_in_one_line():
    exe, v = other_python()
    out = pick(exe)
    assert out.returncode == 1 and out.stdout == ''
    line = out.stderr.strip()
    assert len(line.splitlines()) == 1
    assert 'is Python %s' % v in line
    if v in SUPPORTED:
        assert "this system's Boost.Python is for Python" in line
        assert 'use PYTHON=python3.' in line
    else:
        assert 'deepcontext supports Python 3.11, 3.12, 3.13' in line


def test_a_missing_python_is_refused_in_one_line():
    out = pick('python3.99-nowhere')
    assert out.returncode == 1
    assert out.stderr.strip() == (
        'deepcontext: PYTHON=python3.99-nowhere: no such interpreter')


def test_make_refuses_a_mismatched_python_before_touching_the_venv(tmp_path):
    """make PYTHON=... with the wrong version: one line, exit non-zero, and
    the venv it names is not made."""
    exe, v = other_python()
    venv = tmp_path / 'venv'
    out = subprocess.run(['bash', os.path.join(ROOT, 'caffe_ext', 'venv.sh'),
                          str(venv), exe], capture_output=True, text=True,
                         cwd=ROOT)
    assert out.returncode == 1
    assert not venv.exists()
    assert out.stderr.strip().count('\n') == 0
    assert 'is Python %s' % v in out.stderr
