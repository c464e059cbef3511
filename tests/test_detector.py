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


def simple_nms(dets, thresh):
    """Greedy NMS written out: best first, drop IoU > thresh (+1 widths)."""
    kept = []
    for r in sorted(range(len(dets)), key=lambda r: -dets[r][4]):
        a = dets[r]
        def iou(b):
            iw = min(a[2], b[2]) - max(a[0], b[0]) + 1
            ih = min(a[3], b[3]) - max(a[1], b[1]) + 1
            if iw <= 0 or ih <= 0:
                return 0.0
            inter = iw * ih
            area = lambda d: (d[2] - d[0] + 1) * (d[3] - d[1] + 1)  # noqa
            return inter / (area(a) + area(b) - inter)
        if all(iou(dets[k]) <= thresh for k in kept):
            kept.append(r)
    return [dets[r] for r in kept]


def fast_rcnn_rule(images, num_classes, per_set=40, per_image=100,
                   nms_thresh=0.3):
    """fast-rcnn's test_net pruning, from its description: per class, the
    best 100 of an image above the class threshold; the threshold rises
    after each image so that the class's best 40 x images scores seen so
    far stay above or at it; at the end, what is above the final
    threshold, then NMS.  Sorted lists instead of a heap."""
    best = {c: [] for c in range(1, num_classes)}
    thresh = {c: -np.inf for c in best}
    admitted = {}
    for i, (scores, boxes) in enumerate(images):
        for c in best:
            rows = [r for r in range(len(scores)) if scores[r, c] > thresh[c]]
            rows = sorted(rows, key=lambda r: -scores[r, c])[:per_image]
            admitted[c, i] = rows
            best[c] = sorted(best[c] + [float(scores[r, c]) for r in rows])
            if len(best[c]) > per_set * len(images):
                best[c] = best[c][-per_set * len(images):]
                thresh[c] = best[c][0]
    out = {}
    for (c, i), rows in admitted.items():
        scores, boxes = images[i]
        dets = [list(boxes[r, 4 * c:4 * c + 4]) + [scores[r, c]]
                for r in rows if scores[r, c] > thresh[c]]
        out[c, i] = simple_nms(dets, nms_thresh)
    return out, thresh


def py_faster_rcnn_rule(images, num_classes, thresh=0.05, per_image=100,
                        nms_thresh=0.3):
    """py-faster-rcnn's: scores > 0.05, NMS per class, then the image's
    best 100 over all classes (ties at the cut kept)."""
    out = {}
    for i, (scores, boxes) in enumerate(images):
        for c in range(1, num_classes):
            out[c, i] = simple_nms(
                [list(boxes[r, 4 * c:4 * c + 4]) + [scores[r, c]]
                 for r in range(len(scores)) if scores[r, c] > thresh],
                nms_thresh)
        every = sorted(d[4] for c in range(1, num_classes)
                       for d in out[c, i])
        if len(every) > per_image:
            cut = every[-per_image]
            for c in range(1, num_classes):
                out[c, i] = [d for d in out[c, i] if d[4] >= cut]
    return out


def synthetic_scores(num_images=12, num_classes=4, rois=130, seed=0):
    """Per image: softmax scores (rois, classes) whose level varies from
    image to image, and per-class boxes (rois, 4 classes) in clusters, so
    that NMS has work to do."""
    rng = np.random.RandomState(seed)
    images = []
    for i in range(num_images):
        logits = rng.normal(0, 1.5, (rois, num_classes))
        logits[:, 1:] += rng.uniform(-2, 1, num_classes - 1)
        scores = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        centres = rng.uniform(40, 160, (5, 2))[rng.randint(0, 5, rois)]
        boxes = np.zeros((rois, 4 * num_classes))
        for c in range(num_classes):
            xy = centres + rng.normal(0, 8, (rois, 2))
            wh = rng.uniform(20, 60, (rois, 2))
            boxes[:, 4 * c:4 * c + 4] = np.hstack([xy - wh / 2, xy + wh / 2])
        images.append((scores.astype(np.float32), boxes))
    return images


def as_rows(dets):
    return sorted(tuple(np.float32(v) for v in d) for d in dets)


@pytest.mark.parametrize('protocol', detector.PROTOCOLS)
def test_pruning_equals_the_rule_written_out(protocol):
    images = synthetic_scores()
    prune = detector.pruning(protocol, 4, len(images))
    for i, (scores, boxes) in enumerate(images):
        prune.add(i, scores, boxes)
    found = prune.result()
    if protocol == 'fast-rcnn':
        want, thresh = fast_rcnn_rule(images, 4)
        np.testing.assert_allclose(prune.thresholds[1:],
                                   [thresh[c] for c in (1, 2, 3)])
        # the threshold bites: 40 x 12 - 1 per class before NMS (the
        # one at the threshold goes; the scores are distinct) of 1200
        assert all(t > 0 for t in thresh.values())
        assert prune.settings()['per_set'] == 40
    else:
        want = py_faster_rcnn_rule(images, 4)
    kept = 0
    for (c, i), dets in want.items():
        assert as_rows(found[c][i]) == as_rows(dets), (c, i)
        kept += len(dets)
    assert kept > 100
    assert prune.settings()['name'] == protocol


def test_fast_rcnn_keeps_its_share_per_class_before_nms():
    """Without NMS (threshold above any IoU), each class keeps exactly
    40 x images - 1 detections of distinct scores: the set's best 40 per
    image minus the one at the final threshold."""
    images = synthetic_scores()
    prune = detector.FastRcnnPruning(4, len(images), nms_thresh=1.01)
    for i, (scores, boxes) in enumerate(images):
        prune.add(i, scores, boxes)
    found = prune.result()
    for c in (1, 2, 3):
        assert sum(len(d) for d in found[c]) == 40 * len(images) - 1
        assert max(len(d) for d in found[c]) <= 100


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
    assert res['protocol']['name'] == 'fast-rcnn'
    assert res['definition_lacks'] is None
    tool('test_detector.py', weights, '--def', export / 'test.prototxt',
         '--voc', root, '--image-set', 'test', '--proposals',
         voc_fixture['test_boxes'], '--out', tmp_path / 'eval_py',
         '--scale', 240, '--protocol', 'py-faster-rcnn')
    res = json.loads((tmp_path / 'eval_py' / 'detection.json').read_text())
    assert res['protocol'] == dict(name='py-faster-rcnn', score_thresh=0.05,
                                   max_per_image=100, nms=0.3)
    assert 0 < res['detections'] <= 100 * 2
