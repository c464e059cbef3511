"""Features of a trained (or randomly initialised) context-prediction net.

One function, :func:`extract`, runs a net in TEST phase over a stack of
inputs and returns the named layers' outputs; the evaluation tools
(pretext accuracy, nearest neighbours, linear probe) all go through it.

* The net is the training definition (``nets.gen_net``, or a prototxt such
  as ``network_no_bn.prototxt``) in TEST phase, with the snapshot's weights
  or with Caffe's random initialisation (seeded).  ``debug_info`` is turned
  off: it sums every blob on every pass.
* Patches: ``(N, 3, 96, 96)`` inputs, any layer up to fc6 (relu6).  With
  pairs and labels, the whole net runs (fc7 .. fc9, loss) on one batch.
* Whole images: the fully convolutional view of the patch tower.  The
  ``data`` blob is reshaped to the image size and only conv1 .. pool5 run;
  the fully connected layers are tied to the 96x96 input (fc6 sees a 3x3
  pool5), so asking for them with another input size is an error.

BatchNorm (bn3 .. bn7) has two modes, and which one ran is always returned:

* ``'global'``: Caffe's TEST behaviour, the running statistics stored in
  the snapshot.
* ``'batch'``: the statistics of the batch itself (``use_global_stats:
  false``), as in training.  A randomly initialised net has all-zero
  statistics: Caffe then normalises with mean 0 and variance 0 (+ eps, so
  activations are multiplied by ~316 at each BN layer), which is not a fair
  random baseline; ``'auto'`` picks ``'batch'`` for such nets.  In this
  mode a sample's features depend on the rest of its batch, and Caffe
  also updates the running statistics of the in-memory net (never saved).

Input normalisation for features (:func:`prep_eval`).  Training inputs
(``preprocess.prep_patch``) keep ONE random colour channel (mean removed)
and replace the other two by faint noise, scaled so the patch has RMS 50;
the kept channel then has RMS 50 * sqrt(3).  For features we want no
randomness, so the grey image, mean removed and scaled to that RMS, is
divided by 3 and put in every channel: conv1's (linear) response is then
the average of its responses to the three equally likely training inputs.

Which input a measuring tool feeds is an :class:`InputSpec`
(``--preprocess``, :func:`input_spec`):

* ``'reference'`` (the default) and ``'caffe-bgr'``, two names of one
  input: BGR, 0-255, minus a mean (the ImageNet mean (104, 117, 123) unless
  another or none is given), times an input scale; what the reference
  protocols, Fast R-CNN and other methods' Caffe AlexNets take.  For one of
  our nets (trained on RGB patches of RMS 50) the channels are put back in
  RGB order and the scale is measured, 50 / the input's RMS on the images
  measured: exactly what conv1 sees after ``export_fast_rcnn.py`` reverses
  and rescales its weights.  For any other net (BGR, 0-255) the scale is 1.
* ``'deepcontext'``: :func:`prep_eval`, the toolkit's grey input.
"""
import collections
import os

import caffe
import numpy as np
from caffe.proto import caffe_pb2

from deepcontext.data import decode, preprocess
from deepcontext.model import nets, pycaffe

BN_MODES = ('auto', 'global', 'batch')
INPUT_SIDE = nets.INPUT_SHAPE[1]   # 96: fc6 is tied to this input size
# RMS of the one colour channel a training patch keeps (see module doc).
CHANNEL_RMS = preprocess.TARGET_RMS * np.sqrt(3.0)


