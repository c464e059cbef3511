"""Data-dependent initialisation and rescaling (Krähenbühl et al., ICLR 2016).

A network after debatchnorm has badly scaled layers: some weights are far
larger than others, so fine-tuning with one learning rate moves some layers
hardly at all and others too far.  Two steps fix that on real data:

1. Within-layer initialisation, for layers whose weights are all zero (not
   transferred): draw weights (gaussian, or PCA / k-means of the layer's real
   inputs), then scale each output channel to unit variance and centre it
   with the bias, measured on real images.
2. Between-layer calibration: inject random gaussian gradients at the
   outputs of the net's heads (the weight layers that feed no other weight
   layer: every one of them, so each head gets a gradient), back-propagate,
   measure each weight layer's ratio ``r_k = sqrt(mean grad^2 / mean W^2)``
   (how fast it would learn), and multiply its weights by
   ``a_k = sqrt(r_k / r_target)``.  Gradients scale by 1/a_k, so every ratio
   moves to ``r_target``.

What is kept exactly.  Every blob is followed through the net: a weight
layer multiplies its input's scale by a_k, and its bias is multiplied by the
scale of its output, so ReLU, pooling, dropout, ROI pooling, BatchReindex
and Concat pass the scale on unchanged.  LRN is not scale-invariant
(``x / (k + alpha/n sum x^2)^beta``): its ``alpha`` is divided by the square
of its input's scale, which makes ``LRN'(s x) = s LRN(x)`` exactly.  So the
calibrated net computes the original function with every blob multiplied by
a known scale; :func:`check_function` measures this layer by layer.  The
LRN change lives in the definition, not the weights: write the returned
definition (or copy its LRN parameters with :func:`copy_lrn`).  The heads'
outputs scale by the product of the factors on their path; ``r_target`` is
the geometric mean of the ratios with the heads counted as one layer
(their mean), so the heads' output scales multiply to 1 on average.

Convergence.  With the scales followed exactly, one round equalises the
ratios up to measurement noise.  Each round measures with fresh random
gradients; at the end the ratios are measured again with an independent
seed, and the calibration counts as converged only if that spread is within
the tolerance.  NaN or infinite weights or ratios, and a weight layer that
gets no gradient, raise :class:`CalibrationError`.
"""
import numpy as np

from deepcontext.data import batches, decode, preprocess, sampling
from deepcontext.model import pycaffe

WEIGHT_TYPES = ('Convolution', 'InnerProduct')
# Layers that pass their first input's scale on unchanged (positively
# homogeneous of degree 1 in it; other inputs are indices or boxes).
SCALE_PASSING = ('ReLU', 'Pooling', 'Dropout', 'Split', 'ROIPooling',
                 'BatchReindex', 'Flatten', 'Reshape')
SCALE_EQUAL = ('Concat', 'Eltwise')   # all inputs must share one scale
SOURCES = ('Input', 'DummyData', 'Python', 'Data', 'ImageData', 'HDF5Data')
# Outputs after the heads: their scale does not matter to the calibration.
SINKS = ('Softmax', 'SoftmaxWithLoss', 'SmoothL1Loss', 'EuclideanLoss',
         'Accuracy', 'Silence', 'SigmoidCrossEntropyLoss')


class CalibrationError(RuntimeError):
    """The calibration cannot go on (NaN, no gradient, unknown layer)."""


def calibration_netdef(definition):
    """The definition a calibration runs on: a copy of a prototxt path or a
    NetParameter in which every weight layer learns (lr_mult 0, e.g. a
    frozen conv1, would stop Caffe computing its gradient).

    A definition without a loss layer (a deploy or test net) gets
    force_backward; one with a loss already back-propagates (and
    force_backward would push gradients into index inputs such as
    BatchReindex's, which Caffe refuses).
    """
    netdef = pycaffe.read_netparam(definition) if isinstance(
        definition, str) else type(definition).FromString(
            definition.SerializeToString())
    for layer in netdef.layer:
        if layer.type in WEIGHT_TYPES:
            del layer.param[:]
    if not any(l.type.endswith('Loss') for l in netdef.layer):
        netdef.force_backward = True
    return netdef


