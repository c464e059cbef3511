"""Fast R-CNN (Girshick, ICCV 2015), written for Python 3 and our Caffe.

The algorithm of rbgirshick/fast-rcnn with its CaffeNet settings, fed from
pycaffe instead of a Python data layer: the exported train net's inputs
become Input layers (:func:`input_twin`) and every minibatch is written
through ``deepcontext.model.pycaffe.set_blobs``.

Training minibatches (``minibatch``): 2 images, each scaled so its shorter
side is 600 px (longer side at most 1000), 64 RoIs per image drawn from the
image's proposals plus its ground-truth boxes: up to 25% foreground (IoU
>= 0.5 with a ground-truth box, labelled with that box's class), the rest
background (IoU in [0.1, 0.5), label 0); every image also appears
horizontally flipped.  RoIs with IoU >= 0.5 regress to their box:
``dx = (gx - x) / w, dy, dw = log(gw / w), dh`` (centres and inclusive
widths), normalised per class by the training set's means and stds; the
snapshots hold un-normalised ``bbox_pred`` weights, so testing needs no
statistics.

Testing (:func:`im_detect`, :func:`detect`): the image at the same scale,
all its proposals, class probabilities and regressed boxes per class, then
one of two pruning protocols before the AP:

- ``'fast-rcnn'`` (the default; rbgirshick/fast-rcnn's ``test_net``, what
  the paper's detection numbers were made with): per class and image the
  100 best-scoring boxes above the class's threshold; the threshold is
  adaptive, raised after each image so that the class keeps its 40 x
  (number of images) best scores over the set so far; after the last image
  every class keeps the detections above its final threshold, then NMS at
  IoU 0.3 per class and image (:class:`FastRcnnPruning`).
- ``'py-faster-rcnn'`` (rbgirshick/py-faster-rcnn's ``test_net``): per
  class scores above 0.05, NMS at IoU 0.3, then at most 100 detections per
  image over all classes (:class:`PyFasterRcnnPruning`).
"""
import heapq
import json
import os
import time

import numpy as np
from caffe.proto import caffe_pb2

from deepcontext.data import decode, preprocess, voc
from deepcontext.model import pycaffe

PIXEL_MEANS_BGR = np.array([102.9801, 115.9465, 122.7717], np.float32)
SCALE = 600              # shorter side, training and testing
MAX_SIZE = 1000          # longer side at most
IMS_PER_BATCH = 2
ROIS_PER_IMAGE = 64
FG_FRACTION = 0.25
FG_THRESH = 0.5          # foreground: IoU >= 0.5
BG_THRESH = (0.1, 0.5)   # background: IoU in [0.1, 0.5)
BBOX_THRESH = 0.5        # regression targets for IoU >= 0.5
NMS_THRESH = 0.3
SCORE_THRESH = 0.05      # py-faster-rcnn: fixed score threshold
MAX_PER_IMAGE = 100      # py-faster-rcnn: over all classes, after NMS
PER_SET = 40             # fast-rcnn: per image and class over the set
PER_CLASS_IMAGE = 100    # fast-rcnn: per class and image, before NMS
PROTOCOLS = ('fast-rcnn', 'py-faster-rcnn')
INPUTS = ('data', 'rois', 'labels', 'bbox_targets', 'bbox_loss_weights')


def image_scale(height, width, scale=SCALE, max_size=MAX_SIZE):
    factor = scale / min(height, width)
    if round(factor * max(height, width)) > max_size:
        factor = max_size / max(height, width)
    return factor


def prep_image(im, scale=SCALE, max_size=MAX_SIZE, flip=False):
    """An RGB uint8 image as Fast R-CNN's input: resized (bilinear), BGR
    minus the pixel means, (3, H, W) float32; and the factor used."""
    if flip:
        im = im[:, ::-1]
    f = image_scale(im.shape[0], im.shape[1], scale, max_size)
    shape = (int(round(im.shape[0] * f)), int(round(im.shape[1] * f)))
    out = preprocess.resize_bilinear(im, shape, scale=1.0, dtype=np.float32)
    return (out[:, :, ::-1] - PIXEL_MEANS_BGR).transpose(2, 0, 1), f