def net_param(definition=None, bn_mode='global', force_backward=False):
    """The evaluation definition: the training net, TEST phase, BN mode set.

    Parameters
    ----------
    definition : str or None
        A prototxt of the training net's shape (e.g. a run's
        ``network.prototxt`` or ``network_no_bn.prototxt``); None for
        ``nets.gen_net()`` with BatchNorm.
    bn_mode : 'global' or 'batch'
    force_backward : bool
        Backpropagate down to the ``data`` blob (gradients with respect to
        the input, for filter visualisation).

    Returns
    -------
    caffe_pb2.NetParameter
    """
    if bn_mode not in ('global', 'batch'):
        raise ValueError('bn_mode must be global or batch, not %r' % bn_mode)
    if definition is None:
        proto = nets.gen_net(batch_size=1)
    else:
        proto = pycaffe.read_netparam(definition)
    proto.debug_info = False
    proto.force_backward = force_backward
    proto.state.phase = caffe_pb2.TEST
    for layer in proto.layer:
        if layer.type == 'BatchNorm':
            layer.batch_norm_param.use_global_stats = bn_mode == 'global'
    return proto


def has_bn_statistics(net):
    """False if some BatchNorm layer has never accumulated statistics."""
    return all(float(net.params[name][2].data.ravel()[0]) != 0
               for name, layer in net.layer_dict.items()
               if layer.type == 'BatchNorm')


def load_net(weights=None, definition=None, bn_mode='auto', seed=0,
             force_backward=False):
    """A TEST-phase net with a snapshot's weights or random ones.

    Parameters
    ----------
    weights : str or None
        A ``.caffemodel``; None for Caffe's initialisation (xavier), drawn
        from Caffe's generator seeded with ``seed``.
    definition, force_backward : see :func:`net_param`
    bn_mode : 'auto', 'global' or 'batch'
        'auto' is 'global' when every BatchNorm layer has statistics, else
        'batch' (always for a random net).

    Returns
    -------
    net : caffe.Net
    bn_mode : str, the mode used ('global' or 'batch'; 'none' for a
        definition without BatchNorm, e.g. a debatchnormed model)
    """
    if bn_mode not in BN_MODES:
        raise ValueError('bn_mode must be one of %s, not %r'
                         % (', '.join(BN_MODES), bn_mode))
    if weights is not None and not os.path.isfile(weights):
        raise FileNotFoundError('no such weights file: %s' % weights)
    caffe.set_random_seed(int(seed))
    first = 'global' if bn_mode == 'auto' else bn_mode
    net = pycaffe.net_from_param(
        net_param(definition, first, force_backward), weights=weights)
    if not any(layer.type == 'BatchNorm' for layer in net.layers):
        return net, 'none'
    if bn_mode != 'auto' or has_bn_statistics(net):
        return net, first
    # No statistics: rebuild in batch mode with the same parameters (copied
    # in memory, not re-read from disk).
    batch_net = pycaffe.net_from_param(
        net_param(definition, 'batch', force_backward))
    for name, blobs in net.params.items():
        for src, dst in zip(blobs, batch_net.params[name]):
            dst.data[...] = src.data
    return batch_net, 'batch'


PREPROCESS = ('reference', 'caffe-bgr', 'deepcontext')
IMAGENET_BGR_MEAN = (104.0, 117.0, 123.0)


class InputSpec(collections.namedtuple(
        'InputSpec', 'preprocess mean scale channels')):
    """How images become a net's input.

    preprocess : one of PREPROCESS
    mean : (B, G, R) subtracted, or None ('reference' / 'caffe-bgr')
    scale : the mean-subtracted input is multiplied by this
    channels : 'rgb' or 'bgr', the order conv1 was trained on
    """

    def describe(self):
        """A dict for the tools' JSON."""
        return dict(preprocess=self.preprocess,
                    mean=None if self.mean is None else list(self.mean),
                    input_scale=self.scale, channel_order=self.channels)


DEEPCONTEXT_INPUT = InputSpec('deepcontext', None, 1.0, 'rgb')


def parse_mean(text):
    """'imagenet', 'none' or 'B,G,R' -> a (B, G, R) tuple or None."""
    if text in (None, 'none'):
        return None
    if text == 'imagenet':
        return IMAGENET_BGR_MEAN
    try:
        mean = tuple(float(v) for v in text.split(','))
    except ValueError:
        mean = ()
    if len(mean) != 3:
        raise ValueError("--mean must be imagenet, none or B,G,R (three "
                         "numbers), not %r" % text)
    return mean


