"""Pretext accuracy: the 8-way relative-position task on held-out images.

Patches are sampled exactly as training samples them (same image resizing,
grids, jitter, pairs and ``prep_patch`` preprocessing: the one pipeline of
``data.batches``, with fixed seeds per image) and classified in TEST
phase.  Chance is 1/8 = 12.5%; the paper reports about 40% on ImageNet val.
The labels are not uniform, though: a grid of c x r patches has r(c-1)
pairs of each horizontal label, c(r-1) of each vertical one and only
(c-1)(r-1) of each diagonal one, so always answering one non-diagonal label
scores 15% on 3x3 grids; the result reports this majority baseline too.
Each image has its own seeded generators (from the seed and its position in
the list), so its patches do not depend on the images after it.
"""
import numpy as np

from deepcontext.data import batches, sampling
from deepcontext.eval import features

NUM_CLASSES = sampling.NUM_LABELS
CHANCE = 1.0 / NUM_CLASSES


def pretext_accuracy(net, paths, seed=0, batch_size=256,
                     grids_per_image=sampling.GRIDS_PER_IMAGE,
                     projection=False, report=print):
    """Relative-position accuracy of a net on a list of images.

    Parameters
    ----------
    net : TEST-phase net from :func:`deepcontext.eval.features.load_net`
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
    for data, pairs, labels, imgs in batches.pretext_batches(
            paths, seed, batch_size, grids_per_image, projection, report):
        scores = features.extract(net, data, ['fc9'], pairs=pairs,
                                  labels=labels)['fc9']
        logp = features.log_softmax(scores)
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