def stack_images(images):
    """(N, 3, Hmax, Wmax), zero-padded at the bottom and right."""
    h = max(im.shape[1] for im in images)
    w = max(im.shape[2] for im in images)
    out = np.zeros((len(images), 3, h, w), np.float32)
    for i, im in enumerate(images):
        out[i, :, :im.shape[1], :im.shape[2]] = im
    return out


def box_deltas(rois, gt):
    """Regression targets (dx, dy, dw, dh) from rois to gt boxes."""
    w = rois[:, 2] - rois[:, 0] + 1.0
    h = rois[:, 3] - rois[:, 1] + 1.0
    gw = gt[:, 2] - gt[:, 0] + 1.0
    gh = gt[:, 3] - gt[:, 1] + 1.0
    return np.stack([(gt[:, 0] + 0.5 * gw - rois[:, 0] - 0.5 * w) / w,
                     (gt[:, 1] + 0.5 * gh - rois[:, 1] - 0.5 * h) / h,
                     np.log(gw / w), np.log(gh / h)], 1).astype(np.float32)


def apply_deltas(boxes, deltas):
    """Boxes (R, 4) moved by deltas (R, 4k): (R, 4k) boxes."""
    boxes = boxes.astype(np.float64)
    w = boxes[:, 2:3] - boxes[:, 0:1] + 1.0
    h = boxes[:, 3:4] - boxes[:, 1:2] + 1.0
    cx = boxes[:, 0:1] + 0.5 * w + deltas[:, 0::4] * w
    cy = boxes[:, 1:2] + 0.5 * h + deltas[:, 1::4] * h
    pw = np.exp(deltas[:, 2::4]) * w
    ph = np.exp(deltas[:, 3::4]) * h
    out = np.zeros(deltas.shape, np.float64)
    out[:, 0::4] = cx - 0.5 * pw
    out[:, 1::4] = cy - 0.5 * ph
    out[:, 2::4] = cx + 0.5 * pw - 1
    out[:, 3::4] = cy + 0.5 * ph - 1
    return out


def flip_boxes(boxes, width):
    out = boxes.copy()
    out[:, 0] = width - boxes[:, 2] - 1
    out[:, 2] = width - boxes[:, 0] - 1
    return out


def roidb(records, flip=True):
    """Training entries: per image (and its mirror) all RoIs (ground truth
    first, then proposals), each RoI's best IoU, its class, its
    regression target."""
    entries = []
    for rec in records:
        for flipped in ((False, True) if flip else (False,)):
            gt, props = rec['boxes'], rec['proposals']
            if flipped:
                gt = flip_boxes(gt, rec['width'])
                props = flip_boxes(props, rec['width'])
            rois = np.vstack([gt, props]).astype(np.float32)
            if len(gt):
                iou = voc.box_overlaps(rois, gt)
                best = iou.argmax(1)
                overlap = iou.max(1)
                classes = rec['classes'][best]
                targets = box_deltas(rois, gt[best])
            else:
                overlap = np.zeros(len(rois))
                classes = np.zeros(len(rois), np.int32)
                targets = np.zeros((len(rois), 4), np.float32)
            entries.append(dict(image=rec['image'], flipped=flipped,
                                rois=rois, overlap=overlap, classes=classes,
                                targets=targets))
    return entries


def target_stats(entries, num_classes):
    """Per-class means and stds (num_classes, 4) of the regression targets
    of RoIs with IoU >= BBOX_THRESH; 0 and 1 where a class has none."""
    means = np.zeros((num_classes, 4))
    stds = np.ones((num_classes, 4))
    for c in range(1, num_classes):
        t = [e['targets'][(e['classes'] == c) &
                          (e['overlap'] >= BBOX_THRESH)] for e in entries]
        t = np.concatenate(t) if t else np.zeros((0, 4))
        if len(t):
            means[c] = t.mean(0)
            stds[c] = np.maximum(t.std(0), 1e-6) if len(t) > 1 else 1.0
    return means.astype(np.float32), stds.astype(np.float32)


