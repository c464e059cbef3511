"""Features, pretext accuracy, nearest neighbours and the linear probe.

The snapshot is conftest's ``bn_snapshot``: 4 real SGD steps of the patch
network on patches of the first test photos, so its BatchNorm statistics
are real.  Held-out images are the later test photos.  Numbers are checked
to be in range and against independent references (Caffe's own loss,
numpy BatchNorm, np.corrcoef, numeric gradients); whether the trained net
beats the random one is printed, not asserted.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from scipy import optimize

os.environ.setdefault('GLOG_minloglevel', '2')
from deepcontext.data import batches, photos  # noqa: E402
from deepcontext.eval import features, neighbours, pretext, probe  # noqa: E402
from deepcontext.data import labelled  # noqa: E402
from deepcontext.eval import plots  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BN_EPS = 1e-5   # Caffe's BatchNorm default, as in gen_net


def held_out(n):
    """Test photos the bn_snapshot fixture never trained on."""
    return photos.test_photos()[4:4 + n]


@pytest.fixture(scope='module')
def trained(bn_snapshot):
    return features.load_net(bn_snapshot[2])


@pytest.fixture(scope='module')
def patches():
    return neighbours.sample_patches(held_out(3), per_image=4, seed=0)


def run_tool(name, *args):
    r = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', name)]
                       + [str(a) for a in args], capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout


def test_bn_mode_auto(trained, bn_snapshot):
    net, mode = trained
    assert mode == 'global' and features.has_bn_statistics(net)
    random_net, mode = features.load_net(None)
    assert mode == 'batch' and not features.has_bn_statistics(random_net)
    # A definition without BatchNorm (network_no_bn.prototxt) loads too.
    no_bn, mode = features.load_net(bn_snapshot[2], bn_snapshot[1])
    assert mode == 'none' and 'bn6' not in no_bn.layer_dict
    assert np.array_equal(no_bn.params['conv1'][0].data,
                          net.params['conv1'][0].data)
    with pytest.raises(ValueError):
        features.load_net(None, bn_mode='test')


def test_extract_matches_numpy_batchnorm(trained, patches):
    net, _ = trained
    data = np.stack([features.prep_eval(p) for p in patches[0][:10]])
    assert np.allclose(data.std(axis=(1, 2, 3)), features.CHANNEL_RMS / 3,
                       rtol=1e-4)
    out = features.extract(net, data, ['relu6', 'pool5', 'fc6'],
                           batch_size=4)
    assert out['pool5'].shape == (10, 256, 3, 3)
    assert out['fc6'].shape == out['relu6'].shape == (10, 4096)
    mean, var, factor = (b.data for b in net.params['bn6'])
    ref = (out['fc6'] - mean / factor[0]) / np.sqrt(var / factor[0] + BN_EPS)
    assert np.allclose(out['relu6'], np.maximum(ref, 0), atol=1e-4)
    # Batch statistics: the batch's own mean and (biased) variance.
    batch_net, mode = features.load_net(None, bn_mode='batch')
    out = features.extract(batch_net, data, ['fc6', 'relu6'], batch_size=10)
    ref = (out['fc6'] - out['fc6'].mean(0)) / np.sqrt(out['fc6'].var(0) +
                                                      BN_EPS)
    assert np.allclose(out['relu6'], np.maximum(ref, 0), atol=1e-3)


def test_fully_convolutional_view(trained):
    net, _ = trained
    data = np.random.RandomState(0).randn(2, 3, 160, 128).astype(np.float32)
    out = features.extract(net, data, ['relu5', 'pool5'])
    assert out['relu5'].shape == (2, 256, 10, 8)
    assert out['pool5'].shape == (2, 256, 5, 4)
    with pytest.raises(ValueError, match='96x96'):
        features.extract(net, data, ['fc6'])
    with pytest.raises(ValueError, match='pairs'):
        features.extract(net, data[:, :, :96, :96], ['fc7'])
    pooled = features.grid_pool(out['relu5'], grid=2)
    assert pooled.shape == (2, 256 * 4)
    assert np.allclose(pooled[:, :256], out['relu5'][:, :, :5, :4].max((2, 3)))


def test_pretext_batches_are_seeded_per_image():
    both = list(batches.pretext_batches(held_out(2), seed=3,
                                           batch_size=64, grids_per_image=1))
    first = list(batches.pretext_batches(held_out(1), seed=3,
                                            batch_size=64, grids_per_image=1))
    # The first image's patches do not depend on the images after it.
    n = len(first[0][0])
    assert sum(len(x[0]) for x in both) > n > 0
    assert np.array_equal(both[0][0][:n], first[0][0])
    other = next(batches.pretext_batches(held_out(1), seed=4,
                                            batch_size=64, grids_per_image=1))
    assert not np.array_equal(other[0][:n], first[0][0][:len(other[0])])
    for data, pairs, labels, _ in both:
        assert data.shape[1:] == (3, 96, 96) and len(data) < 64
        assert pairs.max() < len(data) and set(labels) <= set(range(8))


def test_pretext_loss_agrees_with_caffe(trained):
    net, _ = trained
    data, pairs, labels, _ = next(batches.pretext_batches(
        held_out(1), batch_size=64, grids_per_image=1))
    fc9 = features.extract(net, data, ['fc9'], pairs=pairs,
                           labels=labels)['fc9']
    assert fc9.shape == (len(labels), 8)
    net.forward(start='first')          # the rest of the net: loss layer
    ours = -features.log_softmax(fc9)[np.arange(len(labels)), labels].sum()
    assert np.isclose(ours, float(net.blobs['loss'].data), rtol=1e-4)


def test_pretext_accuracy_in_range(trained):
    net, _ = trained
    r = pretext.pretext_accuracy(net, held_out(2), batch_size=64,
                                    grids_per_image=1, report=lambda s: None)
    assert 0 <= r['accuracy'] <= 1 and r['chance'] == 0.125
    assert 0.125 <= r['majority_baseline'] < 0.25
    assert r['pairs'] == np.sum(r['confusion']) > 0
    assert r['images'] == 2 and r['images_skipped'] == 0
    assert np.isclose(r['accuracy'], np.trace(r['confusion']) / r['pairs'])
    # 4 SGD steps at lr 1e-3 on random labels: finite, not near chance
    assert np.isfinite(r['loss_per_pair']) and 0 < r['loss_per_pair'] < 50
    print('pretext accuracy of the 4-step snapshot: %.3f' % r['accuracy'])


def test_normalized_correlation_is_corrcoef():
    x = np.random.RandomState(1).randn(5, 7)
    assert np.allclose(neighbours.normalized_correlation(x, x),
                       np.corrcoef(x))


def test_nearest_neighbours_skip_the_query_and_its_image(trained, patches):
    net, _ = trained
    crops, owner, corners = patches
    assert crops.shape[1:] == (96, 96, 3) and crops.dtype == np.uint8
    assert len(crops) == len(owner) == len(corners) == 12
    found = neighbours.patch_neighbours(net, crops, ['pool5', 'fc6'],
                                        [0, 5], k=4, groups=owner)
    for idx, scores in found.values():
        assert idx.shape == scores.shape == (2, 4)
        assert np.all(owner[idx] != owner[[0, 5]][:, None])
        assert np.all(np.diff(scores, axis=1) <= 0)
        assert np.all(np.abs(scores) <= 1 + 1e-9)
    fig = plots.neighbours_figure(crops, [0, 5], *found['fc6'], title='t')
    assert len(fig.axes) == 1


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


def test_eval_pretext_tool(bn_snapshot, tmp_path):
    out = run_tool('eval_pretext.py', '--weights', bn_snapshot[2], '--random',
                   '--images', *held_out(1), '--grids', '1',
                   '--batch-size', '64', '--out', tmp_path)
    assert 'BatchNorm global' in out and 'BatchNorm batch' in out
    res = json.loads((tmp_path / 'pretext.json').read_text())['results']
    assert [r['net'] for r in res] == ['trained', 'random']
    assert all(0 <= r['accuracy'] <= 1 for r in res)


def test_nn_patches_tool(bn_snapshot, tmp_path):
    out = run_tool('nn_patches.py', '--weights', bn_snapshot[2], '--random',
                   '--images', *held_out(3), '--per-image', '2',
                   '--queries', '2', '--k', '3', '--layers', 'fc6',
                   '--out', tmp_path)
    assert 'mean correlation' in out
    for tag in ('trained', 'random'):
        with Image.open(tmp_path / ('nn_fc6_%s.png' % tag)) as im:
            assert im.format == 'PNG' and im.size[0] > 4 * 96
    res = json.loads((tmp_path / 'nn.json').read_text())
    scores = res['nets']['trained']['layers']['fc6']['correlation']
    assert np.array(scores).shape == (2, 3)
    assert np.all(np.abs(scores) <= 1 + 1e-9)


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
