"""Low-shot linear SVMs on frozen features (Goyal et al. 2019, MMSelfSup).

The protocol of the self-supervision benchmark's VOC07 low-shot table:

* For each k in 1, 2, 4, 8, 16, 32, 64, 96 and each of several random
  draws, every class gets its own training sample: k of its positive
  images and (C - 1) * k of its negative images, drawn without
  replacement; every other training image, and every difficult one, is
  left out of that class's SVM (the benchmark's sampling script).
* One-vs-rest linear SVMs (squared hinge, L2 penalty, as liblinear's
  ``LinearSVC``) on L2-normalised features; the cost is chosen from a grid
  by cross-validated AP on the sample when it has two positives or more
  (folds: min(3, k)), else it is ``DEFAULT_COST``.  Positives weigh
  ``POS_WEIGHT`` times the negatives, as the benchmark's trainer.
* Test: per-class AP on the full test set (difficult ignored), mAP per
  draw, then mean and standard deviation over draws per k.

When a class has fewer than k positives (or (C - 1) * k negatives) in the
training set, all of them are used and the result says so (``capped``).
The SVM is our own: numpy and scipy's L-BFGS, no scikit-learn.
"""
import time

import numpy as np

from deepcontext.eval import metrics, plots

K_VALUES = (1, 2, 4, 8, 16, 32, 64, 96)
COSTS = (0.01, 0.1, 1.0, 10.0, 100.0)
DEFAULT_COST = 1.0
POS_WEIGHT = 2.0


def sample_lowshot(labels, k, rng):
    """Which training images each class's SVM sees, and as what.

    Parameters
    ----------
    labels : (N, C) in {1, -1, 0} (VOC: present, absent, difficult)
    k : int, positives per class
    rng : np.random.RandomState

    Returns
    -------
    targets : (N, C) int, 1 sampled positive, -1 sampled negative, 0 unused
    capped : list of class indices that had fewer than k positives or
        (C - 1) * k negatives
    """
    labels = np.asarray(labels)
    n, c = labels.shape
    targets = np.zeros((n, c), dtype=np.int64)
    capped = []
    for j in range(c):
        for value, count in ((1, k), (-1, (c - 1) * k)):
            pool = np.flatnonzero(labels[:, j] == value)
            if len(pool) < count:
                capped.append(j)
            targets[rng.choice(pool, min(count, len(pool)), replace=False),
                    j] = value
    return targets, sorted(set(capped))


def _svm_loss(w, x, y, cost, weight):
    """0.5 ||w||^2 + cost * sum(weight * max(0, 1 - y f(x))^2), and grad.

    The bias (last entry of w) is not penalised.
    """
    margin = 1.0 - y * (x.dot(w[:-1]) + w[-1])
    active = margin > 0
    m = margin[active]
    wy = weight[active] * y[active]
    loss = .5 * w[:-1].dot(w[:-1]) + cost * np.sum(weight[active] * m * m)
    grad = np.empty_like(w)
    grad[:-1] = w[:-1] - 2 * cost * x[active].T.dot(wy * m)
    grad[-1] = -2 * cost * np.sum(wy * m)
    return loss, grad


def train_svm(x, y, cost=DEFAULT_COST, pos_weight=POS_WEIGHT, max_iter=500):
    """A linear SVM (squared hinge) by L-BFGS.

    Parameters
    ----------
    x : (N, D) float
    y : (N,) in {1, -1}

    Returns
    -------
    (D + 1,) float64, weights then bias
    """
    from scipy import optimize  # here: the GPU bundle has no scipy
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    weight = np.where(y > 0, pos_weight, 1.0)
    res = optimize.minimize(_svm_loss, np.zeros(x.shape[1] + 1),
                            args=(x, y, cost, weight), jac=True,
                            method='L-BFGS-B', options=dict(maxiter=max_iter))
    return res.x


def svm_scores(w, x):
    return np.asarray(x, dtype=np.float64).dot(w[:-1]) + w[-1]


