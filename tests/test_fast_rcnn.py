"""Fast R-CNN export and our ROIPooling / SmoothL1Loss layers in pycaffe."""
import os
import subprocess
import sys

import numpy as np
import pytest
from google.protobuf import text_format

import caffe

from deepcontext.data import decode, photos, preprocess
from deepcontext.model import pycaffe, solver as dc_solver
from deepcontext.transfer import calibration, debatchnorm, fast_rcnn

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
def exported(bn_snapshot, tmp_path_factory):
    bn_def, no_bn_def, model = bn_snapshot
    folded = str(tmp_path_factory.mktemp('fr') / 'folded.caffemodel')
    src = caffe.Net(bn_def, model, caffe.TEST)
    dst = caffe.Net(no_bn_def, caffe.TEST)
    debatchnorm.debatchnorm(src, pycaffe.read_netparam(bn_def), dst,
                        log=lambda m: None)
    dst.save(folded)
    out = str(tmp_path_factory.mktemp('export'))
    r = subprocess.run([sys.executable,
                        os.path.join(ROOT, 'tools', 'export_fast_rcnn.py'),
                        no_bn_def, folded, out], capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    return no_bn_def, folded, out, r.stdout


def test_export_files_and_bit_identical_weights(exported):
    no_bn_def, folded, out, stdout = exported
    for name in ('train.prototxt', 'test.prototxt', 'solver.prototxt',
                 'init.caffemodel', 'export.json'):
        assert os.path.isfile(os.path.join(out, name)), name
    assert 'conv6     reshaped from fc6' in stdout
    assert 'fc7       freshly initialised' in stdout
    train = pycaffe.read_netparam(os.path.join(out, 'train.prototxt'))
    assert train.layer[0].python_param.layer == 'RoIDataLayer'
    src = caffe.Net(no_bn_def, folded, caffe.TEST)
    net = caffe.Net(os.path.join(out, 'test.prototxt'),
                    os.path.join(out, 'init.caffemodel'), caffe.TEST)
    for name in ('conv2', 'conv3', 'conv4', 'conv5'):
        for i in (0, 1):
            assert np.array_equal(net.params[name][i].data,
                                  src.params[name][i].data), name
    assert np.array_equal(net.params['conv1'][0].data,
                          src.params['conv1'][0].data[:, ::-1])
    assert np.array_equal(net.params['conv6'][0].data.reshape(4096, -1),
                          src.params['fc6'][0].data)
    # a real image with a few ROIs
    net.blobs['data'].reshape(1, 3, 240, 320)
    net.blobs['data'].data[...] = image_blob(photos.test_photos()[0])
    net.blobs['rois'].reshape(3, 5)
    net.blobs['rois'].data[...] = [[0, 0, 0, 319, 239], [0, 20, 30, 150, 200],
                                   [0, 100, 50, 300, 230]]
    net.reshape()
    res = net.forward()
    assert res['cls_prob'].shape == (3, 21)
    assert net.blobs['bbox_pred'].data.shape == (3, 84)
    assert np.isfinite(res['cls_prob']).all()


def test_exported_net_trains_on_a_synthetic_box_task(exported, tmp_path):
    _, _, out, _ = exported
    train = tmp_path / 'train.prototxt'
    train.write_text(str(fast_rcnn.gen_net(21, True, data_layer='input')))
    s = fast_rcnn.gen_solver(str(train), str(tmp_path / 'snap'))
    # Fast R-CNN's 0.001 assumes ImageNet-scaled weights; an un-rescaled
    # debatchnormed net diverges there (see tools/rescale.py).
    s.base_lr = 1e-5
    s.random_seed = 1701   # dropout masks: the same run every time
    caffe.set_mode_cpu()
    solver = caffe.get_solver(dc_solver.write_solver(
        str(tmp_path / 'solver.prototxt'), s))
    solver.net.copy_from(os.path.join(out, 'init.caffemodel'))
    rs = np.random.RandomState(0)
    boxes = []
    for _ in range(8):
        x1, y1 = rs.randint(0, 200), rs.randint(0, 140)
        boxes.append([0, x1, y1, x1 + rs.randint(40, 119),
                      y1 + rs.randint(40, 99)])
    boxes = np.array(boxes, np.float32)
    labels = np.where(boxes[:, 1] < 100, 3, 7).astype(np.float32)
    targets = np.zeros((8, 84), np.float32)
    weights = np.zeros((8, 84), np.float32)
    for i, l in enumerate(labels.astype(int)):
        targets[i, 4 * l:4 * l + 4] = rs.randn(4) * 0.5
        weights[i, 4 * l:4 * l + 4] = 1
    inputs = dict(data=image_blob(photos.test_photos()[1]), rois=boxes,
                  labels=labels, bbox_targets=targets,
                  bbox_loss_weights=weights)
    pycaffe.set_blobs(solver.net, inputs)
    # Judge the weights by the loss without dropout (a TEST-phase twin that
    # shares them): with 8 ROIs the dropout masks alone move the training
    # loss by as much as 12 steps of learning do.
    probe = caffe.Net(str(train), caffe.TEST)
    probe.share_with(solver.net)

    def clean_loss():
        pycaffe.set_blobs(probe, inputs)
        probe.forward()
        return (float(probe.blobs['loss_cls'].data) +
                float(probe.blobs['loss_bbox'].data))

    before = clean_loss()
    losses = []
    for _ in range(12):
        solver.step(1)
        losses.append(float(solver.net.blobs['loss_cls'].data) +
                      float(solver.net.blobs['loss_bbox'].data))
        # stop at once on divergence: Caffe's max-pool backward indexes
        # out of bounds on NaN inputs
        assert np.isfinite(losses[-1]), losses
    after = clean_loss()
    assert after < 0.8 * before, (before, after, losses)
