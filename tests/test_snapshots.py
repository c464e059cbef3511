"""Snapshot markers that verify content (deepcontext/train/snapshots.py).

A real pair written by Caffe's own snapshot (the training net, 2 SGD steps
on real patches), then the corruptions of issue 18's fault run: same-size
byte changes at the head and tail of either file, a marker of an earlier
release (sizes only), another net, garbage for ``mark``.
"""
import hashlib
import json
import os
import shutil
import subprocess
import sys

import caffe
import numpy as np
import pytest

from deepcontext.data import batches, photos
from deepcontext.model import nets, pycaffe, solver
from deepcontext.train import snapshots


@pytest.fixture(scope='session')
def caffe_pair(tmp_path_factory):
    """(folder, layers): model_iter_2.caffemodel/.solverstate as Caffe's
    solver wrote them, and the net's layers for net_identity."""
    out = str(tmp_path_factory.mktemp('pair'))
    nets.write_nets(out, batch_size=8)
    path = solver.write_solver(os.path.join(out, 'solver.prototxt'),
                               solver.gen_solver(out, snapshot=2))
    caffe.set_mode_cpu()
    s = caffe.get_solver(path)
    data = batches.real_patches(photos.test_photos(), 8, seed=1)
    pairs = np.stack([np.arange(7), np.arange(1, 8)], 1)
    pycaffe.set_inputs(s.net, data, pairs, np.arange(7) % 8)
    s.step(2)
    return out, snapshots.live_layers(s.net)


@pytest.fixture
def pair(caffe_pair, tmp_path):
    """A private copy of the pair (the solverstate still names the
    original caffemodel, which is never changed)."""
    src, layers = caffe_pair
    for ext in ('caffemodel', 'solverstate'):
        shutil.copy(os.path.join(src, 'model_iter_2.' + ext), tmp_path)
    return str(tmp_path), layers


def overwrite(path, offset, data):
    with open(path, 'r+b') as f:
        f.seek(offset if offset >= 0 else os.path.getsize(path) + offset)
        f.write(data)


def test_marker_holds_sizes_hashes_iteration_net_and_solver(pair):
    out, layers = pair
    snapshots.begin(out, 2)
    assert snapshots.crash_leftover(out, 2)
    snapshots.mark_complete(out, 2, layers)
    marker = json.loads(open(os.path.join(out, 'model_iter_2.complete'))
                        .read())
    model = os.path.join(out, 'model_iter_2.caffemodel')
    with open(model, 'rb') as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    assert marker['caffemodel'] == {'bytes': os.path.getsize(model),
                                    'sha256': digest}
    assert marker['iteration'] == 2 and marker['solver'] == 'SGD'
    assert marker['net'] == snapshots.net_identity(layers)
    assert not os.path.exists(os.path.join(out, 'model_iter_2.writing'))
    assert snapshots.complete(out) == [2] and not snapshots.crash_leftover(
        out, 2)
    assert snapshots.verify(out, 2, layers) is None


@pytest.mark.parametrize('name,offset,data', [
    ('caffemodel', 0, os.urandom(4096)),
    ('solverstate', 0, b'\xff' * 64),
    ('solverstate', -5, b'\xff' * 5),
    ('caffemodel', 100 << 20, b'\x00\x00\xc0\x7f' * (1 << 18)),  # 1 MiB NaN
], ids=['caffemodel-head-random', 'solverstate-head', 'solverstate-tail',
        'caffemodel-1MiB-NaN-at-100MiB'])
def test_same_size_corruption_is_rejected(pair, name, offset, data):
    out, layers = pair
    snapshots.mark_complete(out, 2, layers)
    overwrite(os.path.join(out, 'model_iter_2.' + name), offset, data)
    assert snapshots.complete(out) == [2]      # the sizes still match
    why = snapshots.verify(out, 2, layers)
    assert why == ('model_iter_2.%s content changed since it was written '
                   '(SHA-256 differs from its marker)' % name)