def l2_normalise(x):
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def choose_cost(x, y, costs=COSTS, pos_weight=POS_WEIGHT, seed=0):
    """The cost of ``costs`` with the best cross-validated AP.

    Folds are stratified, min(3, positives); with fewer than two positives
    the answer is ``DEFAULT_COST``.  Ties go to the smaller cost.
    """
    pos, neg = np.flatnonzero(y > 0), np.flatnonzero(y < 0)
    folds = min(3, len(pos), len(neg))
    if folds < 2:
        return DEFAULT_COST
    rng = np.random.RandomState(seed)
    fold = np.empty(len(y), dtype=np.int64)
    for idx in (pos, neg):
        fold[rng.permutation(idx)] = np.arange(len(idx)) % folds
    best, best_ap = DEFAULT_COST, -1.0
    for cost in costs:
        aps = []
        for f in range(folds):
            w = train_svm(x[fold != f], y[fold != f], cost, pos_weight)
            aps.append(metrics.average_precision(
                svm_scores(w, x[fold == f]), y[fold == f], 'voc07'))
        if np.mean(aps) > best_ap:
            best, best_ap = cost, float(np.mean(aps))
    return best


def lowshot_svm(x_train, labels_train, x_test, labels_test, ks=K_VALUES,
                draws=5, seed=0, costs=COSTS, report=print):
    """The low-shot table: mean mAP over draws for each k.

    Parameters
    ----------
    x_train, x_test : (N, D) features (L2-normalised here)
    labels_train, labels_test : (N, C) in {1, -1, 0}
    ks : positives per class
    draws : independent samples per k (draw d of k uses seed + d)

    Returns
    -------
    dict str(k) -> ``map_mean``, ``map_std``, ``maps`` (per draw),
    ``ap_mean`` (per class, over draws), ``capped`` (classes short of
    images in some draw), ``costs`` (chosen per draw and class), ``time``
    """
    x_train, x_test = l2_normalise(x_train), l2_normalise(x_test)
    labels_train = np.asarray(labels_train)
    out = {}
    for k in ks:
        t0 = time.time()
        maps, aps, capped, chosen = [], [], set(), []
        for d in range(draws):
            rng = np.random.RandomState(seed + d)
            targets, short = sample_lowshot(labels_train, k, rng)
            capped.update(short)
            scores = np.zeros(np.shape(labels_test), dtype=np.float64)
            costs_d = []
            for j in range(targets.shape[1]):
                used = np.flatnonzero(targets[:, j] != 0)
                xs, ys = x_train[used], targets[used, j]
                cost = choose_cost(xs, ys, costs, seed=seed + d)
                costs_d.append(cost)
                scores[:, j] = svm_scores(train_svm(xs, ys, cost), x_test)
            class_ap, m = metrics.mean_ap(scores, labels_test, 'voc07')
            maps.append(m)
            aps.append(class_ap)
            chosen.append(costs_d)
        out[str(k)] = {'map_mean': float(np.mean(maps)),
                       'map_std': float(np.std(maps)),
                       'maps': maps,
                       'ap_mean': _class_means(aps),
                       'capped': sorted(int(c) for c in capped),
                       'costs': chosen,
                       'time': time.time() - t0}
        report('k = %d: mAP %.2f +- %.2f over %d draws%s (%.0f s)'
               % (k, 100 * out[str(k)]['map_mean'],
                  100 * out[str(k)]['map_std'], draws,
                  ', capped for %d classes' % len(capped) if capped else '',
                  out[str(k)]['time']))
    return out


def _class_means(aps):
    """Per-class mean AP over draws; None for a class without positives."""
    out = []
    for column in np.array(aps, dtype=float).T:
        valid = column[~np.isnan(column)]
        out.append(float(valid.mean()) if len(valid) else None)
    return out


def table(results, ks=K_VALUES):
    """mAP (%) per k, one row per net, as text lines."""
    lines = ['%-10s' % 'net' + ''.join('%7s' % ('k=%d' % k) for k in ks)]
    for tag, res in results.items():
        lines.append('%-10s' % tag + ''.join(
            '%7.1f' % (100 * res[str(k)]['map_mean']) for k in ks))
    return lines


def figure(results, ks=K_VALUES, chance=None, title=''):
    """mAP against k (log scale), one line per net with +-1 std band.

    Returns
    -------
    matplotlib.figure.Figure
    """
    series = {tag: ([100 * res[str(k)]['map_mean'] for k in ks],
                    [100 * res[str(k)]['map_std'] for k in ks])
              for tag, res in results.items()}
    hlines = [] if chance is None else [
        (100 * chance, 'random scores (about)', dict(color='grey', ls=':'))]
    return plots.curves_figure(
        series, list(ks), [str(k) for k in ks], 'positives per class (k)',
        'mAP (%)', title or 'low-shot linear SVMs', hlines, logx=True)