def sample_rois(entry, rois_per_image, rng, num_classes, means, stds):
    """Fast R-CNN's RoI sample of one image: (rois, labels, targets,
    weights), the targets normalised and spread to 4 num_classes columns."""
    fg = np.where(entry['overlap'] >= FG_THRESH)[0]
    bg = np.where((entry['overlap'] >= BG_THRESH[0]) &
                  (entry['overlap'] < BG_THRESH[1]))[0]
    n_fg = min(int(round(FG_FRACTION * rois_per_image)), len(fg))
    if n_fg:
        fg = rng.choice(fg, n_fg, replace=False)
    n_bg = min(rois_per_image - n_fg, len(bg))
    if n_bg:
        bg = rng.choice(bg, n_bg, replace=False)
    keep = np.concatenate([fg[:n_fg], bg[:n_bg]]).astype(int)
    labels = entry['classes'][keep].astype(np.float32)
    labels[n_fg:] = 0
    targets = np.zeros((len(keep), 4 * num_classes), np.float32)
    weights = np.zeros_like(targets)
    for i in range(n_fg):
        c = int(labels[i])
        if entry['overlap'][keep[i]] >= BBOX_THRESH:
            targets[i, 4 * c:4 * c + 4] = \
                (entry['targets'][keep[i]] - means[c]) / stds[c]
            weights[i, 4 * c:4 * c + 4] = 1
    return entry['rois'][keep], labels, targets, weights


def minibatch(entries, rng, num_classes, means, stds, scale=SCALE,
              max_size=MAX_SIZE, rois_per_image=ROIS_PER_IMAGE):
    """The five input blobs of the train net for these entries."""
    images, parts = [], []
    for n, e in enumerate(entries):
        im, f = prep_image(decode.load_rgb(e['image']), scale, max_size,
                           e['flipped'])
        images.append(im)
        rois, labels, targets, weights = sample_rois(
            e, rois_per_image, rng, num_classes, means, stds)
        idx = np.full((len(rois), 1), n, np.float32)
        parts.append((np.hstack([idx, rois * f]), labels, targets, weights))
    rois, labels, targets, weights = (np.concatenate(p) for p in zip(*parts))
    return dict(data=stack_images(images), rois=rois.astype(np.float32),
                labels=labels, bbox_targets=targets,
                bbox_loss_weights=weights)


def input_twin(netdef):
    """A copy of a Fast R-CNN train net whose Python data layer is replaced
    by Input layers (data, rois, labels, bbox_targets, bbox_loss_weights),
    for feeding from pycaffe."""
    out = caffe_pb2.NetParameter()
    out.CopyFrom(netdef)
    del out.layer[:]
    num_classes = [l.inner_product_param.num_output for l in netdef.layer
                   if l.name == 'cls_score'][0]
    shapes = dict(data=[1, 3, 227, 227], rois=[1, 5], labels=[1],
                  bbox_targets=[1, 4 * num_classes],
                  bbox_loss_weights=[1, 4 * num_classes])
    for layer in netdef.layer:
        if layer.type == 'Python':
            for top in layer.top:
                inp = out.layer.add(name=top, type='Input')
                inp.top.append(top)
                inp.input_param.shape.add(dim=shapes[top])
        else:
            out.layer.add().CopyFrom(layer)
    return out


