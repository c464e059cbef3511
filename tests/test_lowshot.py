"""Low-shot linear SVMs (deepcontext/eval/lowshot.py, tools/lowshot_svm.py).

The sampling is checked by counting on a labels matrix written by hand,
the SVM by its gradient and on separable / shuffled data, and the tool
end to end on elpv cells in ImageFolder layout (test_layer_probe's
fixture).
"""
import json

import numpy as np
import pytest
from scipy import optimize

from conftest import run_tool
from deepcontext.data import voc_labels
from deepcontext.eval import lowshot, metrics
from labelled_fixtures import elpv_folder, voc_folder

# 8 images, 2 classes: class 0 has 3 positives (rows 0-2), 1 difficult
# (row 3), 4 negatives; class 1 has 2 positives (rows 6, 7), 6 negatives.
LABELS = np.array([[1, -1], [1, -1], [1, -1], [0, -1],
                   [-1, -1], [-1, -1], [-1, 1], [-1, 1]])


def test_sampling_counts_by_hand():
    rng = np.random.RandomState(0)
    targets, capped = lowshot.sample_lowshot(LABELS, 2, rng)
    # k = 2 positives and (C - 1) * k = 2 negatives per class, from the
    # right pools; row 3 (difficult for class 0) is never used for it.
    for j in range(2):
        pos = np.flatnonzero(targets[:, j] == 1)
        neg = np.flatnonzero(targets[:, j] == -1)
        assert len(pos) == 2 and len(neg) == 2
        assert (LABELS[pos, j] == 1).all() and (LABELS[neg, j] == -1).all()
    assert targets[3, 0] == 0 and capped == []
    # k = 3: class 1 has only 2 positives -> all of them, and capped.
    targets, capped = lowshot.sample_lowshot(LABELS, 3, rng)
    assert capped == [1] and (targets[:, 1] == 1).sum() == 2
    assert (targets[:, 0] == 1).sum() == 3
    # The same seed gives the same sample; another seed another.
    a = lowshot.sample_lowshot(LABELS, 1, np.random.RandomState(5))[0]
    b = lowshot.sample_lowshot(LABELS, 1, np.random.RandomState(5))[0]
    assert np.array_equal(a, b)
    draws = {lowshot.sample_lowshot(LABELS, 1, np.random.RandomState(s))[0]
             .tobytes() for s in range(10)}
    assert len(draws) > 1


def test_svm_gradient_separable_and_shuffled():
    rs = np.random.RandomState(0)
    x, y = rs.randn(20, 5), np.where(rs.rand(20) > .5, 1.0, -1.0)
    weight = np.where(y > 0, 2.0, 1.0)
    err = optimize.check_grad(
        lambda w: lowshot._svm_loss(w, x, y, .7, weight)[0],
        lambda w: lowshot._svm_loss(w, x, y, .7, weight)[1], rs.randn(6))
    assert err < 1e-5
    y = np.repeat([1.0, -1.0], 40)
    x = rs.randn(80, 10) + 2.5 * y[:, None] * np.eye(10)[0]
    w = lowshot.train_svm(x[::2], y[::2], 1.0)
    assert metrics.average_precision(lowshot.svm_scores(w, x[1::2]),
                                     y[1::2]) > 0.98
    ys = rs.permutation(y)
    w = lowshot.train_svm(x[::2], ys[::2], 1.0)
    ap = metrics.average_precision(lowshot.svm_scores(w, x[1::2]), ys[1::2])
    assert 0.25 < ap < 0.8   # expected about 0.5 (half are positives)


def test_lowshot_table_on_separable_features():
    rs = np.random.RandomState(1)
    y = np.repeat(np.arange(3), 30)
    x = np.eye(3)[y] * 3 + rs.randn(90, 3) * .3
    labels = metrics.one_hot_targets(y, 3)
    res = lowshot.lowshot_svm(x[::2], labels[::2], x[1::2], labels[1::2],
                              ks=(1, 4), draws=2, report=lambda s: None)
    assert res['4']['map_mean'] > 0.98 and len(res['1']['maps']) == 2
    assert res['1']['capped'] == []


