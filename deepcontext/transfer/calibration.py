"""Data-dependent initialisation and rescaling (Krähenbühl et al., ICLR 2016).

The context-prediction network leaves training with badly scaled layers:
without BatchNorm (after debatchnorm) some layers' weights are far larger
than others', so fine-tuning with one learning rate moves some layers
hardly at all and others too much.  Two steps fix that on real data:

1. Within-layer initialisation, for layers whose weights are all zero (not
   transferred): draw weights (gaussian, or PCA / k-means of the layer's real
   inputs), then scale each output channel to unit variance and centre it
   with the bias, measured on real images.
2. Between-layer calibration: back-propagate random gaussian gradients from
   the top, measure each layer's ratio ``sqrt(mean grad^2 / mean W^2)`` (how
   fast it would learn), and scale each layer k's weights by
   ``a_k = sqrt(r_k / r_mean)`` (r_mean the geometric mean) and its bias by
   ``a_1 ... a_k``.  The a_k multiply to 1, so a ReLU network computes the
   same function; gradients scale by 1/a_k, so every ratio moves to r_mean.
   LRN is not scale-invariant, hence a few rounds until all ratios agree
   within 1%.

Functions work on a pycaffe Net in place, loaded with :func:`load_net` so
that gradients reach every layer.
"""
import numpy as np

from deepcontext.data import batches, decode, preprocess, sampling
from deepcontext.model import pycaffe


def load_net(definition, weights=None):
    """A TEST-phase Net that back-propagates to every weight layer.

    A definition without a loss layer (a deploy net) gets force_backward;
    one with a loss already back-propagates (and force_backward would push
    gradients into index inputs such as BatchReindex's, which Caffe
    refuses).
    """
    netdef = pycaffe.read_netparam(definition)
    if not any(l.type.endswith('Loss') for l in netdef.layer):
        netdef.force_backward = True
    return pycaffe.net_from_param(netdef, 'test', weights)


def param_layers(net):
    """Layers with weights, in forward order."""
    return [name for name in net.params if len(net.params[name]) >= 1]


def top_of(net, layer):
    return net.top_names[layer][0]


def bottom_of(net, layer):
    return net.bottom_names[layer][0]


def channel_stats(x):
    """Per-channel mean and std of a (N, C, ...) array."""
    axes = (0,) + tuple(range(2, x.ndim))
    x = x.astype(np.float64)
    return x.mean(axis=axes), x.std(axis=axes)


def _patches_of(net, layer, batch, count, rng):
    """Random input windows of a layer, as rows (for PCA / k-means)."""
    pycaffe.set_blobs(net, batch)
    net.forward(end=layer)
    x = net.blobs[bottom_of(net, layer)].data
    w = net.params[layer][0].data
    if w.ndim == 2:
        rows = x.reshape(x.shape[0], -1)
    else:
        kh, kw = w.shape[2:]
        n, c, h, wd = x.shape
        ys = rng.randint(0, max(1, h - kh + 1), count)
        xs = rng.randint(0, max(1, wd - kw + 1), count)
        ns = rng.randint(0, n, count)
        rows = np.stack([x[i, :, y:y + kh, z:z + kw].ravel()
                         for i, y, z in zip(ns, ys, xs)])
    return rows.astype(np.float64)


def _draw_weights(net, layer, batch, method, rng):
    shape = net.params[layer][0].data.shape
    nout, fan_in = shape[0], int(np.prod(shape[1:]))
    if method == 'gaussian':
        return rng.randn(*shape)
    rows = _patches_of(net, layer, batch, max(4 * nout, 1000), rng)
    rows = rows - rows.mean(axis=0)
    if method == 'pca':
        _, _, vt = np.linalg.svd(rows, full_matrices=False)
        w = np.zeros((nout, fan_in))
        k = min(nout, vt.shape[0])
        w[:k] = vt[:k]
        w[k:] = rng.randn(nout - k, fan_in)
        return w.reshape(shape)
    if method == 'kmeans':
        rows /= np.linalg.norm(rows, axis=1, keepdims=True) + 1e-8
        centres = rows[rng.choice(len(rows), nout, replace=len(rows) < nout)]
        for _ in range(10):   # spherical k-means
            assign = np.argmax(rows.dot(centres.T), axis=1)
            for j in range(nout):
                members = rows[assign == j]
                if len(members):
                    centres[j] = members.sum(axis=0)
            centres /= np.linalg.norm(centres, axis=1, keepdims=True) + 1e-8
        return centres.reshape(shape)
    raise ValueError('unknown initialisation %r (gaussian, pca, kmeans)'
                     % method)