def is_deepcontext_net(net):
    """True for our patch nets (with or without BatchNorm): they carry the
    pair head's BatchReindex layers, which no classification net has."""
    return any(layer.type == 'BatchReindex' for layer in net.layers)


def bgr_minus_mean(im, mean):
    """(H, W, 3) RGB 0-255 -> (H, W, 3) float64 BGR minus ``mean``."""
    bgr = np.asarray(im, dtype=np.float64)[:, :, ::-1]
    return bgr if mean is None else bgr - np.asarray(mean, np.float64)


def measure_scale(images, mean):
    """50 / RMS of the BGR-minus-mean input over ``images`` (RGB 0-255)."""
    sq = [np.mean(np.square(bgr_minus_mean(im, mean))) for im in images]
    rms = np.sqrt(np.mean(sq)) if sq else 0.0
    if not rms > 0:
        raise ValueError('cannot measure an input scale: the images are '
                         'all equal to the mean')
    return float(preprocess.TARGET_RMS / rms)


def input_spec(net, preprocess_name='reference', mean='imagenet',
               scale='auto', channels='auto', sample=()):
    """The :class:`InputSpec` of ``net`` for the tools' options.

    ``scale`` and ``channels`` 'auto': for our nets (see
    :func:`is_deepcontext_net`) the scale measured on ``sample`` (RGB
    0-255 images or patches, as the tool will feed them) and RGB order;
    for other nets 1 and BGR.
    """
    if preprocess_name not in PREPROCESS:
        raise ValueError('preprocess must be one of %s, not %r'
                         % (', '.join(PREPROCESS), preprocess_name))
    if preprocess_name == 'deepcontext':
        return DEEPCONTEXT_INPUT
    ours = is_deepcontext_net(net)
    mean = parse_mean(mean) if isinstance(mean, (str, type(None))) else \
        tuple(mean)
    if channels == 'auto':
        channels = 'rgb' if ours else 'bgr'
    if channels not in ('rgb', 'bgr'):
        raise ValueError('channel order must be auto, rgb or bgr, not %r'
                         % channels)
    if scale == 'auto':
        scale = measure_scale(sample, mean) if ours else 1.0
    return InputSpec(preprocess_name, mean, float(scale), channels)


def to_input(im, spec=DEEPCONTEXT_INPUT):
    """An (H, W, 3) RGB image, values 0-255, as a (3, H, W) float32 input."""
    if spec.preprocess == 'deepcontext':
        return prep_eval(im)
    x = bgr_minus_mean(im, spec.mean) * spec.scale
    if spec.channels == 'rgb':
        x = x[:, :, ::-1]
    return np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32)


def prep_eval(im):
    """Deterministic network input of a patch or image (see module doc).

    Parameters
    ----------
    im : (H, W, 3) array, values in [0, 255]

    Returns
    -------
    (3, H, W) float32: the grey image, mean removed, scaled to RMS
    ``CHANNEL_RMS`` and divided by 3, in every channel.
    """
    grey = np.asarray(im, dtype=np.float64).mean(axis=2)
    grey -= grey.mean()
    rms = np.sqrt(np.mean(np.square(grey)))
    if rms > 0:
        grey *= CHANNEL_RMS / rms
    return np.ascontiguousarray(np.broadcast_to(
        (grey / 3.0).astype(np.float32), (3,) + grey.shape))


def _layer_order(net):
    return list(net.layer_dict.keys())


def _pair_free_limit(net):
    """Index of the first layer that needs pairs (BatchReindex), or end."""
    for i, layer in enumerate(net.layers):
        if layer.type == 'BatchReindex':
            return i
    return len(net.layers)


def _first_fc(net):
    for i, layer in enumerate(net.layers):
        if layer.type == 'InnerProduct':
            return i
    return len(net.layers)


