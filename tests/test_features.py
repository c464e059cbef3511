"""Feature extraction (deepcontext/eval/features.py) against numpy and Caffe.

Fixtures (a real BatchNorm snapshot, held-out photos) are in conftest.py.
"""
import numpy as np
import pytest

from conftest import BN_EPS
from deepcontext.eval import features


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
