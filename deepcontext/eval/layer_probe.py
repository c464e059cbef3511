"""Linear probes on frozen conv1 .. conv5 (Zhang, Isola & Efros 2017).

The protocol of the self-supervision tables: each conv layer's output
(after its ReLU, and its BatchNorm where it has one) is pooled to about
9,000 dimensions and a multinomial logistic regression is trained on it;
top-1 accuracy per layer.  Three poolings (``POOLINGS``):

* ``'deepcluster'`` (default): DeepCluster's ``eval_linear.py``
  (``RegLog``): average pooling, kernel / stride / padding 6/6/3 on conv1,
  4/4/0 on conv2, 3/3/1 on conv3 and conv4, 2/2/0 on conv5, as PyTorch's
  ``AvgPool2d`` computes it (output floor((H + 2p - k) / s) + 1, zeros of
  the padding counted in the mean).  On DeepCluster's AlexNet at 224
  (maps 55, 27, 13, 13, 13) that is 10x10x96 = 9,600, 6x6x256 = 9,216,
  5x5x384 = 9,600 twice, 6x6x256 = 9,216.  Our tower (conv1 padded by 5,
  as the original) gives maps of 56, 28, 14, 14, 14 at 224, so conv2 and
  conv5 pool to 7x7 (12,544); at ``side`` 216 (maps 54, 27, 13) every
  layer has the published size.
* ``'zhang'``: Zhang et al.'s ``feature_learning_tests/linear/
  train_val.prototxt``: each map resized bilinearly (their ``Resize``
  layer) to 10x10, 6x6, 5x5, 5x5 and 6x6, whatever its size.  Our
  bilinear samples at cell centres; their layer's exact sampling grid is
  not in their repository.
* ``'grid'`` (ours, earlier): non-overlapping mean over a g x g grid,
  g = round(sqrt(9000 / channels)) (``features.grid_pool``), clipped to
  the map.

Other layers (pool5, ...) are pooled with ``'grid'``.

Differences from the papers' probes, all for a CPU toolkit:

* The classifier is ``probe.linear_probe`` (L-BFGS on the whole training
  set, L2 weight chosen on a validation part), not SGD with a schedule over
  ImageNet; ``probe.streaming_probe`` is the SGD one, with memory that does
  not grow with the set.  One layer's features are in memory at a time;
  the features are streamed to ``.npy`` files while the images go through
  the net.
* Inputs are the toolkit's grey, RMS-normalised images
  (``features.prep_eval``), resized to ``side`` x ``side``, no crops.
"""
import tempfile
import time

import numpy as np

from deepcontext.eval import features, plots, probe

# Probed layers (their outputs after ReLU) and the names the tables use.
LAYERS = ('relu1', 'relu2', 'relu3', 'relu4', 'relu5')
TABLE_NAMES = ('conv1', 'conv2', 'conv3', 'conv4', 'conv5')
TARGET_DIM = 9000
POOLINGS = ('deepcluster', 'zhang', 'grid')
# eval_linear.py's RegLog: (kernel, stride, padding) per probed layer.
DEEPCLUSTER_POOL = {'relu1': (6, 6, 3), 'relu2': (4, 4, 0),
                    'relu3': (3, 3, 1), 'relu4': (3, 3, 1),
                    'relu5': (2, 2, 0)}
# Zhang et al.'s linear train_val.prototxt: the Resize layers' sides.
ZHANG_SIDE = {'relu1': 10, 'relu2': 6, 'relu3': 5, 'relu4': 5, 'relu5': 6}
# Published top-1 (%) of context prediction (Doersch et al.) under this
# protocol, conv1 .. conv5 (Zhang, Isola & Efros 2017, split-brain paper).
PAPER_IMAGENET = (16.2, 23.3, 30.2, 31.7, 29.6)
PAPER_PLACES = (19.7, 26.7, 31.9, 32.7, 30.9)


def pool_grid(channels, target=TARGET_DIM):
    """Side of the pooling grid that gives about ``target`` dimensions."""
    return max(1, int(round(np.sqrt(float(target) / channels))))


def pool_to_target(maps, target=TARGET_DIM):
    """Average-pool (N, C, H, W) maps to about ``target`` dimensions.

    Returns
    -------
    (N, C * g * g) float32 with ``g = min(pool_grid(C), H, W)``
    """
    n, c, h, w = maps.shape
    return features.grid_pool(maps, min(pool_grid(c, target), h, w), 'mean')