def extract(net, data, layers, pairs=None, labels=None, batch_size=32,
            progress=None):
    """Outputs of the named layers for a stack of inputs.

    The output of a layer is its top blob right after that layer ran, so
    ``'fc6'`` is fc6 before BatchNorm and ReLU (which work in place) and
    ``'relu6'`` is after both.

    Parameters
    ----------
    net : caffe.Net from :func:`load_net`
    data : (N, 3, H, W) float32 network inputs (see :func:`prep_eval`)
    layers : list of layer names
    pairs, labels : (P, 2) and (P,) ints, optional
        Pairs of indices into ``data`` and their labels, for layers of the
        pair head (fc7 .. fc9).  Then ``data`` is forwarded as ONE batch.
    batch_size : int, inputs per forward pass without pairs
    progress : callable(done, total), optional

    Returns
    -------
    dict layer name -> float32 array with N (or P) rows
    """
    order = _layer_order(net)
    unknown = [name for name in layers if name not in order]
    if unknown:
        raise ValueError('no layer %s in the net' % ', '.join(unknown))
    wanted = sorted(set(layers), key=order.index)
    last = order.index(wanted[-1])
    if pairs is None and last >= _pair_free_limit(net):
        raise ValueError('%s needs pairs and labels' % wanted[-1])
    if data.shape[2:] != (INPUT_SIDE, INPUT_SIDE) and last >= _first_fc(net):
        raise ValueError('%s is past the first fully connected layer: only '
                         '96x96 inputs, not %dx%d'
                         % ((wanted[-1],) + tuple(data.shape[2:])))
    if pairs is not None:
        pycaffe.set_inputs(net, data, np.asarray(pairs), np.asarray(labels))
        return _forward_segments(net, order, wanted)
    out = {name: [] for name in wanted}
    n, done = data.shape[0], 0
    # Chunks of near-equal size: with batch-statistics BatchNorm a last
    # chunk of one input would normalise to all zeros.
    for chunk in np.array_split(data, max(1, -(-n // batch_size))):
        pycaffe.set_data(net, chunk)
        for name, value in _forward_segments(net, order, wanted).items():
            out[name].append(value)
        done += len(chunk)
        if progress is not None:
            progress(done, n)
    return {name: np.concatenate(parts) for name, parts in out.items()}


def _forward_segments(net, order, wanted):
    """Forward layer by layer up to each wanted layer; copy its top."""
    out = {}
    start = None
    for name in wanted:
        net.forward(start=start, end=name)
        out[name] = np.array(net.blobs[net.top_names[name][0]].data,
                             dtype=np.float32)
        nxt = order.index(name) + 1
        start = order[nxt] if nxt < len(order) else None
    return out


def grid_pool(feat, grid=1, op='max'):
    """Pool (N, C, H, W) maps over a grid x grid layout into vectors.

    Cell boundaries are ``round(k * H / grid)``, so cells differ by at most
    one row or column; every cell is non-empty while ``grid <= H, W``.

    Returns
    -------
    (N, C * grid * grid) float32, cell-major (all channels of cell 0 first)
    """
    n, c, h, w = feat.shape
    if grid > min(h, w):
        raise ValueError('grid %d larger than the %dx%d map' % (grid, h, w))
    ys = np.round(np.linspace(0, h, grid + 1)).astype(int)
    xs = np.round(np.linspace(0, w, grid + 1)).astype(int)
    reduce = {'max': np.max, 'mean': np.mean}[op]
    cells = [reduce(feat[:, :, ys[i]:ys[i + 1], xs[j]:xs[j + 1]], axis=(2, 3))
             for i in range(grid) for j in range(grid)]
    return np.concatenate(cells, axis=1).astype(np.float32)


def resized_image(path, side):
    """An image file resized to (side, side, 3), RGB 0-255 float64.

    The 2015-style bilinear resize of training; aspect not kept.
    """
    return preprocess.resize_bilinear(decode.load_rgb(path),
                                      (side, side)) * 255.0


def image_input(path, side, spec=DEEPCONTEXT_INPUT):
    """An image file as a (3, side, side) network input (aspect not kept).

    :func:`resized_image`, then :func:`to_input`.
    """
    return to_input(resized_image(path, side), spec)


def image_features(net, paths, layer='relu5', side=224, grid=2, op='max',
                   batch_size=16, seed=0, progress=None,
                   spec=DEEPCONTEXT_INPUT):
    """Whole-image conv features: resize, normalise, conv tower, grid pool.

    Images are resized to ``side`` x ``side`` (aspect not kept) with the
    2015-style bilinear resize of training, made inputs by ``spec``
    (:func:`to_input`), and forwarded through the fully convolutional view up
    to ``layer``.  They go through the net in a fixed random order, so that
    with batch-statistics BatchNorm no batch holds images of one class only
    (lists sorted by class would otherwise leak labels into features).

    Returns
    -------
    (N, C * grid * grid) float32, in the order of ``paths``
    """
    order = np.random.RandomState(seed).permutation(len(paths))
    feats = np.empty(len(paths), dtype=object)
    for lo in range(0, len(paths), batch_size):
        idx = order[lo:lo + batch_size]
        data = np.stack([image_input(paths[i], side, spec) for i in idx])
        maps = extract(net, data, [layer], batch_size=len(idx))[layer]
        for i, row in zip(idx, grid_pool(maps, grid, op)):
            feats[i] = row
        if progress is not None:
            progress(min(lo + batch_size, len(paths)), len(paths))
    return np.stack(list(feats))


def stream_image_features(net, paths, layers, pool, folder, side=224,
                          batch_size=16, seed=0, progress=None,
                          spec=DEEPCONTEXT_INPUT):
    """Whole-image features of several layers, written to ``.npy`` files.

    Each batch of images goes once through the conv tower (up to the last
    of ``layers``); ``pool(layer, maps)`` turns each layer's (B, C, H, W)
    maps into (B, D) rows, which are written into ``folder/LAYER.npy``
    (``np.lib.format.open_memmap``), so only one batch of maps is ever in
    memory.  Images go through in a seeded random order, as in
    :func:`image_features`; rows are in the order of ``paths``.

    Parameters
    ----------
    net : caffe.Net from :func:`load_net`
    paths : list of image paths
    layers : list of layer names (conv1 .. pool5 / relu5)
    pool : callable(layer, maps) -> (B, D) float32
    folder : str, created if needed
    side : int, images are resized to side x side
    progress : callable(done, total), optional
    spec : :class:`InputSpec`

    Returns
    -------
    dict layer -> path of its (N, D) float32 ``.npy``
    """
    os.makedirs(folder, exist_ok=True)
    files = {name: os.path.join(folder, name + '.npy') for name in layers}
    order = np.random.RandomState(seed).permutation(len(paths))
    out = {}
    for lo in range(0, len(paths), batch_size):
        idx = order[lo:lo + batch_size]
        data = np.stack([image_input(paths[i], side, spec) for i in idx])
        maps = extract(net, data, list(layers), batch_size=len(idx))
        for name in layers:
            rows = pool(name, maps[name])
            if name not in out:
                out[name] = np.lib.format.open_memmap(
                    files[name], mode='w+', dtype=np.float32,
                    shape=(len(paths), rows.shape[1]))
            out[name][idx] = rows
        if progress is not None:
            progress(min(lo + batch_size, len(paths)), len(paths))
    for mm in out.values():
        mm.flush()
    del out
    return files


def log_softmax(scores):
    """Row-wise log softmax of (P, C) scores, in float64."""
    s = np.asarray(scores, dtype=np.float64)
    s = s - s.max(axis=1, keepdims=True)
    return s - np.log(np.exp(s).sum(axis=1, keepdims=True))
