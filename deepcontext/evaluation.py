"""Does the representation learn anything?  Three measurements.

* Pretext accuracy (:func:`pretext_accuracy`): the 8-way relative-position
  task on held-out images, sampled exactly as training samples (same image
  resizing, grids, jitter, pairs and ``prep_patch`` preprocessing, with
  fixed seeds), in TEST phase.  Chance is 1/8 = 12.5%; the paper reports
  about 40% on ImageNet val.  The labels are not uniform, though: a grid of
  c x r patches has r(c-1) pairs of each horizontal label, c(r-1) of each
  vertical one and only (c-1)(r-1) of each diagonal one, so always
  answering one non-diagonal label scores 15% on 3x3 grids; the result
  reports this majority baseline too.  Each image has its own seeded generators (from
  the seed and its position in the list), so its patches do not depend on
  the images after it.
* Nearest neighbours (:func:`sample_patches`, :func:`nearest_neighbours`):
  patches from a set of images, compared by normalized correlation of
  their features (the paper's Figure 4).
* Linear probe (:func:`linear_probe`): multinomial logistic regression
  with an L2 penalty on frozen features, weight chosen on a validation part
  of the training split; numpy + scipy's L-BFGS, no scikit-learn.

Features come from :func:`deepcontext.features.extract`.
"""
import random
import time

import numpy as np

from deepcontext import features, preprocess, sampling
from deepcontext import images as dc_images
from deepcontext.labelled_data import fixed_split

NUM_CLASSES = 8
CHANCE = 1.0 / NUM_CLASSES
# Seed of image i's generators: seed * IMAGE_SEED_STRIDE + i (integers, so
# the same in every process; see STYLE.md on hash()).
IMAGE_SEED_STRIDE = 1000003


def image_rngs(seed, index):
    """(random.Random, RandomState) of image ``index`` for a run ``seed``."""
    s = int(seed) * IMAGE_SEED_STRIDE + int(index)
    return random.Random(s), np.random.RandomState(s % (2 ** 32))


def pretext_batches(paths, seed=0, batch_size=256,
                    grids_per_image=sampling.GRIDS_PER_IMAGE,
                    projection=False, report=print):
    """Batches of the pretext task over a finite, ordered list of images.

    As the training loader: each image is resized to U{150,000..450,000}
    pixels and skipped unless larger than 247 px a side; ``grids_per_image``
    grids are drawn from it; a batch closes before reaching ``batch_size``
    patches; patches go through ``preprocess.prep_patch``.

    Yields
    ------
    data : (N, 3, 96, 96) float32
    pairs : (P, 2) int64
    labels : (P,) int64
    images : list of int, indices into ``paths`` of the images in the batch
    """
    asm = sampling.BatchAssembler(batch_size)
    data, in_batch = [], []
    min_side = sampling.min_image_side()
    for index, path in enumerate(paths):
        rng, nprng = image_rngs(seed, index)
        target = rng.randint(*preprocess.TARGET_PIXELS)
        try:
            im = dc_images.load_rgb(path)
        except dc_images.ImageError as err:
            report('skipping image %d: %s' % (index, err))
            continue
        im = preprocess.resize_to_pixels(im, target)
        if im.shape[0] <= min_side or im.shape[1] <= min_side:
            report('skipping image %d: %dx%d after resizing, need > %d'
                   % ((index,) + im.shape[:2] + (min_side,)))
            continue
        for _ in range(grids_per_image):
            start, cols, rows, closes = asm.plan_grid(im.shape, rng)
            if closes:
                pairs, labels = asm.take()
                yield np.stack(data), pairs, labels, in_batch
                data, in_batch = [], []
            for corner in asm.add(im.shape, start, cols, rows, rng):
                data.append(preprocess.prep_patch(
                    preprocess.crop(im, corner), rng, nprng, projection))
        in_batch.append(index)
    if data:
        pairs, labels = asm.take()
        yield np.stack(data), pairs, labels, in_batch


