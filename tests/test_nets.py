"""The generated network against the original gen_net(), layer for layer."""
import os
import subprocess
import sys

import numpy as np
import pytest
from google.protobuf import text_format

import caffe
from caffe.proto import caffe_pb2

from deepcontext.model import nets, pycaffe, solver as dc_solver

EXPECTED = [
    ('data', 'DummyData', [], ['data']),
    ('select1', 'DummyData', [], ['select1']),
    ('select2', 'DummyData', [], ['select2']),
    ('label', 'DummyData', [], ['label']),
    ('conv1', 'Convolution', ['data'], ['conv1']),
    ('relu1', 'ReLU', ['conv1'], ['conv1']),
    ('pool1', 'Pooling', ['conv1'], ['pool1']),
    ('norm1', 'LRN', ['pool1'], ['norm1']),
    ('conv2', 'Convolution', ['norm1'], ['conv2']),
    ('relu2', 'ReLU', ['conv2'], ['conv2']),
    ('pool2', 'Pooling', ['conv2'], ['pool2']),
    ('norm2', 'LRN', ['pool2'], ['norm2']),
    ('conv3', 'Convolution', ['norm2'], ['conv3']),
    ('bn3', 'BatchNorm', ['conv3'], ['conv3']),
    ('relu3', 'ReLU', ['conv3'], ['conv3']),
    ('conv4', 'Convolution', ['conv3'], ['conv4']),
    ('bn4', 'BatchNorm', ['conv4'], ['conv4']),
    ('relu4', 'ReLU', ['conv4'], ['conv4']),
    ('conv5', 'Convolution', ['conv4'], ['conv5']),
    ('bn5', 'BatchNorm', ['conv5'], ['conv5']),
    ('relu5', 'ReLU', ['conv5'], ['conv5']),
    ('pool5', 'Pooling', ['conv5'], ['pool5']),
    ('fc6', 'InnerProduct', ['pool5'], ['fc6']),
    ('bn6', 'BatchNorm', ['fc6'], ['fc6']),
    ('relu6', 'ReLU', ['fc6'], ['fc6']),
    ('first', 'BatchReindex', ['fc6', 'select1'], ['first']),
    ('second', 'BatchReindex', ['fc6', 'select2'], ['second']),
    ('fc6_concat', 'Concat', ['first', 'second'], ['fc6_concat']),
    ('fc7', 'InnerProduct', ['fc6_concat'], ['fc7']),
    ('bn7', 'BatchNorm', ['fc7'], ['fc7']),
    ('relu7', 'ReLU', ['fc7'], ['fc7']),
    ('fc8', 'InnerProduct', ['fc7'], ['fc8']),
    ('relu8', 'ReLU', ['fc8'], ['fc8']),
    ('fc9', 'InnerProduct', ['fc8'], ['fc9']),
    ('loss', 'SoftmaxWithLoss', ['fc9', 'label'], ['loss']),
]
# kernel, stride, pad, outputs of each convolution
CONVS = {'conv1': (11, 4, 5, 96), 'conv2': (5, 1, 2, 256),
         'conv3': (3, 1, 1, 384), 'conv4': (3, 1, 1, 384),
         'conv5': (3, 1, 1, 256)}
FCS = {'fc6': 4096, 'fc7': 4096, 'fc8': 4096, 'fc9': 8}


def read_net(path):
    net = caffe_pb2.NetParameter()
    with open(path) as f:
        text_format.Merge(f.read(), net)
    return net


def structure(net):
    return [(l.name, l.type, list(l.bottom), list(l.top)) for l in net.layer]


def check_params(net):
    assert net.debug_info
    for l in net.layer:
        if l.type == 'Convolution':
            k, s, p, n = CONVS[l.name]
            cp = l.convolution_param
            assert (list(cp.kernel_size), list(cp.stride or [1]),
                    list(cp.pad), cp.num_output) == ([k], [s], [p], n)
            assert cp.group == 1 and cp.weight_filler.type == 'xavier'
        elif l.type == 'InnerProduct':
            assert l.inner_product_param.num_output == FCS[l.name]
            assert l.inner_product_param.weight_filler.type == 'xavier'
        elif l.type == 'Pooling':
            pp = l.pooling_param
            assert (pp.pool, pp.kernel_size, pp.stride) == (
                caffe_pb2.PoolingParameter.MAX, 3, 2)
        elif l.type == 'LRN':
            lp = l.lrn_param
            assert (lp.local_size, lp.alpha, lp.beta) == (
                5, pytest.approx(1e-4), 0.75)
        elif l.type == 'BatchNorm':
            assert [p.lr_mult for p in l.param] == [0, 0, 0]
        elif l.type == 'SoftmaxWithLoss':
            assert l.loss_param.normalization == caffe_pb2.LossParameter.NONE
    # no scale/shift after BatchNorm
    assert not any(l.type in ('Scale', 'Bias') for l in net.layer)