def load_net(definition, weights=None):
    """(calibration NetParameter, TEST-phase Net with ``weights``)."""
    netdef = calibration_netdef(definition)
    return netdef, pycaffe.net_from_param(netdef, 'test', weights)


def param_layers(net):
    """Weight layers, in forward order."""
    types = layer_types(net)
    return [name for name in net.params if types[name] in WEIGHT_TYPES]


def layer_types(net):
    return {name: layer.type for name, layer in
            zip(pycaffe.layer_names(net), net.layers)}


def top_of(net, layer):
    return net.top_names[layer][0]


def bottom_of(net, layer):
    return net.bottom_names[layer][0]


def upstream(net):
    """(heads, layers on a path into a weight layer) of a net.

    A head is a weight layer whose output reaches no other weight layer
    (cls_score and bbox_pred of a detection net, fc9 of the pair net).
    """
    weights = set(param_layers(net))
    feeds, on_path, heads = set(), set(), []
    for name in reversed(pycaffe.layer_names(net)):
        reaches = any(t in feeds for t in net.top_names[name])
        if name in weights and not reaches:
            heads.append(name)
        if name in weights or reaches:
            on_path.add(name)
            feeds.update(net.bottom_names[name])
    return heads[::-1], on_path


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


def check_finite(net, what):
    for name in param_layers(net):
        for blob in net.params[name]:
            if not np.isfinite(blob.data).all():
                raise CalibrationError('%s: %s has NaN or infinite weights'
                                       % (what, name))


def _grad2(net, batches, rng, draws):
    """layer -> array of mean grad^2, one per (batch, draw)."""
    layers = param_layers(net)
    heads, on_path = upstream(net)
    names = pycaffe.layer_names(net)
    last = max(names.index(h) for h in heads)
    order = [i for i in range(last, -1, -1) if names[i] in on_path]
    grad2 = {l: [] for l in layers}
    for batch in batches:
        pycaffe.set_blobs(net, batch)
        net.forward(end=names[last])
        for _ in range(draws):
            for l in layers:
                for blob in net.params[l]:
                    blob.diff[...] = 0
            for h in heads:
                top = net.blobs[top_of(net, h)]
                top.diff[...] = rng.randn(*top.diff.shape)
            for i in order:
                pycaffe.backward_layer(net, i)
            for l in layers:
                grad2[l].append(float(np.mean(
                    net.params[l][0].diff.astype(np.float64) ** 2)))
    return {l: np.array(v) for l, v in grad2.items()}


def gradient_ratios(net, batches, rng, draws=4, noise=False):
    """sqrt(mean grad^2 / mean W^2) of every weight layer.

    Parameters
    ----------
    net : a Net from :func:`load_net`
    batches : list of dicts blob -> array (real inputs)
    rng : np.random.RandomState; ``draws`` gaussian gradients per batch are
        injected at every head's output (fresh ones on every call)
    noise : also return each ratio's relative standard error (from the
        spread of the single draws)

    Raises CalibrationError for a layer that gets no usable gradient.
    """
    out, err = {}, {}
    for l, g2 in _grad2(net, batches, rng, draws).items():
        w2 = float(np.mean(net.params[l][0].data.astype(np.float64) ** 2))
        m = float(g2.mean())
        if not (m > 0 and w2 > 0 and np.isfinite(m) and np.isfinite(w2)):
            raise CalibrationError(
                '%s gets no usable gradient (mean grad^2 %g, mean W^2 %g): '
                'is it connected to an output?' % (l, m, w2))
        out[l] = float(np.sqrt(m / w2))
        # d sqrt(m) / sqrt(m) = dm / 2m
        err[l] = float(g2.std(ddof=1) / np.sqrt(len(g2)) / (2 * m)) \
            if len(g2) > 1 else float('nan')
    return (out, err) if noise else out


