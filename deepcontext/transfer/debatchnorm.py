"""Weight surgery: fold BatchNorm into the layer before it, and check it.

The original debatchnorm.py turned the trained network (BatchNorm without
scale/shift after conv3-5, fc6, fc7) into an equivalent one without
BatchNorm, so that tools which know nothing of BatchNorm (Fast R-CNN of
2015, CaffeNet definitions) can fine-tune it.  For a layer ``convN``/``fcN``
directly followed by ``bnN`` with Caffe's stored statistics (mean, variance,
scale factor s) and the layer's eps::

    mu  = mean / s,   var = variance / s        (s = 0 counts as 0, as Caffe)
    W'  = W / sqrt(var + eps)                   (per output channel)
    b'  = (b - mu) / sqrt(var + eps)

Rules kept from the original: parameter layers are named convN or fcN;
fc7, fc8 and fc9 are not copied (the pair head is replaced when
fine-tuning); layers whose shapes differ between the two definitions are
skipped with a warning; a layer without bnN is copied unchanged.  The
original's ``nbprm`` typo (a NameError when eps was missing) is gone: eps
comes from the input definition, Caffe's default 1e-5 when unset.
"""
import numpy as np

from deepcontext.model import pycaffe

SKIPPED = ('fc7', 'fc8', 'fc9')


def fold_batchnorm(weights, bias, mean, variance, scale_factor, eps):
    """Fold Caffe BatchNorm statistics into the preceding layer.

    Parameters
    ----------
    weights : (C_out, ...) array
    bias : (C_out,) array
    mean, variance : (C_out,) arrays, Caffe's accumulated sums
    scale_factor : float, Caffe's third BatchNorm blob
    eps : float

    Returns
    -------
    (weights', bias') as float32 arrays of the same shapes
    """
    s = 0.0 if scale_factor == 0 else 1.0 / float(scale_factor)
    mu = np.asarray(mean, np.float64) * s
    std = np.sqrt(np.asarray(variance, np.float64) * s + eps)
    shape = (-1,) + (1,) * (np.ndim(weights) - 1)
    w = np.asarray(weights, np.float64) / std.reshape(shape)
    b = (np.asarray(bias, np.float64) - mu) / std
    return w.astype(np.float32), b.astype(np.float32)


def bn_name(param_layer):
    """'conv3' -> 'bn3', 'fc6' -> 'bn6'; None if not a convN/fcN name."""
    for prefix in ('conv', 'fc'):
        if param_layer.startswith(prefix):
            return 'bn' + param_layer[len(prefix):]
    return None


def bn_eps(netdef):
    """eps of every BatchNorm layer of a NetParameter, by layer name."""
    return {l.name: l.batch_norm_param.eps for l in netdef.layer
            if l.type == 'BatchNorm'}


def debatchnorm(src_net, src_def, dst_net, log=print):
    """Copy src_net's parameters into dst_net, folding BatchNorm.

    Parameters
    ----------
    src_net : caffe.Net with BatchNorm (weights loaded)
    src_def : caffe_pb2.NetParameter of src_net (for eps)
    dst_net : caffe.Net without BatchNorm; modified in place
    log : callable for one line per layer

    Returns
    -------
    dict layer -> 'folded' | 'copied' | 'skipped' | 'shape mismatch' |
    'unknown'
    """
    eps = bn_eps(src_def)
    report = {}
    for name in dst_net.params:
        if any(k in name for k in SKIPPED):
            report[name] = 'skipped'
            log('skipping %s (the pair head is not transferred)' % name)
            continue
        bn = bn_name(name)
        if bn is None or name not in src_net.params:
            report[name] = 'unknown'
            log('warning: %s has parameters but is not a convN/fcN layer of '
                'the input; left as initialised' % name)
            continue
        src, dst = src_net.params[name], dst_net.params[name]
        if src[0].data.shape != dst[0].data.shape:
            report[name] = 'shape mismatch'
            log('warning: %s has shape %s in the input but %s in the output; '
                'skipped' % (name, src[0].data.shape, dst[0].data.shape))
            continue
        w = src[0].data
        b = src[1].data if len(src) > 1 else np.zeros(w.shape[0], np.float32)
        if bn not in src_net.params:
            dst[0].data[...] = w
            if len(dst) > 1:
                dst[1].data[...] = b
            report[name] = 'copied'
            log('%s: no %s, copied unchanged' % (name, bn))
            continue
        stats = src_net.params[bn]
        w2, b2 = fold_batchnorm(w, b, stats[0].data, stats[1].data,
                                stats[2].data.reshape(-1)[0], eps[bn])
        dst[0].data[...] = w2
        dst[1].data[...] = b2
        report[name] = 'folded'
        log('%s: folded %s (eps %g, scale factor %g)' % (
            name, bn, eps[bn], stats[2].data.reshape(-1)[0]))
    return report


TOWER_TYPES = ('Convolution', 'Pooling', 'LRN', 'InnerProduct')


def tower_signature(netdef, upto='fc6'):
    """(name, type, parameters) of the conv/pool/LRN/fc layers up to upto.

    Two definitions with equal signatures compute the same activations for
    the same weights, once BatchNorm is folded.
    """
    sig = []
    for l in netdef.layer:
        if l.type in TOWER_TYPES:
            params = (l.convolution_param, l.pooling_param, l.lrn_param,
                      l.inner_product_param.num_output)
            sig.append((l.name, l.type, str(params[0]), str(params[1]),
                        str(params[2]), params[3]))
            if l.name == upto:
                break
    return sig


def compare_activations(net_a, net_b, blobs, data, end):
    """Forward the same input through both nets (up to layer ``end``) and
    compare the named blobs.

    Returns
    -------
    dict blob -> (max abs difference, max abs difference / max |a|)
    """
    for net in (net_a, net_b):
        pycaffe.set_data(net, data)
        net.forward(end=end)
    out = {}
    for name in blobs:
        a = net_a.blobs[name].data.astype(np.float64)
        b = net_b.blobs[name].data.astype(np.float64)
        diff = float(np.abs(a - b).max())
        out[name] = (diff, diff / max(float(np.abs(a).max()), 1e-30))
    return out