def test_cli_writes_both_nets_with_original_structure(tmp_path):
    out = tmp_path / 'nets'
    r = subprocess.run([sys.executable, '-m', 'deepcontext.model.nets', str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    with_bn = read_net(out / 'network.prototxt')
    assert structure(with_bn) == EXPECTED
    check_params(with_bn)
    no_bn = read_net(out / 'network_no_bn.prototxt')
    assert structure(no_bn) == [e for e in EXPECTED
                                if e[1] != 'BatchNorm']
    check_params(no_bn)


def test_real_forward_backward_shapes(tmp_path):
    path = tmp_path / 'net.prototxt'
    path.write_text(str(nets.gen_net(batch_size=6)))
    net = caffe.Net(str(path), caffe.TRAIN)
    rs = np.random.RandomState(0)
    data = rs.randn(6, 3, 96, 96).astype(np.float32) * 50
    pairs = np.array([[0, 1], [1, 0], [2, 3], [3, 2], [4, 5]])
    labels = np.array([4, 3, 6, 1, 0])
    pycaffe.set_inputs(net, data, pairs, labels)
    net.forward()
    net.backward()
    assert net.blobs['pool5'].data.shape == (6, 256, 3, 3)
    assert net.blobs['fc6'].data.shape == (6, 4096)
    assert net.blobs['fc6_concat'].data.shape == (5, 8192)
    assert net.blobs['fc9'].data.shape == (5, 8)
    loss = pycaffe.loss(net)
    # summed (normalization NONE) softmax loss near 5 * ln 8 at init
    assert np.isfinite(loss) and 0.5 * 5 * np.log(8) < loss < 3 * 5 * np.log(8)
    # gradients reach the first layer (inputs themselves get none)
    assert np.abs(net.params['conv1'][0].diff).max() > 0


def test_solver_matches_original_template(tmp_path):
    s = dc_solver.gen_solver(str(tmp_path))
    assert (s.base_lr, s.lr_policy, s.weight_decay, s.momentum) == (
        pytest.approx(1e-5), 'fixed', 0, 0)
    assert (s.snapshot, s.display, s.type) == (2000, 1, 'SGD')
    assert s.max_iter == 1000000000
    assert s.snapshot_prefix == os.path.join(str(tmp_path), 'model')
    text = open(dc_solver.write_solver(str(tmp_path / 's.prototxt'),
                                       s)).read()
    assert 'momentum' not in text   # as the template when momentum is 0


def test_engine_caffe_switch(tmp_path):
    """config cudnn=False: every layer that has an engine gets CAFFE, and
    pycaffe builds that net (the default leaves the engine field out)."""
    default = nets.write_nets(str(tmp_path / 'a'))[0]
    assert 'engine' not in open(default).read()
    path = nets.write_nets(str(tmp_path / 'b'), batch_size=8,
                           engine='CAFFE')[0]
    text = open(path).read()
    # 5 convolutions, 3 poolings, 2 LRNs, 8 ReLUs, the loss's softmax
    assert text.count('engine: CAFFE') == 19
    caffe.set_mode_cpu()
    net = caffe.Net(path, caffe.TRAIN)
    assert 'conv1' in net.params


def test_pass_on_devices_copies_the_weights(tmp_path):
    """pycaffe.pass_on_devices (the CPU/GPU comparison) on the CPU twice: the
    second net gets the first one's weights, so every blob is identical."""
    path = nets.write_nets(str(tmp_path), batch_size=8, debug_info=False)[0]
    rs = np.random.RandomState(0)
    data = (rs.standard_normal((8, 3, 96, 96)) * 50).astype(np.float32)
    pairs = np.stack([np.arange(7), np.arange(1, 8)], 1)
    (d1, f1, g1), (d2, f2, g2) = pycaffe.pass_on_devices(
        path, data, pairs, rs.randint(0, 8, 7), modes=('cpu', 'cpu'))
    assert np.abs(g1['conv1']).max() > 0
    for first, second in ((d1, d2), (f1, f2), (g1, g2)):
        for k in first:
            np.testing.assert_array_equal(first[k], second[k])
