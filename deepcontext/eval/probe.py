"""Linear probe: a linear classifier on frozen features.

Multinomial logistic regression with an L2 penalty, two ways:

* :func:`linear_probe`: L-BFGS on the whole training set in memory, the
  L2 weight chosen on a validation part of the training split; numpy +
  scipy, no scikit-learn.  For small sets: ImageNet's 1.28M x 9,600
  float64 features would be ~98 GB per layer.
* :func:`streaming_probe`: SGD with momentum over features stored in an
  ``.npy`` file (read through a memory map, one minibatch at a time), as
  DeepCluster's ``eval_linear.py`` trains it: lr 0.01 decayed as
  lr / sqrt(1 + lr * wd * t), momentum 0.9, weight decay 1e-4, batch 256.
  Memory: the weights, a minibatch and the per-row index order (8 bytes
  a row), whatever the set size.  Features are standardised with the
  training mean and standard deviation, computed in one streaming pass
  (the references' BatchNorm without scale before the classifier).

:func:`probe_images` runs the L-BFGS probe on whole-image conv features
(:func:`deepcontext.eval.features.image_features`).
"""
import time

import numpy as np

from deepcontext.data.labelled import fixed_split
from deepcontext.eval import features


def _logistic_loss(w, x, onehot, l2):
    """Mean cross-entropy + l2/2 ||W||^2 (bias not penalised), and grad."""
    d, c = x.shape[1], onehot.shape[1]
    w = w.reshape(d + 1, c)
    logp = features.log_softmax(x.dot(w[:-1]) + w[-1])
    n = x.shape[0]
    loss = -np.sum(onehot * logp) / n + .5 * l2 * np.sum(w[:-1] ** 2)
    delta = (np.exp(logp) - onehot) / n
    grad = np.vstack([x.T.dot(delta) + l2 * w[:-1], delta.sum(axis=0)])
    return loss, grad.ravel()


def train_logistic(x, y, num_classes, l2, max_iter=500):
    """Multinomial logistic regression by L-BFGS; return (D + 1, C) W.

    The last row of W is the bias.  x should be standardised.
    """
    from scipy import optimize  # here: the GPU bundle has no scipy
    onehot = np.eye(num_classes)[y]
    w0 = np.zeros((x.shape[1] + 1) * num_classes)
    res = optimize.minimize(_logistic_loss, w0, args=(x, onehot, l2),
                            jac=True, method='L-BFGS-B',
                            options=dict(maxiter=max_iter))
    return res.x.reshape(x.shape[1] + 1, num_classes)


def predict_logistic(w, x):
    return np.argmax(x.dot(w[:-1]) + w[-1], axis=1)


def linear_probe(x_train, y_train, x_test, y_test, num_classes=None,
                 l2_grid=(1e-4, 1e-3, 1e-2, 1e-1, 1.0), val_fraction=0.25,
                 seed=0):
    """Train a linear classifier on frozen features; test accuracy.

    Features are standardised with the training split's mean and standard
    deviation.  The L2 weight is the one of ``l2_grid`` with the best
    accuracy on a stratified validation part of the training split (ties:
    the stronger penalty); the classifier is then retrained on the whole
    training split.

    Returns
    -------
    dict
        ``accuracy`` (test), ``balanced_accuracy`` (mean per-class recall),
        ``majority_baseline`` (test accuracy of always answering the most
        frequent training class), ``l2``, ``val_accuracy`` (per l2),
        ``train``/``test`` sizes and ``dim``.
    """
    x_train = np.asarray(x_train, dtype=np.float64)
    x_test = np.asarray(x_test, dtype=np.float64)
    y_train, y_test = np.asarray(y_train), np.asarray(y_test)
    if num_classes is None:
        num_classes = int(max(y_train.max(), y_test.max())) + 1
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    std[std == 0] = 1.0
    x_train = (x_train - mean) / std
    x_test = (x_test - mean) / std
    fit, val = fixed_split(y_train, val_fraction, seed)
    val_acc = {}
    for l2 in l2_grid:
        w = train_logistic(x_train[fit], y_train[fit], num_classes, l2)
        val_acc[l2] = float(np.mean(predict_logistic(w, x_train[val]) ==
                                    y_train[val]))
    best = max(sorted(l2_grid, reverse=True), key=lambda l2: val_acc[l2])
    w = train_logistic(x_train, y_train, num_classes, best)
    pred = predict_logistic(w, x_test)
    recalls = [np.mean(pred[y_test == c] == c) for c in np.unique(y_test)]
    majority = np.bincount(y_train, minlength=num_classes).argmax()
    return {'accuracy': float(np.mean(pred == y_test)),
            'balanced_accuracy': float(np.mean(recalls)),
            'majority_baseline': float(np.mean(y_test == majority)),
            'l2': best,
            'val_accuracy': {repr(k): v for k, v in val_acc.items()},
            'train': int(len(y_train)), 'test': int(len(y_test)),
            'dim': int(x_train.shape[1])}


