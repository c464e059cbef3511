"""PASCAL VOC 2007 detection scores: 11-point AP per class and mAP.

The VOC2007 devkit's rule, in Python: detections of a class, over all
images, are sorted by score (highest first); each is a true positive if
its IoU with a not yet matched ground-truth box of that class in its image
is at least 0.5 (the best-overlapping box is the one considered), a false
positive otherwise, including a second detection of an already matched box
(a duplicate).  A detection whose best box is marked ``difficult`` counts
as neither, and difficult boxes are not counted in the recall.  AP is the
mean over recall levels 0, 0.1, ..., 1 of the highest precision at that
recall or above.  A class with no non-difficult box has no AP (NaN, left
out of the mean); a class with boxes but no detections has AP 0.
"""
import numpy as np
from matplotlib.figure import Figure

from deepcontext.data import voc


def voc07_ap(recall, precision):
    """11-point interpolated average precision."""
    recall, precision = np.asarray(recall), np.asarray(precision)
    ap = 0.0
    for t in np.linspace(0, 1, 11):
        above = precision[recall >= t]
        ap += (above.max() if len(above) else 0.0) / 11
    return float(ap)


def evaluate_class(dets, gts, iou_thresh=0.5):
    """Precision/recall and AP of one class.

    Parameters
    ----------
    dets : list over images of (K, 5) arrays x1 y1 x2 y2 score (0-based)
    gts : list over images of (boxes (G, 4), difficult (G,) bool)

    Returns
    -------
    dict ap, recall, precision (arrays, one entry per detection), npos
    """
    npos = int(sum((~d).sum() for _, d in gts))
    rows = [(i, d) for i, ds in enumerate(dets) for d in ds]
    rows.sort(key=lambda r: -r[1][4])
    matched = [np.zeros(len(b), bool) for b, _ in gts]
    tp = np.zeros(len(rows))
    fp = np.zeros(len(rows))
    for k, (i, d) in enumerate(rows):
        boxes, difficult = gts[i]
        if len(boxes):
            iou = voc.box_overlaps(d[None, :4], boxes)[0]
            j = int(iou.argmax())
            best = iou[j]
        else:
            best = -1.0
        if best >= iou_thresh:
            if difficult[j]:
                continue
            if not matched[i][j]:
                tp[k] = matched[i][j] = 1
            else:
                fp[k] = 1
        else:
            fp[k] = 1
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    recall = tp / npos if npos else np.full(len(tp), np.nan)
    precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    ap = voc07_ap(recall, precision) if npos else float('nan')
    return dict(ap=ap, recall=recall, precision=precision, npos=npos)


def evaluate(all_dets, records, classes=voc.CLASSES):
    """AP of every class (index 1..) and their mean.

    ``all_dets[c][i]``: detections of class c in image i (as from
    deepcontext.transfer.detector.detect); ``records``: from data/voc.load.
    Returns dict class name -> evaluate_class result, and 'mAP'.
    """
    out = {}
    for c in range(1, len(classes)):
        gts = [(r['boxes'][r['classes'] == c], r['difficult'][r['classes'] == c])
               for r in records]
        out[classes[c]] = evaluate_class(all_dets[c], gts)
    aps = [v['ap'] for v in out.values() if not np.isnan(v['ap'])]
    out['mAP'] = float(np.mean(aps)) if aps else float('nan')
    return out


def table(results):
    """The results as text lines: class, AP, positives; then mAP."""
    lines = ['%-12s %7s %6s' % ('class', 'AP', 'boxes')]
    for name, r in results.items():
        if name != 'mAP':
            lines.append('%-12s %7s %6d' % (
                name, 'n/a' if np.isnan(r['ap']) else '%.1f' % (100 * r['ap']),
                r['npos']))
    lines.append('%-12s %7.1f' % ('mAP', 100 * results['mAP']))
    return lines


def pr_figure(results):
    """Precision-recall curves of the classes that have boxes."""
    fig = Figure(figsize=(7, 5))
    ax = fig.add_subplot(1, 1, 1)
    for name, r in results.items():
        if name == 'mAP' or np.isnan(r['ap']) or not len(r['recall']):
            continue
        ax.plot(r['recall'], r['precision'],
                label='%s %.1f' % (name, 100 * r['ap']))
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel('recall')
    ax.set_ylabel('precision')
    ax.set_title('VOC07 11-point AP, mAP %.1f' % (100 * results['mAP']))
    if ax.lines:
        ax.legend(fontsize=7, loc='lower left')
    return fig