def log_softmax(scores):
    """Row-wise log softmax of (P, C) scores, in float64."""
    s = np.asarray(scores, dtype=np.float64)
    s = s - s.max(axis=1, keepdims=True)
    return s - np.log(np.exp(s).sum(axis=1, keepdims=True))


def pretext_accuracy(net, paths, seed=0, batch_size=256,
                     grids_per_image=sampling.GRIDS_PER_IMAGE,
                     projection=False, report=print):
    """Relative-position accuracy of a net on a list of images.

    Parameters
    ----------
    net : TEST-phase net from :func:`deepcontext.features.load_net`
    paths : list of image paths, none of them seen in training
    seed : int, fixes every patch and preprocessing draw
    batch_size : int, patches per forward pass (a bound, as in training)
    report : callable(str) for progress lines and skipped images

    Returns
    -------
    dict
        ``accuracy``, ``loss_per_pair`` (mean cross-entropy), ``chance``
        (1/8), ``majority_baseline`` (accuracy of always answering the most
        frequent label), ``label_counts``, ``pairs``, ``patches``,
        ``images`` (used), ``images_skipped``, ``per_class_accuracy`` (8
        floats, label order of ``sampling.pos2lbl``) and ``confusion``
        (8x8 counts, rows true).
    """
    confusion = np.zeros((NUM_CLASSES, NUM_CLASSES), dtype=np.int64)
    loss_sum, patches, used = 0.0, 0, set()
    for data, pairs, labels, imgs in pretext_batches(
            paths, seed, batch_size, grids_per_image, projection, report):
        scores = features.extract(net, data, ['fc9'], pairs=pairs,
                                  labels=labels)['fc9']
        logp = log_softmax(scores)
        loss_sum -= float(logp[np.arange(len(labels)), labels].sum())
        np.add.at(confusion, (labels, logp.argmax(axis=1)), 1)
        patches += data.shape[0]
        used.update(imgs)
        total = int(confusion.sum())
        report('%d/%d images, %d pairs, accuracy so far %.4f'
               % (len(used), len(paths), total,
                  np.trace(confusion) / max(total, 1)))
    total = int(confusion.sum())
    if total == 0:
        raise ValueError('no usable image among %d' % len(paths))
    per_class = confusion.diagonal() / np.maximum(confusion.sum(axis=1), 1)
    counts = confusion.sum(axis=1)
    return {'accuracy': float(np.trace(confusion)) / total,
            'loss_per_pair': loss_sum / total,
            'chance': CHANCE,
            'majority_baseline': float(counts.max()) / total,
            'label_counts': counts.tolist(),
            'pairs': total,
            'patches': patches,
            'images': len(used),
            'images_skipped': len(paths) - len(used),
            'per_class_accuracy': [float(a) for a in per_class],
            'confusion': confusion.tolist()}


