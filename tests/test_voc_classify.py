"""VOC07 classification by fine-tuning (deepcontext/eval/voc_classify.py,
tools/voc_classify.py) on the hand-labelled VOC layout of embedded photos
(tests/labelled_fixtures.py)."""
import importlib.util
import json
import os
import sys

import caffe
import numpy as np
import pytest
from google.protobuf import text_format

from conftest import ROOT, run_tool
from deepcontext.data import voc_labels
from deepcontext.eval import features, voc_classify
from deepcontext.model import pycaffe
from labelled_fixtures import voc_folder


def test_targets_ignore_difficult():
    assert voc_classify.caffe_targets([[1, -1, 0]]).tolist() == \
        [[1.0, 0.0, -1.0]]


def test_ten_crops_by_hand():
    image = np.arange(5 * 5 * 3, dtype=np.uint8).reshape(5, 5, 3) * 3
    crops = voc_classify.ten_crops(image, 3)
    assert len(crops) == 10 and crops[0].shape == (3, 3, 3)
    # crop 0 is the top-left corner, crop 5 the same flipped left-right,
    # crop 4 the centre.
    assert np.array_equal(crops[0], image[:3, :3])
    assert np.array_equal(crops[5], image[:3, :3][:, ::-1])
    assert np.array_equal(crops[4], image[1:4, 1:4])


def test_scale_crops_stay_in_the_image_and_in_range():
    rng = np.random.RandomState(0)
    image = np.random.RandomState(1).randint(0, 256, (300, 500, 3))
    for _ in range(20):
        crop = voc_classify.scale_crop(image.astype(np.uint8), 227, rng)
        assert crop.shape == (227, 227, 3)
        assert crop.min() >= 0 and crop.max() <= 255
    # A small image gives a window of its whole short side.
    small = np.full((100, 150, 3), 7, np.uint8)
    assert np.allclose(voc_classify.scale_crop(small, 227, rng), 7)


def test_loss_is_the_sum_over_classes_divided_by_the_batch():
    proto = voc_classify.classifier_net(2, 96, 3, fc_dims=(8, 8))
    net = pycaffe.net_from_param(proto, 'train')
    data = np.random.RandomState(0).randn(2, 3, 96, 96).astype(np.float32)
    # VOC labels: image 0 has class 0, not class 1, class 2 difficult;
    # image 1 has class 2, class 0 difficult, not class 1: 4 valid targets
    # in a batch of 2 (normalization VALID divided by 4).
    targets = voc_classify.caffe_targets([[1, -1, 0], [0, -1, 1]])
    pycaffe.set_blobs(net, {'data': data * 30, 'label': targets})
    net.forward()
    z = net.blobs['fc8'].data.astype(np.float64)
    # Independent: log(1 + exp(-z)) for t = 1, log(1 + exp(z)) for t = 0,
    # summed over the valid targets, divided by the 2 images.
    expect = (np.log1p(np.exp(-z[0, 0])) + np.log1p(np.exp(z[0, 1]))
              + np.log1p(np.exp(z[1, 1])) + np.log1p(np.exp(-z[1, 2]))) / 2
    assert float(net.blobs['loss'].data) == pytest.approx(expect, rel=1e-4)
    net.backward()
    diff = net.blobs['fc8'].diff
    # d loss / d z = (sigmoid(z) - t) / batch; none for ignored targets.
    sig = 1 / (1 + np.exp(-z))
    assert diff[0, 0] == pytest.approx((sig[0, 0] - 1) / 2, rel=1e-4)
    assert diff[0, 2] == 0 and diff[1, 0] == 0


def test_train_from_freezes_the_layers_before():
    proto = voc_classify.classifier_net(2, 96, 20, train_from='fc6')
    frozen = {l.name for l in proto.layer
              if l.param and all(p.lr_mult == 0 for p in l.param)
              and l.type != 'BatchNorm'}
    assert frozen == {'conv1', 'conv2', 'conv3', 'conv4', 'conv5'}
    assert all(l.batch_norm_param.use_global_stats for l in proto.layer
               if l.type == 'BatchNorm')
    # The reference's biases learn at twice the rate; fc8 N(0, 0.01), 0.1.
    layer = {l.name: l for l in proto.layer}
    assert [p.lr_mult for p in layer['fc7'].param] == [1, 2]
    fc8 = layer['fc8'].inner_product_param
    assert fc8.weight_filler.std == pytest.approx(0.01)
    assert fc8.bias_filler.value == pytest.approx(0.1)
    with pytest.raises(ValueError, match='train-from'):
        voc_classify.classifier_net(2, 96, 20, train_from='pool5')


