"""Classification metrics of the transfer protocols: top-1, AP and mAP.

Labels of multi-label sets follow the PASCAL VOC devkit: ``1`` present,
``-1`` absent, ``0`` difficult (ignored: neither a hit nor a false alarm).

Three definitions of average precision, each the one of a reference:

* ``'voc07'``: the VOC 2007 devkit's 11-point interpolated AP, the mean
  over recall thresholds 0, 0.1, ..., 1 of the best precision at a recall
  at least that high (``detection.voc07_ap``, shared with detection).
  Fast R-CNN detection on VOC07 uses it.
* ``'all'``: VOC 2010 onwards, the area under the precision-recall curve
  made monotone (each precision replaced by the best at a higher recall).
  The low-shot SVM benchmark uses it (fair_self_supervision_benchmark,
  ``tools/svm/svm_helper.py``: ``calculate_ap``; MMSelfSup the same).
* ``'sklearn'``: scikit-learn's ``average_precision_score``, the sum over
  distinct score thresholds of the recall gained times the precision
  there, not interpolated; tied scores form one threshold.  VOC07
  classification uses it (philkr/voc-classification, ``train_cls.py``;
  DeepCluster's ``eval_voc_classif.py``).

Ties in scores: ``'voc07'`` and ``'all'`` break them by position (a stable
sort of the scores from highest to lowest), as the devkit's ``sort`` does;
``'sklearn'`` groups them.  ``train_cls.py`` also subtracts 1e-5 from the
positives' scores before sklearn's AP, so that an exact tie ranks the
negative first (``voc_classify`` does so; this module does not).
"""
import numpy as np

from deepcontext.eval import detection

AP_MODES = ('voc07', 'all', 'sklearn')


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
    mode : 'voc07' (11-point), 'all' (area under the monotone curve) or
        'sklearn' (not interpolated, ties grouped); see the module doc
    """
    if mode not in AP_MODES:
        raise ValueError('mode must be one of %s, not %r'
                         % (', '.join(AP_MODES), mode))
    if not np.any(np.asarray(labels) > 0):
        return float('nan')
    if mode == 'sklearn':
        return _threshold_ap(scores, labels)
    prec, rec = precision_recall(scores, labels)
    if mode == 'voc07':
        # Eleven additions of p / 11 can exceed 1 by a rounding error.
        return min(1.0, detection.voc07_ap(rec, prec))
    mrec = np.concatenate([[0.0], rec, [1.0]])
    mpre = np.concatenate([[0.0], prec, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    step = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[step + 1] - mrec[step]) * mpre[step + 1]))


def _threshold_ap(scores, labels):
    """sum_t (R_t - R_{t-1}) P_t over distinct thresholds t, difficult out."""
    scores, labels = np.asarray(scores, float), np.asarray(labels)
    keep = labels != 0
    scores, hit = scores[keep], labels[keep] > 0
    order = np.argsort(-scores, kind='mergesort')
    scores, hit = scores[order], hit[order]
    # The last item of each run of equal scores closes a threshold.
    last = np.r_[np.flatnonzero(np.diff(scores) != 0), len(scores) - 1]
    tp = np.cumsum(hit)[last]
    prec = tp / (last + 1.0)
    rec = tp / float(hit.sum())
    return float(np.sum(np.diff(np.r_[0.0, rec]) * prec))


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
