"""VOC07 classification by fine-tuning (deepcontext/eval/voc_classify.py,
tools/voc_classify.py) on the hand-labelled VOC layout of embedded photos
(tests/labelled_fixtures.py)."""
import json

import numpy as np
import pytest

from conftest import run_tool
from deepcontext.eval import features, voc_classify
from deepcontext.model import pycaffe
from labelled_fixtures import voc_folder


def test_targets_ignore_difficult():
    assert voc_classify.caffe_targets([[1, -1, 0]]).tolist() == \
        [[1.0, 0.0, -1.0]]


def test_ten_crops_by_hand():
    image = np.arange(5 * 5 * 3, dtype=np.uint8).reshape(5, 5, 3) * 3
    crops = voc_classify.ten_crops(image, 3)
    assert crops.shape == (10, 3, 3, 3)
    # crop 0 is the top-left corner, crop 5 the same flipped left-right.
    expect = features.prep_eval(image[:3, :3])
    assert np.allclose(crops[0], expect)
    assert np.allclose(crops[5], expect[:, :, ::-1])
    # crop 4 is the centre.
    assert np.allclose(crops[4], features.prep_eval(image[1:4, 1:4]))


def test_ignored_labels_give_no_loss_and_no_gradient():
    proto = voc_classify.classifier_net(2, 96, 3, fc_dims=(8, 8))
    net = pycaffe.net_from_param(proto, 'train')
    data = np.random.RandomState(0).randn(2, 3, 96, 96).astype(np.float32)
    # VOC labels: image 0 has class 0, not class 1, class 2 difficult;
    # image 1 has only difficult labels.
    targets = voc_classify.caffe_targets([[1, -1, 0], [0, 0, 0]])
    pycaffe.set_blobs(net, {'data': data * 30, 'label': targets})
    net.forward()
    z = net.blobs['fc8'].data.astype(np.float64)
    # Independent: mean over the 2 valid targets of the sigmoid
    # cross-entropy, log(1 + exp(-z)) for t = 1, log(1 + exp(z)) for t = 0.
    expect = (np.log1p(np.exp(-z[0, 0])) + np.log1p(np.exp(z[0, 1]))) / 2
    assert float(net.blobs['loss'].data) == pytest.approx(expect, rel=1e-4)
    net.backward()
    diff = net.blobs['fc8'].diff
    assert diff[0, 2] == 0 and np.all(diff[1] == 0) and diff[0, 0] != 0


def test_train_from_freezes_the_layers_before():
    proto = voc_classify.classifier_net(2, 96, 20, train_from='fc6')
    frozen = {l.name for l in proto.layer
              if l.param and all(p.lr_mult == 0 for p in l.param)
              and l.type != 'BatchNorm'}
    assert frozen == {'conv1', 'conv2', 'conv3', 'conv4', 'conv5'}
    with pytest.raises(ValueError, match='train-from'):
        voc_classify.classifier_net(2, 96, 20, train_from='pool5')


def test_voc_classify_tool(bn_snapshot, tmp_path):
    year = voc_folder(tmp_path / 'voc')
    out = tmp_path / 'out'
    run_tool('voc_classify.py', '--weights', bn_snapshot[2], '--random',
             '--voc', year, '--iters', '6', '--batch-size', '4',
             '--side', '96', '--resize', '112', '--fc-dims', '16', '16',
             '--train-from', 'conv3', '--out', out)
    res = json.loads((out / 'voc_classify.json').read_text())
    assert (out / 'voc_classify.png').stat().st_size > 1000
    for tag in ('trained', 'random'):
        r = res['results'][tag]
        assert 0 <= r['map'] <= 1 and len(r['loss']) == 6
        assert r['ap'][res['class_names'].index('cat')] is None
    # 96x96 crops: pool5 is 3x3 as in the patch net, so fc6 fits only if
    # its width does (16 here: not copied).
    assert res['results']['trained']['copied'][:5] == [
        'conv1', 'conv2', 'conv3', 'bn3', 'conv4']