def spread(ratios):
    """max / min - 1 of a dict of ratios."""
    values = np.array(list(ratios.values()))
    return float(values.max() / values.min() - 1)


def target_ratio(net, ratios):
    """Geometric mean of the ratios, the heads counted as one layer."""
    heads, _ = upstream(net)
    logs = [np.log(r) for l, r in ratios.items() if l not in heads]
    logs.append(np.mean([np.log(ratios[h]) for h in heads]))
    return float(np.exp(np.mean(logs)))


def propagate_scales(net, factors):
    """Scale of every blob when weight layer k is multiplied by factors[k].

    Returns
    -------
    (blob scales, output scale of each weight layer (its bias factor),
    input scale of each LRN layer)
    """
    types = layer_types(net)
    blob, bias, lrn = {}, {}, {}
    for name in pycaffe.layer_names(net):
        kind = types[name]
        ins = [blob.get(b, 1.0) for b in net.bottom_names[name]]
        if kind in SOURCES:
            s = 1.0
        elif kind in WEIGHT_TYPES:
            s = bias[name] = ins[0] * factors.get(name, 1.0)
        elif kind == 'LRN':
            s = lrn[name] = ins[0]
        elif kind in SCALE_PASSING:
            s = ins[0]
        elif kind in SCALE_EQUAL:
            if max(ins) > min(ins) * (1 + 1e-6):
                raise CalibrationError('%s (%s) joins blobs of different '
                                       'scales %s' % (name, kind, ins))
            s = ins[0]
        elif kind in SINKS:
            continue
        else:
            raise CalibrationError('cannot rescale through %s (%s)'
                                   % (name, kind))
        for t in net.top_names[name]:
            blob[t] = s
    return blob, bias, lrn


def rescale(net, netdef, factors):
    """Multiply weight layer k by factors[k], its bias by its output scale,
    and divide each LRN's alpha by its input scale squared.  Returns the
    net to use from now on: a rebuilt one when an LRN changed (its alpha
    lives in the definition, which is modified in place)."""
    _, bias, lrn = propagate_scales(net, factors)
    for name, a in factors.items():
        params = net.params[name]
        params[0].data[...] *= np.float32(a)
        if len(params) > 1:
            params[1].data[...] *= np.float32(bias[name])
    changed = {n: s for n, s in lrn.items() if s != 1.0}
    if not changed:
        return net
    for layer in netdef.layer:
        if layer.name in changed:
            layer.lrn_param.alpha /= changed[layer.name] ** 2
    rebuilt = pycaffe.net_from_param(netdef, 'test')
    for name in net.params:
        for src, dst in zip(net.params[name], rebuilt.params[name]):
            dst.data[...] = src.data
    return rebuilt


def _blobs_to_check(net):
    types = layer_types(net)
    return [top_of(net, n) for n in pycaffe.layer_names(net)
            if types[n] in WEIGHT_TYPES + ('LRN', 'Pooling', 'ROIPooling')]


def record(net, batch):
    """Copies of the blobs :func:`check_function` compares, on one batch."""
    heads, _ = upstream(net)
    pycaffe.set_blobs(net, batch)
    net.forward(end=heads[-1])
    return {b: net.blobs[b].data.astype(np.float64)
            for b in _blobs_to_check(net)}


def check_function(net, batch, before, factors):
    """Relative deviation of every recorded blob from ``scale x before``.

    ``factors``: the total factor of each weight layer since ``before``
    was recorded.  Returns blob -> (expected scale, max |x' - s x| /
    max |s x|).  Before a ReLU the blob is compared as stored (in-place
    ReLUs make the recorded value the rectified one in both nets).
    """
    scales, _, _ = propagate_scales(net, factors)
    now = record(net, batch)
    out = {}
    for name, x in before.items():
        s = scales[name]
        ref = s * x
        out[name] = (s, float(np.abs(now[name] - ref).max() /
                              max(np.abs(ref).max(), 1e-30)))
    return out


