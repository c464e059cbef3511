"""Classification metrics of the transfer protocols: top-1, AP and mAP.

Labels of multi-label sets follow the PASCAL VOC devkit: ``1`` present,
``-1`` absent, ``0`` difficult (ignored: neither a hit nor a false alarm).

Two definitions of average precision:

* ``'voc07'``: the VOC 2007 devkit's 11-point interpolated AP, the mean
  over recall thresholds 0, 0.1, ..., 1 of the best precision at a recall
  at least that high (``detection.voc07_ap``, shared with detection).  VOC07 classification (Kraehenbuehl et al.) and the
  low-shot SVM tables use it.
* ``'all'``: VOC 2010 onwards, the area under the precision-recall curve
  made monotone (each precision replaced by the best at a higher recall).

Ties in scores are broken by position (a stable sort of the scores from
highest to lowest), as the devkit's ``sort`` does.
"""
import numpy as np

from deepcontext.eval import detection

AP_MODES = ('voc07', 'all')


def top1(predicted, truth):
    """Fraction of predictions equal to the truth."""
    predicted, truth = np.asarray(predicted), np.asarray(truth)
    if predicted.shape != truth.shape or not len(truth):
        raise ValueError('need two equal, non-empty label arrays')
    return float(np.mean(predicted == truth))


def precision_recall(scores, labels):
    """Precision and recall at each rank, difficult items dropped.

    Parameters
    ----------
    scores : (N,) float
    labels : (N,) in {1, -1, 0}

    Returns
    -------
    precision, recall : (M,) float64, M = number of non-difficult items
    """
    scores, labels = np.asarray(scores, float), np.asarray(labels)
    keep = labels != 0
    scores, labels = scores[keep], labels[keep]
    order = np.argsort(-scores, kind='mergesort')
    hit = labels[order] > 0
    tp, fp = np.cumsum(hit), np.cumsum(~hit)
    npos = max(int(hit.sum()), 1)
    return tp / np.maximum(tp + fp, 1), tp / float(npos)


def average_precision(scores, labels, mode='voc07'):
    """AP of one class (NaN if it has no positive).

    Parameters
    ----------
    scores : (N,) float
    labels : (N,) in {1, -1, 0}
    mode : 'voc07' (11-point) or 'all' (area under the monotone curve)
    """
    if mode not in AP_MODES:
        raise ValueError('mode must be voc07 or all, not %r' % mode)
    if not np.any(np.asarray(labels) > 0):
        return float('nan')
    prec, rec = precision_recall(scores, labels)
    if mode == 'voc07':
        # Eleven additions of p / 11 can exceed 1 by a rounding error.
        return min(1.0, detection.voc07_ap(rec, prec))
    mrec = np.concatenate([[0.0], rec, [1.0]])
    mpre = np.concatenate([[0.0], prec, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    step = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[step + 1] - mrec[step]) * mpre[step + 1]))


def mean_ap(scores, labels, mode='voc07'):
    """Per-class AP and their mean over classes with a positive.

    Parameters
    ----------
    scores, labels : (N, C)

    Returns
    -------
    aps : list of C floats (NaN for a class without positives)
    mAP : float, the mean of the non-NaN APs
    """
    scores, labels = np.asarray(scores), np.asarray(labels)
    aps = [average_precision(scores[:, c], labels[:, c], mode)
           for c in range(labels.shape[1])]
    valid = [a for a in aps if not np.isnan(a)]
    return aps, float(np.mean(valid)) if valid else float('nan')


def one_hot_targets(labels, num_classes):
    """Single-label classes as VOC-style multi-label targets (1 / -1)."""
    out = -np.ones((len(labels), num_classes), dtype=np.int64)
    out[np.arange(len(labels)), np.asarray(labels)] = 1
    return out