def init_layer(net, layer, batch, method='gaussian', rng=None):
    """Draw a zero layer's weights, then give each output unit variance and
    zero mean on the real inputs in ``batch``.  Returns the output std
    before scaling (per channel)."""
    rng = rng or np.random.RandomState(0)
    params = net.params[layer]
    params[0].data[...] = _draw_weights(net, layer, batch, method, rng)
    if len(params) > 1:
        params[1].data[...] = 0
    return normalize_layer(net, layer, batch)


def normalize_layer(net, layer, batch):
    """Scale a layer's output channels to unit variance, zero mean."""
    pycaffe.set_blobs(net, batch)
    net.forward(end=layer)
    mean, std = channel_stats(net.blobs[top_of(net, layer)].data)
    std = np.where(std > 1e-8, std, 1.0)
    params = net.params[layer]
    shape = (-1,) + (1,) * (params[0].data.ndim - 1)
    params[0].data[...] /= std.reshape(shape)
    if len(params) > 1:
        params[1].data[...] = (params[1].data - mean) / std
    return std


def zero_layers(net):
    return [l for l in param_layers(net)
            if not np.any(net.params[l][0].data)]


def gradient_ratios(net, batches, rng=None):
    """sqrt(mean grad^2 / mean W^2) of every weight layer, for random
    gaussian gradients injected at the last weight layer's output."""
    rng = rng or np.random.RandomState(0)
    layers = param_layers(net)
    last = layers[-1]
    grad2 = {l: 0.0 for l in layers}
    for batch in batches:
        pycaffe.set_blobs(net, batch)
        for l in layers:
            for blob in net.params[l]:
                blob.diff[...] = 0
        net.forward(end=last)
        top = net.blobs[top_of(net, last)]
        top.diff[...] = rng.randn(*top.diff.shape)
        net.backward(start=last)
        for l in layers:
            grad2[l] += float(np.mean(net.params[l][0].diff.astype(
                np.float64) ** 2))
    return {l: float(np.sqrt(grad2[l] / len(batches) / np.mean(
        net.params[l][0].data.astype(np.float64) ** 2))) for l in layers}


def calibrate(net, batches, rounds=10, tolerance=0.01, log=print):
    """Between-layer calibration; returns the ratios before and after."""
    layers = param_layers(net)
    first = ratios = gradient_ratios(net, batches)
    for it in range(rounds):
        values = np.array([ratios[l] for l in layers])
        spread = values.max() / values.min() - 1
        log('round %d: ratio spread %.2f%%' % (it, 100 * spread))
        if spread <= tolerance:
            break
        target = np.exp(np.mean(np.log(values)))
        cumulative = 1.0
        for l, r in zip(layers, values):
            a = np.sqrt(r / target)
            cumulative *= a
            net.params[l][0].data[...] *= a
            if len(net.params[l]) > 1:
                net.params[l][1].data[...] *= cumulative
        ratios = gradient_ratios(net, batches)
    return first, ratios


def weight_scales(net):
    return {l: float(np.sqrt(np.mean(net.params[l][0].data.astype(
        np.float64) ** 2))) for l in param_layers(net)}


CAFFENET_MEAN_BGR = np.array([104.0, 117.0, 123.0])


def input_batches(net, paths, batch_size, count, seed=0):
    """Real inputs for ``net``: a list of ``count`` dicts blob -> array.

    A 96x96 patch network gets training patches (batches.real_patches) and,
    if it has select1/select2/label inputs, neighbouring pairs.  Any other
    input size gets whole images resized to it, BGR minus CaffeNet's mean
    (what CaffeNet-style definitions expect).
    """
    shape = net.blobs['data'].data.shape
    out = []
    for b in range(count):
        if shape[2:] == sampling.PATCH_SHAPE[1:]:
            data = batches.real_patches(paths, batch_size, seed=seed + b)
        else:
            rs = np.random.RandomState(seed + b)
            picks = rs.choice(len(paths), batch_size)
            data = np.stack([
                (preprocess.resize_bilinear(decode.load_rgb(paths[i]),
                                            shape[2:]) * 255)[:, :, ::-1]
                .transpose(2, 0, 1) - CAFFENET_MEAN_BGR[:, None, None]
                for i in picks]).astype(np.float32)
        batch = {'data': data}
        if 'select1' in net.blobs:
            n = len(data)
            batch['select1'] = np.arange(n - 1, dtype=np.float32)
            batch['select2'] = np.arange(1, n, dtype=np.float32)
            batch['label'] = np.random.RandomState(b).randint(
                0, sampling.NUM_LABELS, n - 1).astype(np.float32)
        out.append(batch)
    return out