def write_old_marker(out, it):
    """The marker of earlier releases: the two sizes."""
    model, state, marker = snapshots.paths(out, it)
    with open(marker, 'w') as f:
        json.dump({'caffemodel': os.path.getsize(model),
                   'solverstate': os.path.getsize(state)}, f)


def test_old_marker_is_verified_by_loading_then_upgraded(pair):
    out, layers = pair
    write_old_marker(out, 2)
    assert snapshots.complete(out) == [2]
    assert snapshots.verify(out, 2, layers) is None
    marker = snapshots.read_marker(out, 2)
    assert marker['version'] == 2 and marker['net'] == \
        snapshots.net_identity(layers)


@pytest.mark.parametrize('name,offset,data,why', [
    ('solverstate', 0, b'\xff' * 64, 'holds iteration None'),
    ('solverstate', -5, b'\xff' * 5, 'solverstate does not parse'),
    ('caffemodel', 0, b'\xff' * 64, 'caffemodel does not parse'),
])
def test_old_marker_with_corrupt_files_is_rejected(pair, name, offset, data,
                                                   why):
    out, layers = pair
    write_old_marker(out, 2)
    overwrite(os.path.join(out, 'model_iter_2.' + name), offset, data)
    assert why in snapshots.verify(out, 2, layers)
    assert snapshots.read_marker(out, 2).get('version') is None


def test_another_net_or_solver_is_refused_not_skipped(pair):
    out, layers = pair
    snapshots.mark_complete(out, 2, layers)
    other = [(name, [tuple(d + 1 for d in s) for s in shapes])
             for name, shapes in layers]
    with pytest.raises(snapshots.ForeignSnapshot, match='another net'):
        snapshots.verify(out, 2, other)
    with pytest.raises(snapshots.ForeignSnapshot,
                       match='made by a SGD solver, this run has Adam'):
        snapshots.verify(out, 2, layers, solver_type='Adam')
    write_old_marker(out, 2)
    with pytest.raises(snapshots.ForeignSnapshot, match='another net'):
        snapshots.verify(out, 2, other)


def test_marker_of_another_iteration_is_rejected(pair):
    out, layers = pair
    for ext in ('caffemodel', 'solverstate'):
        os.rename(os.path.join(out, 'model_iter_2.' + ext),
                  os.path.join(out, 'model_iter_6.' + ext))
    snapshots.mark_complete(out, 6, layers)
    assert snapshots.verify(out, 6, layers) == \
        'its solverstate holds iteration 2'


def test_reject_moves_the_pair_aside_without_overwriting(pair):
    out, layers = pair
    snapshots.mark_complete(out, 2, layers)
    first = snapshots.reject(out, 2)
    assert sorted(os.listdir(first)) == ['model_iter_2.caffemodel',
                                         'model_iter_2.complete',
                                         'model_iter_2.solverstate']
    assert snapshots.complete(out) == snapshots.incomplete(out) == []
    open(os.path.join(out, 'model_iter_2.caffemodel'), 'w').close()
    snapshots.reject(out, 2)
    assert 'model_iter_2.caffemodel.1' in os.listdir(first)


def test_mark_parses_the_pair_first(pair):
    out, layers = pair
    cmd = [sys.executable, '-m', 'deepcontext.train.snapshots', 'mark', out,
           '2']
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert snapshots.read_marker(out, 2)['net'] == \
        snapshots.net_identity(layers)
    overwrite(os.path.join(out, 'model_iter_2.solverstate'), -5, b'\xff' * 5)
    os.remove(os.path.join(out, 'model_iter_2.complete'))
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert r.stderr.strip() == ('not marked: model_iter_2: '
                                'model_iter_2.solverstate does not parse '
                                '(Error parsing message)')
    assert not os.path.exists(os.path.join(out, 'model_iter_2.complete'))