def test_lowshot_tool(bn_snapshot, tmp_path):
    root = elpv_folder(tmp_path / 'set', per_class=8)
    out = tmp_path / 'out'
    log = run_tool('lowshot_svm.py', '--weights', bn_snapshot[2],
                   '--random', '--images', root, '--side', '96',
                   '--ks', '1', '2', '--draws', '2', '--out', out)
    res = json.loads((out / 'lowshot.json').read_text())
    assert (out / 'lowshot.png').stat().st_size > 1000
    for tag in ('trained', 'random'):
        assert 0 <= res['results'][tag]['relu5']['2']['map_mean'] <= 1
    assert 'k=1' in log


def test_voc_labels_on_the_hand_labelled_layout(tmp_path):
    year = voc_folder(tmp_path)
    paths, labels, names = voc_labels.classification_set(year, 'test')
    assert len(paths) == 12 and len(names) == 20 and names[0] == 'aeroplane'
    col = {n: labels[:, names.index(n)].tolist() for n in names}
    # Row 5 (pexels-6830376) has only a difficult chair -> 0.
    assert col['chair'] == [-1, -1, -1, -1, 0, 1, -1, 1, -1, -1, 1, -1]
    assert col['person'][:2] == [1, 1] and max(col['cat']) == -1
    # The VOCdevkit folder above the year is accepted too.
    again = voc_labels.classification_set(str(tmp_path), 'trainval')
    assert again[1][12, names.index('chair')] == 0
    with pytest.raises(ValueError, match='no image set'):
        voc_labels.classification_set(year, 'val')


def test_lowshot_tool_on_voc(tmp_path):
    year = voc_folder(tmp_path)
    out = tmp_path / 'out'
    run_tool('lowshot_svm.py', '--voc', year, '--side', '96', '--ks', '1',
             '--draws', '2', '--out', out)
    res = json.loads((out / 'lowshot.json').read_text())
    r = res['results']['random']['relu5']['1']
    # cat has no test positive: no AP; chair has 4 trainval positives.
    assert r['ap_mean'][voc_labels.CLASSES.index('cat')] is None
    assert 0 <= r['map_mean'] <= 1 and res['test'] == 12


def test_reference_cost_grid_and_test_set_pick():
    # svm_helper.parse_cost_list: 1e-7 .. 100 and 0.5^4 .. 0.5^19.
    grid = lowshot.REFERENCE_COSTS
    assert len(grid) == 26 and grid[0] == 1e-7 and grid[-1] == 100.0
    assert 0.5 ** 19 in grid and 0.5 ** 4 in grid and 0.5 ** 20 not in grid
    rs = np.random.RandomState(2)
    y = np.repeat(np.arange(3), 30)
    x = np.eye(3)[y] + rs.randn(90, 3) * 0.8
    labels = metrics.one_hot_targets(y, 3)
    costs = (1e-4, 1e-2, 1.0)
    res = lowshot.lowshot_svm(x[::2], labels[::2], x[1::2], labels[1::2],
                              ks=(2,), draws=3, costs=costs,
                              report=lambda s: None)['2']
    # One cost for the k: the best mean test mAP over the draws.
    per_cost = res['map_per_cost']
    assert res['costs'] == max(costs, key=lambda c: per_cost[repr(c)])
    assert res['map_mean'] == pytest.approx(max(per_cost.values()))
    assert res['map_mean'] == pytest.approx(np.mean(res['maps']))
    cv = lowshot.lowshot_svm(x[::2], labels[::2], x[1::2], labels[1::2],
                             ks=(2,), draws=3, costs=costs, selection='cv',
                             report=lambda s: None)['2']
    # Ours picks per class and draw, from the training sample only.
    assert len(cv['costs']) == 3 and len(cv['costs'][0]) == 3
    assert set(np.ravel(cv['costs'])) <= set(costs)
    with pytest.raises(ValueError, match='selection'):
        lowshot.lowshot_svm(x, labels, x, labels, selection='val')


def test_tiny_costs_still_rank():
    # At the grid's 1e-7 the weights are ~1e-7 but point the right way
    # (liblinear's solution tends to C times the weighted class-mean
    # difference); an optimiser stopping at w = 0 would tie every score.
    rs = np.random.RandomState(3)
    y = np.repeat([1.0, -1.0], 20)
    x = rs.randn(40, 6) + 1.5 * y[:, None] * np.eye(6)[0]
    w = lowshot.train_svm(x, y, 1e-7)
    assert 0 < np.abs(w[:-1]).max() < 1e-4
    direction = (2 * x[y > 0].sum(0) - x[y < 0].sum(0))
    cos = w[:-1].dot(direction) / np.linalg.norm(w[:-1]) / np.linalg.norm(
        direction)
    assert cos > 0.99
