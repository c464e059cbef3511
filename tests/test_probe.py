"""The linear probe (deepcontext/eval/probe.py, data/labelled.py, tools/linear_probe.py).

Fixtures (a real BatchNorm snapshot, held-out photos) are in conftest.py.
"""
import json
import os

import numpy as np
from scipy import optimize

from conftest import run_tool
from deepcontext.data import labelled
from deepcontext.eval import probe


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
