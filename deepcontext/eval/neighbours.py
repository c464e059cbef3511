"""Nearest-neighbour patches by normalized correlation of their features.

The paper's Figure 4: patches sampled from a set of images, compared by
the normalized correlation of their features at a chosen layer.  Features
come from :func:`deepcontext.eval.features.extract`.
"""
import numpy as np

from deepcontext.data import batches, decode, preprocess, sampling
from deepcontext.eval import features


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
    source = batches.as_image_source(paths)
    patches, owner, corners = [], [], []
    for index in range(len(source)):
        rng, _ = batches.image_rngs(seed, index)
        try:
            im = source.load(index)
        except decode.ImageError as err:
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


def patch_neighbours(net, patches, layers, queries, k=8, groups=None,
                     batch_size=32, spec=features.DEEPCONTEXT_INPUT):
    """Features of patches and the nearest neighbours of the queries.

    Parameters
    ----------
    net : TEST-phase net from :func:`deepcontext.eval.features.load_net`
    patches : (N, 96, 96, 3) uint8, e.g. from :func:`sample_patches`
    layers : list of layer names, e.g. ['pool5', 'fc6']
    queries, k, groups : see :func:`nearest_neighbours`
    spec : the input (``features.InputSpec``)

    Returns
    -------
    dict layer -> (indices (Q, k), scores (Q, k))
    """
    data = np.stack([features.to_input(p, spec) for p in patches])
    feats = features.extract(net, data, layers, batch_size=batch_size)
    return {layer: nearest_neighbours(feats[layer], queries, k, groups)
            for layer in layers}
