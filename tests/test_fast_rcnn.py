"""Fast R-CNN export and our ROIPooling / SmoothL1Loss layers in pycaffe."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from google.protobuf import text_format

import caffe

from deepcontext.data import decode, photos, preprocess, voc
from deepcontext.model import pycaffe
from deepcontext.transfer import calibration, fast_rcnn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Fast R-CNN's CaffeNet test net, group-free, in that fork's own syntax.
FAST_RCNN_TEST_NET = '''
name: "CaffeNet"
input: "data"
input_shape { dim: 1 dim: 3 dim: 227 dim: 227 }
input: "rois"
input_shape { dim: 1 dim: 5 }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 96 kernel_size: 11 stride: 4 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "norm1" type: "LRN" bottom: "pool1" top: "norm1"
  lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 } }
layer { name: "conv2" type: "Convolution" bottom: "norm1" top: "conv2"
  convolution_param { num_output: 256 pad: 2 kernel_size: 5 } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer { name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2"
  pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "norm2" type: "LRN" bottom: "pool2" top: "norm2"
  lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 } }
layer { name: "conv3" type: "Convolution" bottom: "norm2" top: "conv3"
  convolution_param { num_output: 384 pad: 1 kernel_size: 3 } }
layer { name: "relu3" type: "ReLU" bottom: "conv3" top: "conv3" }
layer { name: "conv4" type: "Convolution" bottom: "conv3" top: "conv4"
  convolution_param { num_output: 384 pad: 1 kernel_size: 3 } }
layer { name: "relu4" type: "ReLU" bottom: "conv4" top: "conv4" }
layer { name: "conv5" type: "Convolution" bottom: "conv4" top: "conv5"
  convolution_param { num_output: 256 pad: 1 kernel_size: 3 } }
layer { name: "relu5" type: "ReLU" bottom: "conv5" top: "conv5" }
layer { name: "roi_pool5" type: "ROIPooling" bottom: "conv5" bottom: "rois"
  top: "pool5"
  roi_pooling_param { pooled_w: 6 pooled_h: 6 spatial_scale: 0.0625 } }
layer { name: "fc6" type: "InnerProduct" bottom: "pool5" top: "fc6"
  inner_product_param { num_output: 4096 } }
layer { name: "relu6" type: "ReLU" bottom: "fc6" top: "fc6" }
layer { name: "fc7" type: "InnerProduct" bottom: "fc6" top: "fc7"
  inner_product_param { num_output: 4096 } }
layer { name: "relu7" type: "ReLU" bottom: "fc7" top: "fc7" }
layer { name: "cls_score" type: "InnerProduct" bottom: "fc7" top: "cls_score"
  inner_product_param { num_output: 21 } }
layer { name: "bbox_pred" type: "InnerProduct" bottom: "fc7" top: "bbox_pred"
  inner_product_param { num_output: 84 } }
layer { name: "cls_prob" type: "Softmax" bottom: "cls_score" top: "cls_prob" }
'''


def test_layers_registered_and_fork_syntax_loads(tmp_path):
    assert {'ROIPooling', 'SmoothL1Loss'} <= set(caffe.layer_type_list())
    path = tmp_path / 'test.prototxt'
    path.write_text(FAST_RCNN_TEST_NET)
    net = caffe.Net(str(path), caffe.TEST)
    net.blobs['data'].reshape(1, 3, 300, 400)
    net.blobs['rois'].reshape(2, 5)
    net.blobs['rois'].data[...] = [[0, 0, 0, 399, 299], [0, 50, 60, 200, 250]]
    net.reshape()
    out = net.forward()
    assert net.blobs['pool5'].data.shape == (2, 256, 6, 6)
    np.testing.assert_allclose(out['cls_prob'].sum(1), 1, rtol=1e-5)
    # py-faster-rcnn's SmoothL1Loss syntax, 4 bottoms and sigma
    from caffe.proto import caffe_pb2
    p = caffe_pb2.LayerParameter()
    text_format.Merge('name: "loss_bbox" type: "SmoothL1Loss" '
                      'bottom: "a" bottom: "b" bottom: "c" bottom: "d" '
                      'top: "l" smooth_l1_loss_param { sigma: 3.0 }', p)
    assert p.smooth_l1_loss_param.sigma == 3.0
    assert p.ListFields()[-1][0].number == 8266712


def image_blob(path, shape=(240, 320)):
    im = preprocess.resize_bilinear(decode.load_rgb(path), shape) * 255
    return (im[:, :, ::-1] - fast_rcnn.PIXEL_MEANS_BGR).transpose(
        2, 0, 1)[None].astype(np.float32)


@pytest.fixture(scope='module')
def exported(bn_snapshot, voc_fixture, tmp_path_factory):
    """The one-command export of a BatchNorm snapshot, calibrated on the
    fixture's images and proposals (small scale, few RoIs: fast)."""
    bn_def, no_bn_def, model = bn_snapshot
    out = str(tmp_path_factory.mktemp('export'))
    r = subprocess.run([sys.executable,
                        os.path.join(ROOT, 'tools', 'export_fast_rcnn.py'),
                        bn_def, model, out, '--voc', voc_fixture['root'],
                        '--proposals', voc_fixture['trainval_mat'],
                        '--scale', '240', '--rois-per-image', '16',
                        '--batches', '1', '--tolerance', '0.1'],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    return bn_def, model, out, r.stdout


def test_export_is_what_the_fork_parses(exported):
    _, _, out, stdout = exported
    for name in ('train.prototxt', 'train_input.prototxt', 'test.prototxt',
                 'solver.prototxt', 'init.caffemodel', 'export.json'):
        assert os.path.isfile(os.path.join(out, name)), name
    assert 'conv6     reshaped from fc6' in stdout
    train = pycaffe.read_netparam(os.path.join(out, 'train.prototxt'))
    assert train.layer[0].python_param.layer == 'RoIDataLayer'
    layers = {l.name: l for l in train.layer}
    # conv1 padded as trained; Fast R-CNN's CaffeNet multipliers
    assert layers['conv1'].convolution_param.pad == [5]
    assert [(p.lr_mult, p.decay_mult) for p in layers['conv1'].param] == \
        [(0, 0), (0, 0)]
    for name in ('conv2', 'conv6', 'fc7', 'cls_score', 'bbox_pred'):
        assert [(p.lr_mult, p.decay_mult) for p in layers[name].param] == \
            [(1, 1), (2, 0)], name
    # the fork's field numbers for its two layers
    fields = {f.name: f.number for f, _ in layers['roi_pool5'].ListFields()}
    assert fields['roi_pooling_param'] == 8266711
    # test.prototxt in the old input: form (the fork has no Input layer)
    text = open(os.path.join(out, 'test.prototxt')).read()
    assert 'input: "data"' in text and 'input_shape' in text
    assert 'type: "Input"' not in text
    # absolute paths in the solver
    solver = open(os.path.join(out, 'solver.prototxt')).read()
    assert 'train_net: "/' in solver and 'snapshot_prefix: "/' in solver
    # calibrated LRN: the same alpha in all three definitions
    alphas = {n: [l.lrn_param.alpha for l in pycaffe.read_netparam(
        os.path.join(out, n)).layer if l.type == 'LRN']
        for n in ('train.prototxt', 'test.prototxt')}
    assert alphas['train.prototxt'] == alphas['test.prototxt']


def test_exported_weights_are_the_scaled_snapshot(exported):
    bn_def, model, out, _ = exported
    info = json.load(open(os.path.join(out, 'export.json')))
    factors = info['calibration']['factors']
    src = fast_rcnn.patch_net(bn_def, model, log=lambda m: None)
    net = caffe.Net(os.path.join(out, 'test.prototxt'),
                    os.path.join(out, 'init.caffemodel'), caffe.TEST)
    for name in ('conv2', 'conv3', 'conv4', 'conv5'):
        np.testing.assert_allclose(net.params[name][0].data,
                                   src.params[name][0].data * factors[name],
                                   rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(
        net.params['conv1'][0].data, src.params['conv1'][0].data[:, ::-1] *
        info['input_scale'] * factors['conv1'], rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(
        net.params['conv6'][0].data.reshape(4096, -1),
        src.params['fc6'][0].data * factors['conv6'], rtol=1e-5, atol=1e-9)
    # a real image with a few ROIs
    net.blobs['data'].reshape(1, 3, 240, 320)
    net.blobs['data'].data[...] = image_blob(photos.test_photos()[0])
    net.blobs['rois'].reshape(3, 5)
    net.blobs['rois'].data[...] = [[0, 0, 0, 319, 239], [0, 20, 30, 150, 200],
                                   [0, 100, 50, 300, 230]]
    net.reshape()
    res = net.forward()
    assert res['cls_prob'].shape == (3, 21)
    assert np.isfinite(res['cls_prob']).all()


def test_calibration_on_the_test_net_with_rois(exported, voc_fixture):
    """Extra inputs (rois) and heads without a loss: every weight layer gets
    a gradient, nothing turns NaN, and the function is kept."""
    _, _, out, _ = exported
    netdef, net = calibration.load_net(os.path.join(out, 'test.prototxt'),
                                       os.path.join(out, 'init.caffemodel'))
    recs = voc.load(voc_fixture['root'], 'trainval',
                    voc_fixture['trainval_mat'])
    data = fast_rcnn.calibration_batches([], 1, np.random.RandomState(0),
                                         recs, scale=200, rois_per_image=8)
    net, report = calibration.calibrate(net, netdef, data, draws=2,
                                        check_draws=2, tolerance=1.0,
                                        log=lambda m: None)
    assert set(report['before']) >= {'cls_score', 'bbox_pred', 'conv1'}
    assert all(np.isfinite(v) and v > 0 for v in report['before'].values())
    assert max(dev for _, dev in report['function'].values()) < 1e-4
