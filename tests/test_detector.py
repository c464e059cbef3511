"""Our Fast R-CNN: sampling, box maths, NMS, VOC07 AP, and the README chain
from a trained snapshot to an mAP table on the photo fixture."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from deepcontext.data import voc
from deepcontext.eval import detection
from deepcontext.transfer import detector

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tool(name, *args):
    r = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', name)] +
                       [str(a) for a in args], capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def test_deltas_round_trip_and_flip():
    rois = np.array([[10, 20, 59, 99], [0, 0, 9, 9]], np.float32)
    gt = np.array([[15, 10, 80, 120], [2, 1, 12, 8]], np.float32)
    d = detector.box_deltas(rois, gt)
    np.testing.assert_allclose(detector.apply_deltas(rois, d), gt, atol=1e-4)
    f = detector.flip_boxes(rois, 100)
    assert f.tolist() == [[40, 20, 89, 99], [90, 0, 99, 9]]


def test_nms_by_hand():
    dets = np.array([[0, 0, 9, 9, .9], [1, 0, 10, 9, .8],    # IoU 0.82
                     [20, 20, 29, 29, .7], [0, 0, 9, 4, .95]])  # IoU .5
    assert detector.nms(dets, 0.3).tolist() == [3, 2]
    assert detector.nms(dets, 0.6).tolist() == [3, 0, 2]


def test_minibatch_fractions_and_targets(voc_fixture):
    recs = voc.load(voc_fixture['root'], 'trainval',
                    voc_fixture['trainval_mat'])
    entries = detector.roidb(recs, flip=True)
    assert len(entries) == 8 and entries[1]['flipped']
    means, stds = detector.target_stats(entries, 21)
    rng = np.random.RandomState(0)
    batch = detector.minibatch(entries[6:8], rng, 21, means, stds,
                               scale=300, rois_per_image=32)
    labels = batch['labels']
    fg = labels > 0
    assert fg.sum() <= 2 * 8 and fg.sum() > 0          # at most 25%
    assert batch['data'].shape[:2] == (2, 3)
    assert set(batch['rois'][:, 0]) == {0, 1}
    # targets only for foreground, in their class's 4 columns
    w = batch['bbox_loss_weights']
    assert (w.sum(1) == 4 * fg).all()
    for i in np.where(fg)[0]:
        c = int(labels[i])
        assert w[i, 4 * c:4 * c + 4].all()
    # every sampled roi of an entry is fg (IoU >= .5) or bg (IoU in [.1, .5))
    e = entries[0]
    rois, lab, _, _ = detector.sample_rois(e, 64, rng, 21, means, stds)
    iou = voc.box_overlaps(rois, recs[0]['boxes']).max(1)
    assert (iou[lab > 0] >= 0.5).all()
    assert ((iou[lab == 0] >= 0.1) & (iou[lab == 0] < 0.5)).all()


def boxes(*rows):
    return np.array(rows, np.float32).reshape(-1, 5)


def test_voc07_ap_by_hand():
    gt = [(np.array([[0, 0, 9, 9], [20, 20, 29, 29]], np.float32),
           np.array([False, True])),
          (np.array([[0, 0, 9, 9]], np.float32), np.array([False]))]
    # image 0: a hit (.9), a duplicate (.8, false positive), a detection of
    # the difficult box (.7, ignored); image 1: a miss (.6), then a hit (.5)
    dets = [boxes([0, 0, 9, 9, .9], [0, 0, 9, 9, .8], [20, 20, 29, 29, .7]),
            boxes([50, 50, 60, 60, .6], [0, 0, 9, 9, .5])]
    r = detection.evaluate_class(dets, gt)
    assert r['npos'] == 2
    # ranked: TP, FP, ignored (counts as neither, as in the devkit), FP, TP
    np.testing.assert_allclose(r['precision'], [1, .5, .5, 1 / 3, .5])
    np.testing.assert_allclose(r['recall'], [.5, .5, .5, .5, 1])
    # recall 0..0.5: best precision 1 (6 points); 0.6..1: 0.5 (5 points)
    assert r['ap'] == pytest.approx((6 * 1 + 5 * .5) / 11)
    # no detections: AP 0; no boxes of the class: no AP, left out of the mean
    assert detection.evaluate_class([boxes(), boxes()], gt)['ap'] == 0
    none = [(np.zeros((0, 4)), np.zeros(0, bool))] * 2
    assert math.isnan(detection.evaluate_class(dets, none)['ap'])


def test_readme_chain_snapshot_to_map(bn_snapshot, voc_fixture, tmp_path):
    """export (fold + calibrate on fixture RoIs) -> 50 training iterations
    -> detection and the mAP table."""
    bn_def, _, model = bn_snapshot
    root, mat = voc_fixture['root'], voc_fixture['trainval_mat']
    export = tmp_path / 'export'
    out = tool('export_fast_rcnn.py', bn_def, model, export, '--voc', root,
               '--proposals', mat, '--scale', 240, '--rois-per-image', 16,
               '--batches', 1, '--tolerance', 0.1)
    assert 'debatchnorm: folded' in out
    cal = json.loads((export / 'export.json').read_text())['calibration']
    assert cal['converged'] and max(cal['function'].values()) < 1e-4
    out = tool('train_detector.py', export, '--voc', root, '--proposals',
               mat, '--iters', 50, '--scale', 240, '--rois-per-image', 8,
               '--snapshot-every', 50, '--display', 10)
    log = json.loads((export / 'train' / 'train_log.json').read_text())
    cls = np.array([r['loss_cls'] for r in log])
    assert len(cls) == 50 and np.isfinite(cls).all()
    assert np.isfinite([r['loss_bbox'] for r in log]).all()
    assert abs(cls[0] / math.log(21) - 1) < 0.3, cls[:5]
    assert cls[-10:].mean() < 0.7 * cls[:5].mean(), cls
    weights = export / 'train' / 'fast_rcnn_iter_50.caffemodel'
    out = tool('test_detector.py', weights, '--def', export / 'test.prototxt',
               '--voc', root, '--image-set', 'test', '--proposals',
               voc_fixture['test_boxes'], '--out', tmp_path / 'eval',
               '--scale', 240)
    assert 'mAP' in out and (tmp_path / 'eval' / 'pr_curves.png').is_file()
    res = json.loads((tmp_path / 'eval' / 'detection.json').read_text())
    assert res['detections'] > 0
    assert res['motorbike']['boxes'] == 1 and res['chair']['ap'] is None
