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
    # Fast R-CNN's CaffeNet: pool1/pool2 padded by 1, drop6 and drop7 at
    # 0.5, in all three definitions, at the fork's caffe.proto numbers
    # (pooling_param 121 with pad 4, dropout_param 108 with dropout_ratio 1)
    for name in ('train.prototxt', 'train_input.prototxt', 'test.prototxt'):
        d = {l.name: l for l in pycaffe.read_netparam(
            os.path.join(out, name)).layer}
        for pool in ('pool1', 'pool2'):
            fields = dict((f.number, v) for f, v in d[pool].ListFields())
            pad = dict((f.number, v) for f, v in fields[121].ListFields())
            assert pad[4] == 1, (name, pool)
        for drop, bottom in (('drop6', 'pool6'), ('drop7', 'fc7')):
            fields = dict((f.number, v) for f, v in d[drop].ListFields())
            ratio = dict((f.number, v) for f, v in fields[108].ListFields())
            assert ratio[1] == 0.5 and d[drop].bottom == [bottom], name
        assert fast_rcnn.outdated(pycaffe.read_netparam(
            os.path.join(out, name))) is None
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


# conv1..relu5 with no padding anywhere, on 163 x 163 crops: one conv5
# cell, centred on the crop's centre pixel 81 (the receptive field of
# CaffeNet's conv5 is 163 px).  LRN alphas come from the export (the
# calibration changes them).
UNPADDED_TOWER = """
input: "data" input_shape { dim: %d dim: 3 dim: 163 dim: 163 }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 96 kernel_size: 11 stride: 4 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "norm1" type: "LRN" bottom: "pool1" top: "norm1"
  lrn_param { local_size: 5 alpha: %r beta: 0.75 } }
layer { name: "conv2" type: "Convolution" bottom: "norm1" top: "conv2"
  convolution_param { num_output: 256 kernel_size: 5 } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer { name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2"
  pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "norm2" type: "LRN" bottom: "pool2" top: "norm2"
  lrn_param { local_size: 5 alpha: %r beta: 0.75 } }
layer { name: "conv3" type: "Convolution" bottom: "norm2" top: "conv3"
  convolution_param { num_output: 384 kernel_size: 3 } }
layer { name: "relu3" type: "ReLU" bottom: "conv3" top: "conv3" }
layer { name: "conv4" type: "Convolution" bottom: "conv3" top: "conv4"
  convolution_param { num_output: 384 kernel_size: 3 } }
layer { name: "relu4" type: "ReLU" bottom: "conv4" top: "conv4" }
layer { name: "conv5" type: "Convolution" bottom: "conv4" top: "conv5"
  convolution_param { num_output: 256 kernel_size: 3 } }
layer { name: "relu5" type: "ReLU" bottom: "conv5" top: "conv5" }
"""
HALF_FIELD = 81          # (163 - 1) / 2


def conv5_at_pixels(net, alphas, data, centres, tmp_path):
    """(len(centres), 256): the conv5 features whose receptive field is
    centred on each (x, y) pixel of ``data``, from crops of the image
    through the unpadded tower (our own geometry, not the export's)."""
    path = tmp_path / 'unpadded.prototxt'
    path.write_text(UNPADDED_TOWER % ((len(centres),) + tuple(alphas)))
    ref = caffe.Net(str(path), caffe.TEST)
    for name in ('conv1', 'conv2', 'conv3', 'conv4', 'conv5'):
        for a, b in zip(ref.params[name], net.params[name]):
            a.data[...] = b.data
    ref.blobs['data'].data[...] = [
        data[0, :, y - HALF_FIELD:y + HALF_FIELD + 1,
             x - HALF_FIELD:x + HALF_FIELD + 1] for x, y in centres]
    return ref.forward()['conv5'].reshape(len(centres), -1).copy()


def test_rois_read_conv5_where_the_16px_mapping_says(exported, tmp_path):
    """An RoI naming conv5 cells x 7..12, y 6..11 by the 1/16 mapping
    (ROIPooling rounds x1 / 16 and x2 / 16) pools exactly the features
    centred on pixels 16 x, 16 y of a real photo: the export's geometry.
    The exports before issue 24 (pool1/pool2 unpadded) read them 12 px down
    and to the right: they fail here, and match the crops moved by 12 px."""
    _, _, out, _ = exported
    netdef = pycaffe.read_netparam(os.path.join(out, 'test.prototxt'))
    alphas = [l.lrn_param.alpha for l in netdef.layer if l.type == 'LRN']
    weights = os.path.join(out, 'init.caffemodel')
    data = image_blob(photos.test_photos()[0], shape=(300, 400))
    cells = [(x, y) for y in range(6, 12) for x in range(7, 13)]
    box = [0, 16 * 7, 16 * 6, 16 * 12, 16 * 11]    # x1 y1 x2 y2, pixels

    def roi_pooled(definition):
        net = pycaffe.net_from_param(definition, 'test', weights)
        pycaffe.set_blobs(net, dict(data=data, rois=np.array(
            [box], np.float32)))
        net.forward(end='roi_pool5')
        pooled = net.blobs['roi_pool5'].data[0]            # (256, 6, 6)
        # one cell per bin, in the order of ``cells``
        np.testing.assert_array_equal(
            pooled, net.blobs['conv5'].data[0][:, 6:12, 7:13])
        return net, pooled.reshape(256, 36).T

    def worst(a, b):
        return float(np.abs(a - b).max() / np.abs(b).max())

    net, pooled = roi_pooled(netdef)
    at_16k = conv5_at_pixels(net, alphas, data,
                             [(16 * x, 16 * y) for x, y in cells], tmp_path)
    assert np.abs(at_16k).max() > 0
    aligned = worst(pooled, at_16k)
    old = type(netdef).FromString(netdef.SerializeToString())
    for layer in old.layer:
        if layer.name in ('pool1', 'pool2'):
            layer.pooling_param.ClearField('pad')
    _, old_pooled = roi_pooled(old)
    before = worst(old_pooled, at_16k)
    moved = worst(old_pooled, conv5_at_pixels(
        net, alphas, data, [(16 * x + 12, 16 * y + 12) for x, y in cells],
        tmp_path))
    print('largest relative difference from the 1/16 cells: %.3g aligned, '
          '%.3g unpadded pools (%.3g against the cells moved by 12 px)'
          % (aligned, before, moved))
    assert aligned < 1e-5
    assert before > 0.1
    assert moved < 1e-5