def _streamed_moments(x, rows, chunk):
    """Mean and standard deviation (float64) of x[rows], chunk by chunk."""
    total = np.zeros(x.shape[1])
    square = np.zeros(x.shape[1])
    for lo in range(0, len(rows), chunk):
        part = np.asarray(x[np.sort(rows[lo:lo + chunk])], dtype=np.float64)
        total += part.sum(axis=0)
        square += np.square(part).sum(axis=0)
    mean = total / len(rows)
    std = np.sqrt(np.maximum(square / len(rows) - mean ** 2, 0))
    std[std == 0] = 1.0
    return mean, std


def streaming_probe(x, y, train, test, num_classes=None, epochs=90,
                    batch_size=256, lr=0.01, momentum=0.9, weight_decay=1e-4,
                    seed=0, chunk=1024, report=None):
    """Multinomial logistic regression by SGD over memory-mapped features.

    Parameters
    ----------
    x : (N, D) array or ``np.load(path, mmap_mode='r')`` memory map
    y : (N,) int labels
    train, test : index arrays into the rows
    epochs, batch_size, lr, momentum, weight_decay : SGD as DeepCluster's
        eval_linear.py (lr_t = lr / sqrt(1 + lr * weight_decay * t)); the
        weight decay is the L2 weight of :func:`linear_probe`'s objective
        (the bias is not decayed)
    chunk : rows read at once for the moments and the test scores

    Returns
    -------
    dict ``accuracy``, ``balanced_accuracy``, ``majority_baseline``,
    ``loss`` (mean training loss per epoch), ``l2``, ``train``, ``test``,
    ``dim``, ``iterations``
    """
    y = np.asarray(y)
    train, test = np.asarray(train), np.asarray(test)
    if num_classes is None:
        num_classes = int(y.max()) + 1
    mean, std = _streamed_moments(x, train, chunk)
    rng = np.random.RandomState(seed)
    w = np.zeros((x.shape[1] + 1, num_classes))
    velocity = np.zeros_like(w)
    t, losses = 0, []
    for epoch in range(epochs):
        order, total = rng.permutation(train), 0.0
        for lo in range(0, len(order), batch_size):
            idx = np.sort(order[lo:lo + batch_size])
            xb = (np.asarray(x[idx], dtype=np.float64) - mean) / std
            logp = features.log_softmax(xb.dot(w[:-1]) + w[-1])
            onehot = np.eye(num_classes)[y[idx]]
            total -= np.sum(onehot * logp)
            delta = (np.exp(logp) - onehot) / len(idx)
            grad = np.vstack([xb.T.dot(delta) + weight_decay * w[:-1],
                              delta.sum(axis=0)])
            step = lr / np.sqrt(1 + lr * weight_decay * t)
            velocity = momentum * velocity - step * grad
            w += velocity
            t += 1
        losses.append(total / len(order))
        if report is not None:
            report('epoch %d: loss %.4f' % (epoch + 1, losses[-1]))
    pred = np.empty(len(test), dtype=np.int64)
    for lo in range(0, len(test), chunk):
        idx = test[lo:lo + chunk]
        xb = (np.asarray(x[idx], dtype=np.float64) - mean) / std
        pred[lo:lo + chunk] = predict_logistic(w, xb)
    y_test, y_train = y[test], y[train]
    recalls = [np.mean(pred[y_test == c] == c) for c in np.unique(y_test)]
    majority = np.bincount(y_train, minlength=num_classes).argmax()
    return {'accuracy': float(np.mean(pred == y_test)),
            'balanced_accuracy': float(np.mean(recalls)),
            'majority_baseline': float(np.mean(y_test == majority)),
            'loss': losses, 'l2': weight_decay, 'iterations': t,
            'train': int(len(train)), 'test': int(len(test)),
            'dim': int(x.shape[1])}


def probe_images(net, paths, labels, train, test, layer='relu5', side=224,
                 grid=2, seed=0, report=print,
                 spec=features.DEEPCONTEXT_INPUT):
    """Linear probe on whole-image conv features of one net.

    Features: :func:`deepcontext.eval.features.image_features` (images resized
    to ``side``, the conv tower up to ``layer``, max-pooled over a
    ``grid`` x ``grid`` layout).  Classifier: :func:`linear_probe` trained
    on ``train`` and tested on ``test`` (index arrays into ``paths``).

    Returns
    -------
    dict, :func:`linear_probe`'s, plus ``feature_time`` (seconds)
    """
    t0 = time.time()

    def progress(done, total):
        if done == total or done % 256 < 16:
            report('features: %d/%d images' % (done, total))

    x = features.image_features(net, paths, layer, side, grid, seed=seed,
                                progress=progress, spec=spec)
    labels = np.asarray(labels)
    result = linear_probe(x[train], labels[train], x[test], labels[test],
                          seed=seed)
    result['feature_time'] = time.time() - t0
    return result
