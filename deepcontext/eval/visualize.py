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

* Gradient ascent as DeepCluster's ``visu/gradient_ascent.py``
  (:func:`gradient_ascent_reference`, the tool's default): 224 px pixels
  from N(128, 20) noise, through the net's input (``features.to_input``),
  maximising the log softmax of the layer's channel means at the filter.

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


ASCENTS = ('reference', 'deepcontext')
# DeepCluster's visu/gradient_ascent.py defaults.
REFERENCE_ASCENT = dict(side=224, steps=1000, lr=3.0, wd=1e-5, blur_every=5,
                        blur_sigma=0.3, noise_mean=128.0, noise_std=20.0)


def pixel_jacobian(spec):
    """(3, 3) matrix J with net input channels = J @ pixel RGB channels,
    before the mean: the linear part of ``features.to_input`` for the
    'reference' / 'caffe-bgr' inputs."""
    if spec.preprocess == 'deepcontext':
        raise ValueError('the reference ascent works on pixels through a '
                         'linear input: --preprocess reference or caffe-bgr '
                         '(with deepcontext input: --ascent deepcontext)')
    order = [2, 1, 0] if spec.channels == 'bgr' else [0, 1, 2]
    return np.eye(3)[order] * spec.scale


def channel_mean_objective(net, layer, filters):
    """Top diff of d(log softmax of the channel means)[filter] / d(top).

    DeepCluster's objective: minus the cross-entropy of the layer's
    channel means (over positions) against the filter's index.  Returns
    the diff and each input's mean response of its filter.
    """
    top = net.blobs[net.top_names[layer][0]].data
    n, c, h, w = top.shape
    means = top.mean(axis=(2, 3)).astype(np.float64)
    p = np.exp(means - means.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    d = -p
    d[np.arange(n), filters] += 1.0
    diff = np.broadcast_to((d / (h * w))[:, :, None, None], top.shape)
    return diff.astype(np.float32), means[np.arange(n), filters]


def gradient_ascent_reference(net, layer, filters, spec, side=224,
                              steps=1000, lr=3.0, wd=1e-5, blur_every=5,
                              blur_sigma=0.3, noise_mean=128.0,
                              noise_std=20.0, seed=0, progress=None):
    """DeepCluster's gradient ascent (``visu/gradient_ascent.py``).

    Pixels start as N(128, 20) noise (RGB, 0-255 scale) and go into the
    net through ``spec`` (``features.to_input``, linear).  Each step
    maximises the log softmax of the layer's channel means at the filter
    (after ReLU; for a filter whose mean is 0 there, the producing conv
    layer's output, as the reference does), minus ``wd`` ||x||^2; the
    gradient with respect to the pixels is divided by its L2 norm (per
    image) and added times ``lr``; at steps 0, 5, 10, ... the pixels are
    blurred (Gaussian, ``blur_sigma``, spatial axes).

    Returns
    -------
    x : (F, side, side, 3) float32 pixels
    start, end : (F,) the filters' mean responses, first and last step
    layers : list of str, the layer each filter's objective was read at
    """
    from scipy import ndimage   # here: the GPU bundle has no scipy
    jac = pixel_jacobian(spec)
    mean_in = features.to_input(np.zeros((1, 1, 3)), spec)[:, 0, 0]
    filters = np.asarray(filters)
    rng = np.random.RandomState(seed)
    x = (rng.randn(len(filters), side, side, 3) * noise_std
         + noise_mean).astype(np.float32)
    conv = producing_layer(net, layer)

    def step_gradient(x):
        # Net input: J @ pixel + the input of a zero pixel (the mean part).
        data = np.einsum('ij,nhwj->nihw', jac, x) + mean_in[None, :, None,
                                                            None]
        pycaffe.set_data(net, data.astype(np.float32))
        net.forward(end=layer)
        diff, resp = channel_mean_objective(net, layer, filters)
        dead = resp == 0
        grad = pycaffe.input_gradient(net, layer, diff)
        used = [layer] * len(filters)
        if dead.any():
            net.forward(end=conv)
            cdiff, cresp = channel_mean_objective(net, conv, filters)
            cgrad = pycaffe.input_gradient(net, conv, cdiff)
            grad[dead] = cgrad[dead]
            resp = np.where(dead, cresp, resp)
            used = [conv if d else layer for d in dead]
        # Back to pixels (J^T), and minus the weight decay's gradient.
        g = np.einsum('ij,nihw->nhwj', jac, grad) - 2.0 * wd * x
        return resp, g, used

    start = None
    for it in range(steps):
        resp, g, used = step_gradient(x)
        if start is None:
            start = resp
        norm = np.sqrt((g.astype(np.float64) ** 2).sum(axis=(1, 2, 3)))
        x = (x + lr * g / (norm[:, None, None, None] + 1e-8)).astype(
            np.float32)
        if blur_every and it % blur_every == 0:
            x = ndimage.gaussian_filter(
                x, (0, blur_sigma, blur_sigma, 0)).astype(np.float32)
        if progress is not None:
            progress(it + 1, steps)
    end, _, used = step_gradient(x)
    return x, start if start is not None else end, end, used


def to_display_reference(x):
    """(H, W, 3) pixels as DeepCluster shows them: centred, std 0.1,
    + 0.5, clipped to 0..1, times 255 (uint8)."""
    x = np.asarray(x, dtype=np.float64)
    x = (x - x.mean()) / (x.std() + 1e-5) * 0.1 + 0.5
    return np.clip(np.clip(x, 0, 1) * 255, 0, 255).astype(np.uint8)