def avg_pool(maps, kernel, stride, pad):
    """PyTorch's AvgPool2d(kernel, stride, pad) of (N, C, H, W) maps.

    Output side floor((H + 2 pad - kernel) / stride) + 1; every window is
    divided by kernel^2, padding zeros included (``count_include_pad``).
    """
    n, c, h, w = maps.shape
    padded = np.pad(np.asarray(maps, dtype=np.float64),
                    ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    oh = (h + 2 * pad - kernel) // stride + 1
    ow = (w + 2 * pad - kernel) // stride + 1
    out = np.zeros((n, c, oh, ow))
    for dy in range(kernel):
        for dx in range(kernel):
            out += padded[:, :, dy:dy + stride * oh:stride,
                          dx:dx + stride * ow:stride]
    return (out / (kernel * kernel)).astype(np.float32)


def _bilinear_matrix(size, out):
    """(out, size) weights of a bilinear resize sampling at cell centres."""
    src = np.clip((np.arange(out) + 0.5) * size / float(out) - 0.5,
                  0, size - 1)
    lo = np.floor(src).astype(int)
    hi = np.minimum(lo + 1, size - 1)
    frac = src - lo
    m = np.zeros((out, size))
    m[np.arange(out), lo] += 1 - frac
    m[np.arange(out), hi] += frac
    return m


def bilinear_resize(maps, side):
    """(N, C, H, W) maps resized bilinearly to (N, C, side, side)."""
    rows = _bilinear_matrix(maps.shape[2], side)
    cols = _bilinear_matrix(maps.shape[3], side)
    # rows @ each map @ cols.T: two matrix products (an einsum over all
    # four indices at once is a loop over i, h, w, j).
    out = np.matmul(np.matmul(rows, np.asarray(maps, dtype=np.float64)),
                    cols.T)
    return out.astype(np.float32)


def pool_layer(name, maps, pooling='deepcluster'):
    """One layer's (N, C, H, W) maps as (N, D) probe features.

    ``pooling``: one of ``POOLINGS`` (see the module doc); layers other
    than relu1 .. relu5 always use ``'grid'``.
    """
    if pooling not in POOLINGS:
        raise ValueError('pooling must be one of %s, not %r'
                         % (', '.join(POOLINGS), pooling))
    n = len(maps)
    if pooling == 'deepcluster' and name in DEEPCLUSTER_POOL:
        return avg_pool(maps, *DEEPCLUSTER_POOL[name]).reshape(n, -1)
    if pooling == 'zhang' and name in ZHANG_SIDE:
        return bilinear_resize(maps, ZHANG_SIDE[name]).reshape(n, -1)
    return pool_to_target(maps)


def extract_layers(net, paths, folder, layers=LAYERS, side=224,
                   batch_size=16, seed=0, progress=None,
                   pooling='deepcluster', spec=features.DEEPCONTEXT_INPUT):
    """Stream every probed layer's pooled features to ``folder/LAYER.npy``.

    ``spec``: the input (``features.InputSpec``, the tools' --preprocess).

    Returns
    -------
    dict layer -> path (see ``features.stream_image_features``)
    """
    if pooling not in POOLINGS:
        raise ValueError('pooling must be one of %s, not %r'
                         % (', '.join(POOLINGS), pooling))
    return features.stream_image_features(
        net, paths, layers,
        lambda name, maps: pool_layer(name, maps, pooling), folder,
        side=side, batch_size=batch_size, seed=seed, progress=progress,
        spec=spec)


CLASSIFIERS = ('lbfgs', 'sgd')


def probe_files(files, labels, train, test, seed=0, report=print,
                classifier='lbfgs'):
    """A linear probe per layer on features stored in ``.npy`` files.

    Parameters
    ----------
    files : dict layer -> path of an (N, D) ``.npy``
    labels : (N,) int
    train, test : index arrays into the rows
    classifier : 'lbfgs' (``probe.linear_probe``, in memory) or 'sgd'
        (``probe.streaming_probe``, read from the file batch by batch)

    Returns
    -------
    dict layer -> ``probe.linear_probe``'s result
    """
    labels = np.asarray(labels)
    num_classes = int(labels.max()) + 1
    out = {}
    for name, path in files.items():
        t0 = time.time()
        x = np.load(path, mmap_mode='r')
        if classifier == 'sgd':
            out[name] = probe.streaming_probe(x, labels, train, test,
                                              num_classes, seed=seed)
        else:
            out[name] = probe.linear_probe(x[train], labels[train], x[test],
                                           labels[test], num_classes,
                                           seed=seed)
        out[name]['fit_time'] = time.time() - t0
        report('%s: top-1 %.4f (%d-dim, l2 %g, %.0f s)'
               % (name, out[name]['accuracy'], out[name]['dim'],
                  out[name]['l2'], out[name]['fit_time']))
        del x
    return out


def probe_layers(net, paths, labels, train, test, layers=LAYERS, side=224,
                 batch_size=16, seed=0, folder=None, report=print,
                 progress=None, pooling='deepcluster', classifier='lbfgs',
                 spec=features.DEEPCONTEXT_INPUT):
    """Features of every layer streamed to disk, then one probe per layer.

    ``folder`` keeps the ``.npy`` files; None uses a temporary folder that
    is removed afterwards.

    Returns
    -------
    dict layer -> result, plus ``'feature_time'`` (seconds)
    """
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix='layer_probe_') as tmp:
        files = extract_layers(net, paths, folder or tmp, layers, side,
                               batch_size, seed, progress, pooling, spec)
        feature_time = time.time() - t0
        result = probe_files(files, labels, train, test, seed, report,
                             classifier)
    result['feature_time'] = feature_time
    return result


def table_names(layers):
    """conv1 .. conv5 for relu1 .. relu5; other names as they are."""
    return [TABLE_NAMES[LAYERS.index(l)] if l in LAYERS else l
            for l in layers]


def table(results, layers=LAYERS):
    """Top-1 (%) per layer and net, as text lines (one row per net)."""
    names = table_names(layers)
    lines = ['%-10s' % 'net' + ''.join('%9s' % n for n in names)]
    for tag, res in results.items():
        lines.append('%-10s' % tag + ''.join(
            '%9.1f' % (100 * res[l]['accuracy']) for l in layers))
    return lines


def figure(results, chance, majority, layers=LAYERS, title=''):
    """Top-1 per layer, one line per net, with chance and majority.

    Returns
    -------
    matplotlib.figure.Figure
    """
    names = table_names(layers)
    series = {tag: ([100 * res[l]['accuracy'] for l in layers], None)
              for tag, res in results.items()}
    return plots.curves_figure(
        series, list(range(len(layers))), names, 'layer',
        'top-1 accuracy (%)', title or 'linear probe per layer',
        [(100 * chance, 'chance', dict(color='grey', ls=':')),
         (100 * majority, 'majority class',
          dict(color='tab:red', ls='--', lw=1))])