def _bn_after_steps(bn_snapshot, tmp_path, train_from):
    """bn3..bn5 of the snapshot, and the net after 3 SGD steps."""
    pretrained = features.load_net(bn_snapshot[2], bn_snapshot[0])[0]
    proto = voc_classify.classifier_net(4, 96, 3, (8, 8), train_from)
    net_path = str(tmp_path / ('net_%s.prototxt' % train_from))
    with open(net_path, 'w') as f:
        f.write(str(proto))
    solver_path = str(tmp_path / ('solver_%s.prototxt' % train_from))
    with open(solver_path, 'w') as f:
        f.write(text_format.MessageToString(
            voc_classify.solver_param(net_path, 1e-3, 3)))
    solver = caffe.get_solver(solver_path)
    voc_classify.copy_pretrained(pretrained, solver.net)
    rs = np.random.RandomState(0)
    for _ in range(3):
        labels = rs.choice([-1, 1], (4, 3))
        pycaffe.set_blobs(solver.net, {
            'data': rs.randn(4, 3, 96, 96).astype(np.float32) * 30,
            'label': voc_classify.caffe_targets(labels)})
        solver.step(1)
    before = {name: [np.array(b.data) for b in pretrained.params[name]]
              for name in ('bn3', 'bn4', 'bn5')}
    return before, solver.net


def test_frozen_batchnorm_statistics_unchanged_after_fine_tuning(
        bn_snapshot, tmp_path):
    before, net = _bn_after_steps(bn_snapshot, tmp_path, 'fc6')
    for name, blobs in before.items():
        for a, b in zip(blobs, net.params[name]):
            assert np.array_equal(a, b.data), name
    # Trained from conv1, the same steps rewrite them (Caffe's default).
    before, net = _bn_after_steps(bn_snapshot, tmp_path, 'conv1')
    assert not np.array_equal(before['bn5'][0], net.params['bn5'][0].data)


def test_a_random_net_gets_statistics_before_freezing(tmp_path):
    pretrained, mode = features.load_net(None)
    assert mode == 'batch' and not features.has_bn_statistics(pretrained)
    year = voc_folder(tmp_path / 'voc')
    paths = voc_labels.classification_set(year, 'trainval')[0]
    images = voc_classify.TrainingImages(paths[:6], 'scale', 96)
    voc_classify.fill_bn_statistics(
        pretrained, voc_classify.classifier_net(4, 96, 20, (8, 8)), images,
        3, np.random.RandomState(0))
    # bn3 .. bn5 (the classifier's; bn6 and bn7 are the pair head's).
    for name in ('bn3', 'bn4', 'bn5'):
        assert pretrained.params[name][2].data[0] > 0
        assert np.any(pretrained.params[name][1].data > 0)


def test_tie_break_of_the_reference_ap():
    # train_cls.py subtracts 1e-5 * label: a tie ranks the negative first.
    scores = np.array([[0.9], [0.5], [0.5], [0.1]])
    labels = np.array([[1], [1], [-1], [-1]])
    aps, m = voc_classify.class_aps(scores, labels, 'reference')
    assert m == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert voc_classify.class_aps(scores, labels, 'deepcontext')[1] == 1.0


@pytest.mark.parametrize('protocol', ['reference', 'deepcontext'])
def test_voc_classify_tool(bn_snapshot, tmp_path, protocol):
    year = voc_folder(tmp_path / 'voc')
    out = tmp_path / 'out'
    log = run_tool('voc_classify.py', '--weights', bn_snapshot[2],
                   '--random', '--voc', year, '--iters', '6',
                   '--batch-size', '4', '--side', '96', '--resize', '112',
                   '--fc-dims', '16', '16', '--train-from', 'conv4',
                   '--protocol', protocol, '--out', out)
    res = json.loads((out / 'voc_classify.json').read_text())
    assert (out / 'voc_classify.png').stat().st_size > 1000
    for tag in ('trained', 'random'):
        r = res['results'][tag]
        assert 0 <= r['map'] <= 1 and len(r['loss']) == 6
        assert r['ap'][res['class_names'].index('cat')] is None
    # conv1 .. conv3 and bn3 are frozen; the random net had no statistics.
    assert res['results']['random']['bn_warmup'] > 0
    assert res['results']['trained']['bn_warmup'] == 0
    assert 'frozen bn3: statistics from' in log
    # 96x96 crops: pool5 is 3x3 as in the patch net, so fc6 fits only if
    # its width does (16 here: not copied).
    assert res['results']['trained']['copied'][:5] == [
        'conv1', 'conv2', 'conv3', 'bn3', 'conv4']


def test_usage_line_tells_the_defaults(monkeypatch):
    # Defect 2: the usage line said 80,000 beside a default of 1,000 x 10.
    path = os.path.join(ROOT, 'tools', 'voc_classify.py')
    spec = importlib.util.spec_from_file_location('voc_classify_tool', path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    monkeypatch.setattr(sys, 'argv', ['voc_classify.py', '--out', 'x'])
    args = tool.parse_args()
    # train_cls.py: -nit 80000, -bs 16, -lr 0.001.
    assert (args.iters, args.batch_size, args.base_lr) == (80000, 16, 1e-3)
    assert args.protocol == 'reference'
    assert '[--iters 80000]' in tool.__doc__
    assert '[--batch-size 16]' in tool.__doc__