class DetectorTrainer:
    """Fast R-CNN training on pycaffe: owns the solver, the minibatches and
    the un-normalised snapshots.

    Parameters
    ----------
    solver_param : caffe_pb2.SolverParameter whose train_net is an
        :func:`input_twin` (written by :func:`write_training_files`)
    weights : initial caffemodel
    entries : :func:`roidb` of the training images
    """

    def __init__(self, solver_param_path, weights, entries, num_classes,
                 seed=0, scale=SCALE, max_size=MAX_SIZE,
                 rois_per_image=ROIS_PER_IMAGE, log=print):
        import caffe
        self.solver = caffe.get_solver(solver_param_path)
        self.solver.net.copy_from(weights)
        self.entries = entries
        self.num_classes = num_classes
        self.means, self.stds = target_stats(entries, num_classes)
        self.rng = np.random.RandomState(seed)
        self.order, self.cursor = [], 0
        self.scale, self.max_size = scale, max_size
        self.rois_per_image = rois_per_image
        self.log = log
        self.history = []

    def next_entries(self):
        """IMS_PER_BATCH entries, in a fresh random order each pass."""
        picks = []
        while len(picks) < IMS_PER_BATCH:
            if self.cursor >= len(self.order):
                self.order = list(self.rng.permutation(len(self.entries)))
                self.cursor = 0
            picks.append(self.entries[self.order[self.cursor]])
            self.cursor += 1
        return picks

    def step(self):
        t = time.time()
        batch = minibatch(self.next_entries(), self.rng, self.num_classes,
                          self.means, self.stds, self.scale, self.max_size,
                          self.rois_per_image)
        pycaffe.set_blobs(self.solver.net, batch)
        self.solver.step(1)
        net = self.solver.net
        row = dict(iter=self.solver.iter,
                   loss_cls=float(net.blobs['loss_cls'].data),
                   loss_bbox=float(net.blobs['loss_bbox'].data),
                   fg=int((batch['labels'] > 0).sum()),
                   rois=len(batch['labels']), time=time.time() - t)
        self.history.append(row)
        return row

    def snapshot(self, path):
        """Save with bbox_pred un-normalised (targets back in pixels/log
        units), so the caffemodel detects on its own."""
        p = self.solver.net.params['bbox_pred']
        w, b = p[0].data.copy(), p[1].data.copy()
        std, mean = self.stds.ravel(), self.means.ravel()
        p[0].data[...] = w * std[:, None]
        p[1].data[...] = b * std + mean
        self.solver.net.save(path)
        p[0].data[...], p[1].data[...] = w, b
        with open(os.path.splitext(path)[0] + '.json', 'w') as f:
            json.dump(dict(iter=self.solver.iter, means=self.means.tolist(),
                           stds=self.stds.tolist()), f)
        return path


def im_detect(net, im, boxes, scale=SCALE, max_size=MAX_SIZE):
    """Scores (R, C) and regressed boxes (R, 4C) of an RGB image's boxes."""
    data, f = prep_image(im, scale, max_size)
    rois = np.hstack([np.zeros((len(boxes), 1)), boxes * f])
    pycaffe.set_blobs(net, dict(data=data[None],
                                rois=rois.astype(np.float32)))
    out = net.forward()
    scores = out['cls_prob'].reshape(len(boxes), -1).copy()
    deltas = net.blobs['bbox_pred'].data.reshape(len(boxes), -1)
    pred = apply_deltas(boxes, deltas)
    return scores, voc.clip_boxes(pred, im.shape[1], im.shape[0])


def nms(dets, thresh):
    """Greedy non-maximum suppression: indices of dets (x1 y1 x2 y2 score)
    kept, best first; a box goes when its IoU with a kept one is > thresh."""
    order = np.argsort(-dets[:, 4], kind='stable')
    keep = []
    while len(order):
        i = order[0]
        keep.append(i)
        iou = voc.box_overlaps(dets[i:i + 1, :4], dets[order[1:], :4])[0]
        order = order[1:][iou <= thresh]
    return np.array(keep, int)


def _empty(num_classes, num_images):
    return [[np.zeros((0, 5), np.float32) for _ in range(num_images)]
            for _ in range(num_classes)]


def _dets(boxes, scores, keep, c):
    return np.hstack([boxes[keep, 4 * c:4 * c + 4],
                      scores[keep, c:c + 1]]).astype(np.float32)


