"""Feature extraction (deepcontext/eval/features.py) against numpy and Caffe.

Fixtures (a real BatchNorm snapshot, held-out photos) are in conftest.py.
"""
import caffe
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


def caffenet_deploy(path, side=227, batch=2):
    """BVLC CaffeNet's deploy form, grouped conv2/4/5, gaussian weights."""
    from caffe import layers as L, params as P
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[batch, 3, side, side]))
    bottom = n.data
    fill = dict(weight_filler=dict(type='gaussian', std=0.01),
                bias_filler=dict(type='constant', value=0.1))
    for i, (ks, nout, stride, pad, group) in enumerate(
            [(11, 96, 4, 0, 1), (5, 256, 1, 2, 2), (3, 384, 1, 1, 1),
             (3, 384, 1, 1, 2), (3, 256, 1, 1, 2)], 1):
        conv = L.Convolution(bottom, kernel_size=ks, num_output=nout,
                             stride=stride, pad=pad, group=group, **fill)
        setattr(n, 'conv%d' % i, conv)
        setattr(n, 'relu%d' % i, L.ReLU(conv, in_place=True))
        bottom = conv
        if i in (1, 2):
            pool = L.Pooling(conv, pool=P.Pooling.MAX, kernel_size=3,
                             stride=2)
            setattr(n, 'pool%d' % i, pool)
            bottom = L.LRN(pool, local_size=5, alpha=1e-4, beta=0.75)
            setattr(n, 'norm%d' % i, bottom)
    n.pool5 = L.Pooling(bottom, pool=P.Pooling.MAX, kernel_size=3, stride=2)
    path.write_text(str(n.to_proto()))
    return str(path)


def test_inputs_by_preprocessing_by_hand(trained):
    crop = np.zeros((2, 2, 3))
    crop[..., 0], crop[..., 2] = 200, 10      # R 200, G 0, B 10
    bgr = features.InputSpec('caffe-bgr', features.IMAGENET_BGR_MEAN, 1.0,
                             'bgr')
    # B - 104, G - 117, R - 123 in channels 0, 1, 2.
    assert features.to_input(crop, bgr)[:, 0, 0].tolist() == \
        [-94.0, -117.0, 77.0]
    half_rgb = bgr._replace(preprocess='reference', scale=0.5,
                            channels='rgb')
    assert features.to_input(crop, half_rgb)[:, 0, 0].tolist() == \
        [38.5, -58.5, -47.0]
    no_mean = bgr._replace(mean=None)
    assert features.to_input(crop, no_mean)[:, 0, 0].tolist() == \
        [10.0, 0.0, 200.0]
    assert np.allclose(features.to_input(crop), features.prep_eval(crop))
    assert features.parse_mean('1,2,3') == (1.0, 2.0, 3.0)
    assert features.parse_mean('none') is None
    with pytest.raises(ValueError, match='B,G,R'):
        features.parse_mean('1,2')
    with pytest.raises(ValueError, match='preprocess'):
        features.input_spec(trained[0], 'rgb')


def test_input_spec_for_our_net_and_for_a_caffe_model(trained, patches,
                                                      tmp_path):
    net, _ = trained
    images = list(patches[0][:8].astype(np.float64))
    spec = features.input_spec(net, 'reference', sample=images)
    # Ours: RGB order, scaled so that the input has RMS 50 on the sample,
    # as export_fast_rcnn.py's conv1 sees Fast R-CNN's input.
    assert spec.channels == 'rgb' and features.is_deepcontext_net(net)
    x = np.stack([features.to_input(im, spec) for im in images])
    assert np.sqrt(np.mean(np.square(x.astype(np.float64)))) == \
        pytest.approx(50.0, rel=1e-5)
    assert spec.describe() == dict(preprocess='reference',
                                   mean=[104.0, 117.0, 123.0],
                                   input_scale=spec.scale,
                                   channel_order='rgb')
    # Someone else's CaffeNet: BGR 0-255 as it is, whatever the sample.
    other = caffe.Net(caffenet_deploy(tmp_path / 'deploy.prototxt'),
                      caffe.TEST)
    spec = features.input_spec(other, 'caffe-bgr', sample=images)
    assert (spec.scale, spec.channels) == (1.0, 'bgr')
    assert features.input_spec(other, 'caffe-bgr', 'none', 0.5, 'rgb') == \
        features.InputSpec('caffe-bgr', None, 0.5, 'rgb')