def sample_patches(paths, per_image=4, seed=0, pixels=300000,
                   report=print):
    """Patches for nearest neighbours: grid patches of each image.

    Each image is resized to about ``pixels`` pixels; one grid is sampled
    as in training (random offset and jitter) and ``per_image`` of its
    patches are kept at random.

    Returns
    -------
    patches : (N, 96, 96, 3) uint8
    image_index : (N,) int64, index into ``paths`` of each patch's image
    corners : (N, 2) int64, (x, y) of each patch in the resized image
    """
    patches, owner, corners = [], [], []
    for index, path in enumerate(paths):
        rng, _ = image_rngs(seed, index)
        try:
            im = dc_images.load_rgb(path)
        except dc_images.ImageError as err:
            report('skipping image %d: %s' % (index, err))
            continue
        im = preprocess.resize_to_pixels(im, pixels)
        if min(im.shape[:2]) < sampling.PATCH_SIZE:
            report('skipping image %d: smaller than a patch' % index)
            continue
        found, _, _, _ = sampling.sample_grid(im.shape, rng)
        if not found:   # an image too small for a grid: its centre
            found = [((im.shape[1] - sampling.PATCH_SIZE) // 2,
                      (im.shape[0] - sampling.PATCH_SIZE) // 2)]
        for corner in rng.sample(found, min(per_image, len(found))):
            patch = preprocess.crop(im, corner)
            patches.append(np.clip(np.round(patch), 0, 255).astype(np.uint8))
            owner.append(index)
            corners.append(corner)
    if not patches:
        raise ValueError('no usable image among %d' % len(paths))
    return (np.stack(patches), np.array(owner, dtype=np.int64),
            np.array(corners, dtype=np.int64))


def normalized_correlation(a, b):
    """Normalized correlation between every row of ``a`` and of ``b``.

    Each feature vector is flattened, its mean removed and scaled to unit
    length; the result is their dot product, in [-1, 1] (a constant vector
    correlates 0 with everything).

    Returns
    -------
    (len(a), len(b)) float64
    """
    def unit(x):
        x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
        x = x - x.mean(axis=1, keepdims=True)
        norm = np.linalg.norm(x, axis=1, keepdims=True)
        return x / np.where(norm > 0, norm, 1.0)
    return unit(a).dot(unit(b).T)


def nearest_neighbours(feats, queries, k=8, groups=None):
    """The k most correlated patches to each query patch.

    Parameters
    ----------
    feats : (N, ...) features of all patches
    queries : sequence of int, indices of the query patches
    k : int
    groups : (N,) ints, optional; patches in the query's group (its image)
        are not neighbours.  The query itself never is.

    Returns
    -------
    indices : (Q, k) int64 (fewer columns if fewer candidates)
    scores : (Q, k) float64 correlations, best first
    """
    queries = np.asarray(queries, dtype=np.int64)
    sim = normalized_correlation(feats[queries], feats)
    sim[np.arange(len(queries)), queries] = -np.inf
    if groups is not None:
        groups = np.asarray(groups)
        sim[groups[queries][:, None] == groups[None, :]] = -np.inf
    k = min(k, int(np.isfinite(sim).sum(axis=1).min()))
    idx = np.argsort(-sim, axis=1, kind='stable')[:, :k]
    return idx, np.take_along_axis(sim, idx, axis=1)


def _logistic_loss(w, x, onehot, l2):
    """Mean cross-entropy + l2/2 ||W||^2 (bias not penalised), and grad."""
    d, c = x.shape[1], onehot.shape[1]
    w = w.reshape(d + 1, c)
    logp = log_softmax(x.dot(w[:-1]) + w[-1])
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


def patch_neighbours(net, patches, layers, queries, k=8, groups=None,
                     batch_size=32):
    """Features of patches and the nearest neighbours of the queries.

    Parameters
    ----------
    net : TEST-phase net from :func:`deepcontext.features.load_net`
    patches : (N, 96, 96, 3) uint8, e.g. from :func:`sample_patches`
    layers : list of layer names, e.g. ['pool5', 'fc6']
    queries, k, groups : see :func:`nearest_neighbours`

    Returns
    -------
    dict layer -> (indices (Q, k), scores (Q, k))
    """
    data = np.stack([features.prep_eval(p) for p in patches])
    feats = features.extract(net, data, layers, batch_size=batch_size)
    return {layer: nearest_neighbours(feats[layer], queries, k, groups)
            for layer in layers}


def probe_images(net, paths, labels, train, test, layer='relu5', side=224,
                 grid=2, seed=0, report=print):
    """Linear probe on whole-image conv features of one net.

    Features: :func:`deepcontext.features.image_features` (images resized
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
                                progress=progress)
    labels = np.asarray(labels)
    result = linear_probe(x[train], labels[train], x[test], labels[test],
                          seed=seed)
    result['feature_time'] = time.time() - t0
    return result
