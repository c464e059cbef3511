"""debatchnorm: the numeric fold, the tool, and its self-check."""
import os
import subprocess
import sys

import numpy as np

import caffe
from caffe import layers as L

from deepcontext.data import batches, photos
from deepcontext.model import nets, pycaffe
from deepcontext.transfer import debatchnorm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, 'tools', 'debatchnorm.py')


def test_fold_equals_caffe_batchnorm_in_test_phase(tmp_path):
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[5, 3, 9, 9]))
    n.conv = L.Convolution(n.data, kernel_size=3, num_output=4,
                           weight_filler=dict(type='gaussian', std=0.3),
                           bias_filler=dict(type='gaussian', std=0.5))
    n.bn = L.BatchNorm(n.conv, batch_norm_param=dict(eps=1e-3))
    path = tmp_path / 'bn.prototxt'
    path.write_text(str(n.to_proto()))
    net = caffe.Net(str(path), caffe.TEST)
    rs = np.random.RandomState(0)
    mean, var, s = rs.randn(4) * 7, rs.rand(4) * 9 + .1, 3.5
    net.params['bn'][0].data[...] = mean
    net.params['bn'][1].data[...] = var
    net.params['bn'][2].data[...] = s
    x = rs.randn(5, 3, 9, 9).astype(np.float32)
    net.blobs['data'].data[...] = x
    want = net.forward()['bn'].copy()
    w, b = debatchnorm.fold_batchnorm(net.params['conv'][0].data,
                                      net.params['conv'][1].data, mean, var, s,
                                      1e-3)
    net.params['conv'][0].data[...] = w
    net.params['conv'][1].data[...] = b
    got = net.forward(end='conv')['conv']
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_zero_scale_factor_is_caffes_zero_statistics():
    w, b = debatchnorm.fold_batchnorm(np.ones((2, 3)), np.ones(2), [5, 5],
                                      [5, 5], 0, 0.25)
    np.testing.assert_allclose(w, 2 * np.ones((2, 3)))
    np.testing.assert_allclose(b, [2, 2])


def run_tool(*args):
    return subprocess.run([sys.executable, TOOL] + [str(a) for a in args],
                          capture_output=True, text=True, timeout=300)


def test_tool_folds_and_verifies_on_real_patches(bn_snapshot, tmp_path):
    bn_def, no_bn_def, model = bn_snapshot
    out = tmp_path / 'folded.caffemodel'
    r = run_tool(bn_def, model, no_bn_def, out)
    assert r.returncode == 0, r.stdout + r.stderr
    assert 'check passed' in r.stdout
    for layer in ('conv3', 'conv4', 'conv5', 'fc6'):
        assert '%s: folded bn%s' % (layer, layer[-1]) in r.stdout
    assert 'skipping fc7' in r.stdout and 'skipping fc9' in r.stdout
    assert r.stdout.count('check ') >= 11
    src = caffe.Net(bn_def, model, caffe.TEST)
    dst = caffe.Net(no_bn_def, str(out), caffe.TEST)
    assert np.array_equal(src.params['conv1'][0].data,
                          dst.params['conv1'][0].data)
    st = src.params['bn4']
    w, b = debatchnorm.fold_batchnorm(src.params['conv4'][0].data,
                                      src.params['conv4'][1].data, st[0].data,
                                      st[1].data, st[2].data[0],
                                      debatchnorm.bn_eps(pycaffe.read_netparam(bn_def))[
        'bn4'])
    assert np.array_equal(dst.params['conv4'][0].data, w)
    assert np.array_equal(dst.params['conv4'][1].data, b)


def test_tool_onto_caffenet_without_groups(bn_snapshot, tmp_path):
    bn_def, _, model = bn_snapshot
    deploy = os.path.join(ROOT, 'prototxt', 'caffenet_nogroups_deploy.prototxt')
    out = tmp_path / 'caffenet.caffemodel'
    r = run_tool(bn_def, model, deploy, out)
    assert r.returncode == 0, r.stdout + r.stderr
    assert 'fc6 has shape' in r.stdout and 'skipped' in r.stdout
    assert 'check skipped' in r.stdout
    net = caffe.Net(deploy, str(out), caffe.TEST)
    assert net.params['conv5'][0].data.shape == (256, 384, 3, 3)
    assert np.abs(net.params['conv5'][0].data).sum() > 0


def test_check_catches_a_wrong_fold(bn_snapshot):
    bn_def, no_bn_def, model = bn_snapshot
    src = caffe.Net(bn_def, model, caffe.TEST)
    dst = caffe.Net(no_bn_def, caffe.TEST)
    debatchnorm.debatchnorm(src, pycaffe.read_netparam(bn_def), dst,
                            log=lambda m: None)
    dst.params['conv4'][0].data[...] *= 1.01
    data = batches.real_patches(photos.test_photos(), 8)
    diffs = debatchnorm.compare_activations(src, dst, ['conv3', 'conv4'], data,
                                            end='relu6')
    assert diffs['conv3'][1] < 1e-4 < diffs['conv4'][1]


def test_shipped_prototxt_are_current(tmp_path):
    nets.write_shipped(str(tmp_path))
    for name in os.listdir(tmp_path):
        shipped = os.path.join(ROOT, 'prototxt', name)
        assert open(shipped).read() == (tmp_path / name).read_text(), name