def calibrate(net, netdef, batches, rounds=10, tolerance=0.05, draws=4,
              check_draws=8, seed=0, log=print):
    """Between-layer calibration, with the function kept (see the module).

    Parameters
    ----------
    net, netdef : from :func:`load_net` (netdef's LRN layers get the new
        alpha)
    batches : real inputs, list of dicts blob -> array
    rounds : at most this many rescalings
    tolerance : converged when an independent measurement (fresh seed)
        gives a ratio spread (max/min - 1) within it
    draws : random gradients per batch and round; the estimate pools
        every round's measurements
    check_draws : random gradients per batch of the independent check

    Returns
    -------
    (net, report): the net to use from now on (rebuilt when LRN changed)
    and a dict with 'before', 'after', 'independent' ratios, 'spread'
    (independent), 'converged', 'rounds', 'factors' (total per layer),
    'function' (check_function on the first batch), 'head_scales'.
    """
    check_finite(net, 'input')
    rng = np.random.RandomState(seed)
    layers = param_layers(net)
    before_blobs = record(net, batches[0])
    total = {l: 1.0 for l in layers}
    first = gradient_ratios(net, batches, rng, draws)
    # Every measurement so far, in the current net's terms: rescaling by a
    # moves a layer's ratio by exactly 1/a^2, so they pool, and the
    # estimate's noise falls with every round.
    logs = {l: [np.log(first[l])] for l in layers}
    used = 0
    for it in range(rounds):
        ratios = {l: float(np.exp(np.mean(logs[l]))) for l in layers}
        log('round %d: ratio spread %.2f%% (pooled over %d measurements)'
            % (it, 100 * spread(ratios), len(logs[layers[0]])))
        if spread(ratios) <= tolerance / 2:
            break
        target = target_ratio(net, ratios)
        factors = {l: float(np.sqrt(ratios[l] / target)) for l in layers}
        net = rescale(net, netdef, factors)
        check_finite(net, 'round %d' % it)
        fresh = gradient_ratios(net, batches, rng, draws)
        for l in layers:
            total[l] *= factors[l]
            logs[l] = [v - 2 * np.log(factors[l]) for v in logs[l]]
            logs[l].append(np.log(fresh[l]))
        used += 1
    ratios = {l: float(np.exp(np.mean(logs[l]))) for l in layers}
    independent, noise = gradient_ratios(
        net, batches, np.random.RandomState(seed + 7919), check_draws,
        noise=True)
    heads, _ = upstream(net)
    _, bias, _ = propagate_scales(net, total)
    report = dict(before=first, after=ratios, independent=independent,
                  noise=noise, spread=spread(independent),
                  converged=spread(independent) <= tolerance, rounds=used,
                  factors=total,
                  function=check_function(net, batches[0], before_blobs,
                                          total),
                  head_scales={h: bias[h] for h in heads})
    log('independent re-measurement: ratio spread %.2f%% (tolerance %.2f%%;'
        ' standard error of one ratio up to %.2f%%)'
        % (100 * report['spread'], 100 * tolerance,
           100 * max(noise.values())))
    return net, report


def read_definition(path):
    """A prototxt as a NetParameter (unchanged, for writing back)."""
    return pycaffe.read_netparam(path)


def lrn_params(netdef):
    """name -> lrn_param of every LRN layer."""
    return {l.name: l.lrn_param for l in netdef.layer if l.type == 'LRN'}


def copy_lrn(src, dst):
    """Copy the LRN parameters of NetParameter src into dst, by name."""
    params = lrn_params(src)
    for layer in dst.layer:
        if layer.name in params:
            layer.lrn_param.CopyFrom(params[layer.name])
    return dst


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
