"""Everything that reaches into a pycaffe Net: inputs, statistics, checks.

The trainer and the tools go through these functions, so how we touch
Caffe's blobs (and any private pycaffe call) is in one place.
"""
import caffe
import numpy as np


def set_inputs(net, data, pairs, labels):
    """Write one batch into the net's DummyData inputs, reshaping them.

    Parameters
    ----------
    data : (N, 3, 96, 96) float32 patches
    pairs : (P, 2) int, batch indices of (first, second) patch of each pair
    labels : (P,) int in 0..7
    """
    blobs = net.blobs
    blobs['data'].reshape(*data.shape)
    blobs['data'].data[...] = data
    set_pairs(net, pairs, labels)


def set_pairs(net, pairs, labels):
    """Write the pair indices and labels (``select1``, ``select2``, ``label``)."""
    blobs = net.blobs
    npairs = pairs.shape[0]
    for name, values in (('select1', pairs[:, 0]), ('select2', pairs[:, 1]),
                         ('label', labels)):
        blobs[name].reshape(npairs)
        blobs[name].data[...] = values


def loss(net):
    return float(net.blobs['loss'].data)


def tracked_params(net):
    """Names of the learned layers whose weights are monitored (not bnN)."""
    return [name for name in net.params if 'bn' not in name]


def weights(net, name):
    return net.params[name][0].data


def param_norm(net, name):
    w = weights(net, name)
    return float(np.sqrt(np.sum(w.astype(np.float64) ** 2)))


def update_norm(net, name, old):
    w = weights(net, name)
    return float(np.sqrt(np.sum((w.astype(np.float64) - old) ** 2)))


def fc8_weight_sum(net):
    return float(np.sum(weights(net, 'fc8')))


def pool1_max_abs_diff(net):
    return float(np.max(np.abs(net.blobs['pool1'].diff)))


def reshape_data_on_gpu(net, shape):
    """Reshape the ``data`` blob; return its device pointer (an int).

    For GpuFeed, which fills the blob on the device.  pycaffe's private
    ``Blob._gpu_data_ptr`` is Caffe's ``mutable_gpu_data()``: the blob's
    head moves to the GPU, so Caffe will not upload stale host memory over
    it.  Only in a CUDA build (AttributeError otherwise).
    """
    blob = net.blobs['data']
    blob.reshape(*shape)
    return blob._gpu_data_ptr


def layer_names(net):
    return list(net._layer_names)


def forward_layer(net, index):
    """Run layer ``index`` alone (pycaffe's private ``_forward``)."""
    net._forward(index, index)


def backward_layer(net, index):
    """Backpropagate through layer ``index`` alone."""
    net._backward(index, index)


def pass_on_devices(net_path, data, pairs, labels, modes=('cpu', 'gpu')):
    """One forward and backward pass of a net on each device, same weights.

    The first mode's freshly initialised weights are copied into the
    others.  Each net is deleted before the mode changes (Caffe's Timer
    frees CUDA events according to the *current* mode).

    Returns
    -------
    list, in the order of ``modes``, of (blob data, blob diffs, first
    param's gradient per layer), each a dict of name -> array
    """
    out, weights = [], None
    for mode in modes:
        getattr(caffe, 'set_mode_' + mode)()
        net = caffe.Net(net_path, caffe.TRAIN)
        if weights is None:
            weights = {k: [b.data.copy() for b in v]
                       for k, v in net.params.items()}
        for k, v in net.params.items():
            for b, w in zip(v, weights[k]):
                b.data[...] = w
                b.diff[...] = 0
        set_inputs(net, data, pairs, labels)
        net.forward()
        blob_data = {k: v.data.copy() for k, v in net.blobs.items()}
        net.backward()
        out.append((blob_data,
                    {k: v.diff.copy() for k, v in net.blobs.items()},
                    {k: v[0].diff.copy() for k, v in net.params.items()}))
        del net
    return out