class FastRcnnPruning:
    """fast-rcnn's test-time pruning (see the module docstring).

    Feed every image in order with :meth:`add`, then :meth:`result`.
    ``thresholds`` holds each class's adaptive threshold (-inf until the
    class has more than ``per_set`` x images scores).
    """
    name = 'fast-rcnn'

    def __init__(self, num_classes, num_images, per_set=PER_SET,
                 per_image=PER_CLASS_IMAGE, nms_thresh=NMS_THRESH):
        self.max_per_set = per_set * num_images
        self.per_set, self.per_image = per_set, per_image
        self.nms_thresh = nms_thresh
        self.thresholds = np.full(num_classes, -np.inf)
        self.heaps = [[] for _ in range(num_classes)]
        self.found = _empty(num_classes, num_images)

    def add(self, i, scores, boxes):
        """Image i's scores (R, C) and boxes (R, 4C)."""
        for c in range(1, len(self.heaps)):
            keep = np.where(scores[:, c] > self.thresholds[c])[0]
            keep = keep[np.argsort(-scores[keep, c], kind='stable')]
            keep = keep[:self.per_image]
            heap = self.heaps[c]
            for v in scores[keep, c]:
                heapq.heappush(heap, float(v))
            if len(heap) > self.max_per_set:
                while len(heap) > self.max_per_set:
                    heapq.heappop(heap)
                self.thresholds[c] = heap[0]
            self.found[c][i] = _dets(boxes, scores, keep, c)

    def result(self):
        """found[c][i]: (K, 5) x1 y1 x2 y2 score, above the class's final
        threshold, after NMS."""
        for c in range(1, len(self.found)):
            for i, d in enumerate(self.found[c]):
                d = d[d[:, 4] > self.thresholds[c]]
                self.found[c][i] = d[nms(d, self.nms_thresh)] if len(d) else d
        return self.found

    def settings(self, classes=None):
        names = classes or [str(c) for c in range(len(self.heaps))]
        return dict(name=self.name, per_set=self.per_set,
                    per_class_image=self.per_image, nms=self.nms_thresh,
                    thresholds={names[c]: (None if np.isinf(t) else float(t))
                                for c, t in enumerate(self.thresholds)
                                if c > 0})


class PyFasterRcnnPruning:
    """py-faster-rcnn's test-time pruning (see the module docstring); the
    same interface as :class:`FastRcnnPruning`."""
    name = 'py-faster-rcnn'

    def __init__(self, num_classes, num_images, thresh=SCORE_THRESH,
                 max_per_image=MAX_PER_IMAGE, nms_thresh=NMS_THRESH):
        self.thresh, self.max_per_image = thresh, max_per_image
        self.nms_thresh = nms_thresh
        self.found = _empty(num_classes, num_images)

    def add(self, i, scores, boxes):
        found = self.found
        for c in range(1, len(found)):
            d = _dets(boxes, scores, np.where(scores[:, c] > self.thresh)[0],
                      c)
            found[c][i] = d[nms(d, self.nms_thresh)] if len(d) else d
        everything = np.concatenate([found[c][i][:, 4]
                                     for c in range(1, len(found))])
        if len(everything) > self.max_per_image:
            cut = np.sort(everything)[-self.max_per_image]
            for c in range(1, len(found)):
                found[c][i] = found[c][i][found[c][i][:, 4] >= cut]

    def result(self):
        return self.found

    def settings(self, classes=None):
        return dict(name=self.name, score_thresh=self.thresh,
                    max_per_image=self.max_per_image, nms=self.nms_thresh)


def pruning(protocol, num_classes, num_images):
    """The pruning object of a protocol named in :data:`PROTOCOLS`."""
    kinds = {k.name: k for k in (FastRcnnPruning, PyFasterRcnnPruning)}
    if protocol not in kinds:
        raise ValueError('protocol must be one of %s, not %r'
                         % ('|'.join(PROTOCOLS), protocol))
    return kinds[protocol](num_classes, num_images)


def detect(net, records, num_classes, protocol='fast-rcnn', scale=SCALE,
           max_size=MAX_SIZE, log=print):
    """Detections of every image under a test protocol.

    Returns (found, pruner): found[c][i] is a (K, 5) array x1 y1 x2 y2
    score (0-based) of class c in image i; ``pruner.settings()`` says what
    was used.
    """
    prune = pruning(protocol, num_classes, len(records))
    t0 = time.time()
    for i, rec in enumerate(records):
        if len(rec['proposals']):
            scores, boxes = im_detect(net, decode.load_rgb(rec['image']),
                                      rec['proposals'], scale, max_size)
            prune.add(i, scores, boxes)
        if (i + 1) % 100 == 0 or i + 1 == len(records):
            log('im_detect: %d/%d images, %.3f s/image'
                % (i + 1, len(records), (time.time() - t0) / (i + 1)))
    return prune.result(), prune
