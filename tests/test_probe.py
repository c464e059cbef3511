"""The linear probe (deepcontext/eval/probe.py, data/labelled.py, tools/linear_probe.py).

Fixtures (a real BatchNorm snapshot, held-out photos) are in conftest.py.
"""
import json
import os
import tracemalloc

import numpy as np
from scipy import optimize

from conftest import run_tool
from deepcontext.data import labelled
from deepcontext.eval import features, probe


def test_logistic_gradient_and_separable_data():
    rs = np.random.RandomState(0)
    x, y = rs.randn(30, 4), rs.randint(0, 3, 30)
    onehot = np.eye(3)[y]
    w = rs.randn(5 * 3)
    err = optimize.check_grad(
        lambda v: probe._logistic_loss(v, x, onehot, .1)[0],
        lambda v: probe._logistic_loss(v, x, onehot, .1)[1], w)
    assert err < 1e-5
    centres = np.array([[4, 0], [0, 4], [-4, -4]])
    y = np.repeat(np.arange(3), 20)
    x = centres[y] + rs.randn(60, 2)
    train, test = labelled.fixed_split(y, 0.5)
    r = probe.linear_probe(x[train], y[train], x[test], y[test])
    assert r['accuracy'] > 0.9 and r['majority_baseline'] < 0.5


def test_elpv_labels_and_fixed_split():
    paths, labels, names = labelled.elpv('defect')
    assert len(paths) == 2624 and names == ('functional', 'defective')
    assert np.bincount(labels).tolist() == [1803, 821]
    assert os.path.isfile(paths[0])
    _, types, _ = labelled.elpv('type')
    assert np.bincount(types).tolist() == [1074, 1550]
    train, test = labelled.fixed_split(labels, 0.5, seed=0)
    assert not set(train) & set(test) and len(train) + len(test) == 2624
    assert abs(np.mean(labels[test]) - np.mean(labels)) < 0.01
    again = labelled.fixed_split(labels, 0.5, seed=0)
    assert np.array_equal(train, again[0])
    keep = labelled.stratified_subset(labels, 5)
    assert np.bincount(labels[keep]).tolist() == [5, 5]


def test_linear_probe_tool(bn_snapshot, tmp_path):
    out = run_tool('linear_probe.py', '--weights', bn_snapshot[2],
                   '--random', '--per-class', '12', '--side', '96',
                   '--layer', 'pool5', '--grid', '1', '--out', tmp_path)
    res = json.loads((tmp_path / 'probe.json').read_text())['results']
    for tag in ('trained', 'random'):
        assert 0 <= res[tag]['accuracy'] <= 1
        assert res[tag]['train'] == res[tag]['test'] == 12
        assert res[tag]['dim'] == 256
    assert res['random']['bn_mode'] == 'batch'
    print(out.strip().splitlines()[-2])   # trained - random, not asserted


def test_streaming_sgd_equals_lbfgs_within_a_point(tmp_path):
    # Real features: elpv cells (mono / poly), a random net's relu5 at 96
    # px max-pooled 2x2 (1,024-dim), 200 a class, split in half.
    paths, labels, _ = labelled.elpv('type')
    keep = labelled.stratified_subset(labels, 200, 0)
    paths, labels = [paths[i] for i in keep], labels[keep]
    net, _ = features.load_net(None)
    path = str(tmp_path / 'relu5.npy')
    np.save(path, features.image_features(net, paths, 'relu5', 96, 2))
    x = np.load(path, mmap_mode='r')
    train, test = labelled.fixed_split(labels, 0.5, 0)
    # The same objective: mean cross-entropy + l2 / 2 ||W||^2.
    full = probe.linear_probe(x[train], labels[train], x[test],
                              labels[test], 2, l2_grid=(0.1,))
    sgd = probe.streaming_probe(x, labels, train, test, 2, epochs=90,
                                batch_size=64, weight_decay=0.1)
    assert abs(sgd['accuracy'] - full['accuracy']) <= 0.01
    assert sgd['accuracy'] > 0.85 and sgd['iterations'] == 90 * 4
    assert sgd['loss'][-1] < sgd['loss'][0]


def test_streaming_probe_memory_does_not_grow_with_the_set(tmp_path):
    rs = np.random.RandomState(0)
    peaks = []
    for n in (2000, 8000):
        path = str(tmp_path / ('x%d.npy' % n))
        mm = np.lib.format.open_memmap(path, 'w+', np.float32, (n, 512))
        y = rs.randint(0, 4, n)
        for lo in range(0, n, 1000):
            mm[lo:lo + 1000] = rs.randn(1000, 512) + y[lo:lo + 1000, None]
        del mm
        x = np.load(path, mmap_mode='r')
        tracemalloc.start()
        probe.streaming_probe(x, y, np.arange(n // 2), np.arange(n // 2, n),
                              4, epochs=1, chunk=500)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    # 4x the rows: the peak grows by the index arrays only (8 bytes a
    # row), not by the 2 KB a row of features.
    assert peaks[1] - peaks[0] < 16 * 6000, peaks
