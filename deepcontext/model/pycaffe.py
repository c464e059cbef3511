"""The one adapter between deepcontext and pycaffe's Net.

What goes through here: writing inputs into a net (:func:`set_data`,
:func:`set_blobs`, :func:`set_inputs`), building a net from a
``NetParameter`` or prototxt (:func:`net_from_param`,
:func:`read_netparam`), the device (:func:`set_mode`, :func:`cpu_only`,
:func:`gpu_unusable`, :func:`cuda_device_count`, :func:`cudart`)
and every private pycaffe call (``_forward``, ``_backward``,
``_layer_names``, ``_gpu_data_ptr``).  Weights are read and written through
pycaffe's public ``net.params[name][i].data``, and outputs read from
``net.blobs[name].data``, where the surgery and the measurements need them.
"""
import ctypes
import os
import tempfile

import caffe
import numpy as np
from caffe.proto import caffe_pb2
from google.protobuf import text_format

PHASES = {'train': caffe.TRAIN, 'test': caffe.TEST}


class NoGPU(RuntimeError):
    """The GPU asked for cannot be used here; the message says why."""


def set_mode(gpu=None):
    """Run Caffe on the CPU (``gpu=None``) or on GPU number ``gpu``.

    Raises NoGPU, with the reason, where Caffe would abort the process."""
    if gpu is None:
        caffe.set_mode_cpu()
    else:
        why = gpu_unusable(gpu)
        if why:
            raise NoGPU('GPU %d: %s' % (gpu, why))
        caffe.set_device(int(gpu))
        caffe.set_mode_gpu()


# CUDA runtime errors (driver_types.h) that have a better explanation here
CUDA_ERROR_INSUFFICIENT_DRIVER = 35
CUDA_ERROR_NO_DEVICE = 100


def gpu_unusable(gpu):
    """Why Caffe cannot run on GPU number ``gpu`` here, or None if it can.

    Asks the CUDA runtime this pycaffe is linked to how many devices it
    sees, as Caffe would when it aborts with a CHECK failure.  This
    initialises the CUDA driver in this process: call it where Caffe's own
    CUDA work would come next, not in a parent that later forks processes
    which use the GPU.
    """
    if cpu_only():
        return 'this pycaffe is a CPU-only build'
    if gpu < 0:
        return 'device ids start at 0'
    rt = cudart()
    if rt is None:
        return 'the CUDA runtime (libcudart) cannot be loaded'
    count, err = cuda_device_count(rt)
    visible = os.environ.get('CUDA_VISIBLE_DEVICES')
    shown = '' if visible is None else ' (CUDA_VISIBLE_DEVICES=%r)' % visible
    if err == CUDA_ERROR_INSUFFICIENT_DRIVER:
        try:
            ctypes.CDLL('libcuda.so.1')
        except OSError:
            return 'no NVIDIA driver here (libcuda.so.1 not found)'
        driver, runtime = ctypes.c_int(0), ctypes.c_int(0)
        rt.cudaDriverGetVersion(ctypes.byref(driver))
        rt.cudaRuntimeGetVersion(ctypes.byref(runtime))
        return ('the NVIDIA driver supports CUDA up to %s; this build needs '
                'CUDA %s: update the driver' % (_cuda_version(driver.value),
                                                _cuda_version(runtime.value)))
    if err == CUDA_ERROR_NO_DEVICE or (err == 0 and count == 0):
        return 'no CUDA device is visible' + shown
    if err:
        return 'CUDA cannot count the devices: %s' % (
            rt.cudaGetErrorString(err).decode())
    if gpu >= count:
        return 'this machine shows %d CUDA device%s (%s)%s' % (
            count, '' if count == 1 else 's',
            '0' if count == 1 else '0-%d' % (count - 1), shown)
    return None


def cuda_device_count(rt=None):
    """(devices the CUDA runtime ``rt`` sees, its error code): cudart's
    cudaGetDeviceCount.  ``rt`` defaults to :func:`cudart`'s, which must
    exist (a CUDA build)."""
    count = ctypes.c_int(0)
    err = (rt or cudart()).cudaGetDeviceCount(ctypes.byref(count))
    return count.value, err


def cudart():
    """The CUDA runtime library libcaffe uses (ctypes: the same library,
    so the same CUDA context), or None (CPU-only build)."""
    for name in ('libcudart.so.13', 'libcudart.so.12', 'libcudart.so'):
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        lib.cudaGetErrorString.restype = ctypes.c_char_p
        return lib
    return None


def _cuda_version(number):
    """CUDA's version integer (13000) as text ('13.0')."""
    return '%d.%d' % (number // 1000, number % 1000 // 10)


def cpu_only():
    """True when the installed pycaffe was built with CPU_ONLY."""
    info = os.path.join(os.path.dirname(caffe.__file__), 'BUILD_INFO')
    if not os.path.isfile(info):
        return False
    with open(info) as f:
        return 'cpu_only: yes' in f.read()


def read_netparam(path):
    """A prototxt file as a ``caffe_pb2.NetParameter``."""
    proto = caffe_pb2.NetParameter()
    with open(path) as f:
        text_format.Merge(f.read(), proto)
    return proto


def net_from_param(proto, phase='test', weights=None):
    """A ``caffe.Net`` built from a NetParameter (through a temporary file).

    Parameters
    ----------
    proto : caffe_pb2.NetParameter
    phase : 'train' or 'test'
    weights : str or None, a .caffemodel to load
    """
    fd, path = tempfile.mkstemp(suffix='.prototxt')
    try:
        with os.fdopen(fd, 'w') as f:
            f.write(text_format.MessageToString(proto))
        if weights:
            return caffe.Net(path, PHASES[phase], weights=weights)
        return caffe.Net(path, PHASES[phase])
    finally:
        os.remove(path)


def set_blobs(net, arrays):
    """Write a dict of name -> array into the net's blobs, reshaping them."""
    for name, value in arrays.items():
        blob = net.blobs[name]
        blob.reshape(*np.shape(value))
        blob.data[...] = value


def set_data(net, data):
    """Write a stack of inputs into the ``data`` blob, reshaping it."""
    set_blobs(net, {'data': data})


def set_inputs(net, data, pairs, labels):
    """Write one batch into the net's DummyData inputs, reshaping them.

    Parameters
    ----------
    data : (N, 3, 96, 96) float32 patches
    pairs : (P, 2) int, batch indices of (first, second) patch of each pair
    labels : (P,) int in 0..7
    """
    set_data(net, data)
    set_pairs(net, pairs, labels)


def set_pairs(net, pairs, labels):
    """Write the pair indices and labels (``select1``, ``select2``, ``label``)."""
    set_blobs(net, {'select1': pairs[:, 0], 'select2': pairs[:, 1],
                    'label': labels})


def loss(net):
    return float(net.blobs['loss'].data)


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


def input_gradient(net, layer, top_diff):
    """Gradient of ``sum(top_diff * top of layer)`` with respect to ``data``.

    The layer's top blob gets ``top_diff`` as its diff and the net runs
    backward from that layer down to the input (pycaffe's public
    ``Net.backward(start=...)``); the net must have been built with
    ``force_backward`` and forwarded on the current input.

    Returns
    -------
    float32 array, the shape of the ``data`` blob
    """
    top = net.top_names[layer][0]
    net.blobs[top].diff[...] = top_diff
    net.backward(start=layer)
    return np.array(net.blobs['data'].diff, dtype=np.float32)


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