def old_export(out, dst):
    """A copy of an export as written before issue 24: unpadded pool1/pool2
    and no drop6 (the weights are the same)."""
    import shutil
    shutil.copytree(out, dst)
    for name in ('train.prototxt', 'train_input.prototxt', 'test.prototxt'):
        netdef = pycaffe.read_netparam(os.path.join(dst, name))
        for layer in netdef.layer:
            if layer.name in ('pool1', 'pool2'):
                layer.pooling_param.ClearField('pad')
        kept = [l for l in netdef.layer if l.name != 'drop6']
        del netdef.layer[:]
        netdef.layer.extend(kept)
        fast_rcnn.write_proto(os.path.join(dst, name), netdef,
                              log=lambda m: None)
    return str(dst)


def test_old_exports_refused_for_training_noted_for_testing(
        exported, voc_fixture, tmp_path):
    _, _, out, _ = exported
    old = old_export(out, tmp_path / 'old')
    root, mat = voc_fixture['root'], voc_fixture['trainval_mat']
    r = subprocess.run([sys.executable, os.path.join(
        ROOT, 'tools', 'train_detector.py'), old, '--voc', root,
        '--proposals', mat, '--iters', '1'], capture_output=True, text=True,
        timeout=300)
    assert r.returncode == 1 and r.stdout == '', r.stdout + r.stderr
    assert r.stderr.count('\n') == 1, r.stderr
    assert 'no pool1 pad 1, pool2 pad 1, drop6' in r.stderr
    assert 'export again with tools/export_fast_rcnn.py' in r.stderr
    # a detector trained on an old export still tests on its own definition
    r = subprocess.run([sys.executable, os.path.join(
        ROOT, 'tools', 'test_detector.py'),
        os.path.join(old, 'init.caffemodel'), '--def',
        os.path.join(old, 'test.prototxt'), '--voc', root, '--image-set',
        'test', '--proposals', voc_fixture['test_boxes'], '--out',
        str(tmp_path / 'eval'), '--scale', '240'], capture_output=True,
        text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert 'before the RoI alignment' in r.stdout
    res = json.load(open(tmp_path / 'eval' / 'detection.json'))
    assert res['definition_lacks'] == 'pool1 pad 1, pool2 pad 1, drop6'


def test_head_init_reference(exported, voc_fixture, tmp_path):
    """--head-init reference: the same calibrated trunk and fc7 as the
    default, heads as Fast R-CNN fills them (gaussian 0.01 / 0.001, bias
    0)."""
    bn_def, model, out, _ = exported
    ref = str(tmp_path / 'reference')
    r = subprocess.run([sys.executable,
                        os.path.join(ROOT, 'tools', 'export_fast_rcnn.py'),
                        bn_def, model, ref, '--voc', voc_fixture['root'],
                        '--proposals', voc_fixture['trainval_mat'],
                        '--scale', '240', '--rois-per-image', '16',
                        '--batches', '1', '--tolerance', '0.1',
                        '--head-init', 'reference'],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert 'cls_score reference fill: gaussian std 0.01' in r.stdout
    assert json.load(open(os.path.join(ref, 'export.json')))[
        'head_init'] == 'reference'
    assert json.load(open(os.path.join(out, 'export.json')))[
        'head_init'] == 'data'
    test = os.path.join(out, 'test.prototxt')
    default = caffe.Net(test, os.path.join(out, 'init.caffemodel'),
                        caffe.TEST)
    net = caffe.Net(test, os.path.join(ref, 'init.caffemodel'), caffe.TEST)
    for name in ('conv1', 'conv5', 'conv6', 'fc7'):
        np.testing.assert_array_equal(net.params[name][0].data,
                                      default.params[name][0].data)
    for name, std in (('cls_score', 0.01), ('bbox_pred', 0.001)):
        w, b = net.params[name][0].data, net.params[name][1].data
        assert abs(w.std() / std - 1) < 0.05 and abs(w.mean()) < std / 10
        assert not b.any()
        assert not np.allclose(w, default.params[name][0].data)
