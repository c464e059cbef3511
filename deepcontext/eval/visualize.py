"""Visual checks of conv filters (DeepCluster, Caron et al. 2018, Fig. 3-5).

* Top images: for each chosen filter of a layer, the ``k`` (9) images of a
  set whose response to that filter, averaged over positions after the
  ReLU (DeepCluster's ``visu/activ-retrieval.py``; ``op='max'``: the
  strongest position, ours before), is the largest, shown as one montage:
  a row per filter.
* Gradient ascent (Erhan et al. 2009; regularised as Yosinski et al.
  2015): an input that maximises the filter's response at the centre of the
  map, found by gradient steps through pycaffe's backward pass to the
  ``data`` blob, with L2 decay, a Gaussian blur every few steps and small
  pixels clipped to zero (Yosinski et al.'s three regularisers).  The
  inputs live in the network's input space (``features.prep_eval``: mean
  0, RMS about 29) and are shown stretched to 0..255.

With batch-statistics BatchNorm (a random net), the images of a batch
normalise each other: the ascent of one filter sees the others' inputs.
"""
import numpy as np

from deepcontext.data import decode, preprocess
from deepcontext.eval import features
from deepcontext.model import pycaffe

THUMB = 96   # side of the thumbnails in the top-images montage


RANKINGS = ('mean', 'max')


def max_responses(net, paths, layer, side=224, batch_size=16, seed=0,
                  progress=None, op='mean', spec=features.DEEPCONTEXT_INPUT):
    """(N, C): each image's response of each filter of ``layer``.

    ``op``: 'mean' over positions (DeepCluster's ranking) or 'max';
    ``spec``: the input (``features.InputSpec``).
    """
    return features.image_features(net, paths, layer, side, grid=1,
                                   op=op, batch_size=batch_size,
                                   seed=seed, progress=progress, spec=spec)


def top_images(responses, filters, k=9):
    """For each filter, the indices of the ``k`` highest responses.

    Ties are broken by image index (stable sort).

    Returns
    -------
    (F, k) int64, highest first
    """
    responses = np.asarray(responses)
    k = min(k, responses.shape[0])
    return np.stack([np.argsort(-responses[:, f], kind='mergesort')[:k]
                     for f in filters])


def thumbnail(path, side=THUMB):
    """An image resized to side x side (aspect not kept), uint8."""
    im = preprocess.resize_bilinear(decode.load_rgb(path), (side, side))
    return np.clip(np.round(im * 255.0), 0, 255).astype(np.uint8)


def to_display(x):
    """A (3, H, W) network input stretched to (H, W, 3) uint8."""
    x = np.asarray(x, dtype=np.float64).transpose(1, 2, 0)
    lo, hi = x.min(), x.max()
    if hi <= lo:
        return np.full(x.shape, 128, dtype=np.uint8)
    return np.round(255 * (x - lo) / (hi - lo)).astype(np.uint8)


def producing_layer(net, layer):
    """The layer that first writes ``layer``'s top blob.

    ``relu5`` and ``bn5`` work in place on ``conv5``'s blob, so this is
    ``conv5`` for all three: gradient ascent maximises the response before
    BatchNorm and ReLU, since a ReLU at zero passes no gradient.
    """
    top = net.top_names[layer][0]
    return next(name for name in net.layer_dict
                if top in net.top_names[name])


def centre_objective(net, layer, filters):
    """Top diff selecting each input's filter at the centre of the map."""
    top = net.blobs[net.top_names[layer][0]]
    diff = np.zeros(top.data.shape, dtype=np.float32)
    cy, cx = top.data.shape[2] // 2, top.data.shape[3] // 2
    diff[np.arange(len(filters)), filters, cy, cx] = 1.0
    return diff, (cy, cx)


def unit_gradient(net, x, layer, filters):
    """Responses at the map centre and their gradients w.r.t. the inputs.

    Parameters
    ----------
    net : built with ``force_backward`` (``features.load_net``)
    x : (F, 3, H, W) inputs, one per filter
    layer : str; filters : (F,) ints

    Returns
    -------
    responses : (F,) float; gradient : (F, 3, H, W) float32
    """
    pycaffe.set_data(net, np.asarray(x, dtype=np.float32))
    net.forward(end=layer)
    diff, (cy, cx) = centre_objective(net, layer, filters)
    top = net.blobs[net.top_names[layer][0]].data
    responses = top[np.arange(len(filters)), filters, cy, cx].copy()
    return responses, pycaffe.input_gradient(net, layer, diff)


def gradient_ascent(net, layer, filters, side=features.INPUT_SIDE,
                    steps=100, lr=2.0, decay=1e-3, blur_every=4,
                    blur_sigma=0.5, clip_percentile=20, seed=0,
                    progress=None):
    """Inputs that maximise each filter's response at the map centre.

    The response is that of :func:`producing_layer` (before BatchNorm and
    ReLU).

    Each step moves the input by ``lr`` times the gradient scaled to mean
    absolute value 1, then shrinks it by ``decay`` (L2 decay); every
    ``blur_every`` steps it is blurred (Gaussian, ``blur_sigma`` pixels) and
    the pixels whose norm over channels is under the ``clip_percentile``-th
    percentile are set to zero.

    Returns
    -------
    x : (F, 3, side, side) float32, the inputs found
    start, end : (F,) responses at the first and the last step
    layer : str, the layer whose response was maximised
    """
    from scipy import ndimage   # here: the GPU bundle has no scipy
    layer = producing_layer(net, layer)
    filters = np.asarray(filters)
    rng = np.random.RandomState(seed)
    x = rng.randn(len(filters), 3, side, side).astype(np.float32)
    start = None
    for step in range(steps):
        responses, grad = unit_gradient(net, x, layer, filters)
        if start is None:
            start = responses
        scale = np.abs(grad).mean(axis=(1, 2, 3), keepdims=True)
        x = (x + lr * grad / np.maximum(scale, 1e-12)) * (1.0 - decay)
        if blur_every and (step + 1) % blur_every == 0:
            x = ndimage.gaussian_filter(x, (0, 0, blur_sigma, blur_sigma))
            norm = np.sqrt((x ** 2).sum(axis=1, keepdims=True))
            cut = np.percentile(norm, clip_percentile, axis=(1, 2, 3),
                                keepdims=True)
            x = np.where(norm < cut, 0.0, x).astype(np.float32)
        if progress is not None:
            progress(step + 1, steps)
    end, _ = unit_gradient(net, x, layer, filters)
    return x, start, end, layer
