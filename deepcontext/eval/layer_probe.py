"""Linear probes on frozen conv1 .. conv5 (Zhang, Isola & Efros 2017).

The protocol of the self-supervision tables: each conv layer's output
(after its ReLU, and its BatchNorm where it has one) is average-pooled over
a grid chosen so that the vector has about 9,000 dimensions, and a
multinomial logistic regression is trained on it; top-1 accuracy per layer.
With 9,000 as the target, ``round(sqrt(9000 / channels))`` gives the grids of
the published setup: conv1 10x10x96 = 9,600, conv2 6x6x256 = 9,216, conv3
and conv4 5x5x384 = 9,600, conv5 6x6x256 = 9,216.

Differences from the papers' probes, all for a CPU toolkit:

* Pooling cells do not overlap (``features.grid_pool`` with ``'mean'``);
  Zhang et al. used Caffe average pooling with overlapping windows.  A map
  smaller than its grid (small ``side``) is pooled on a grid of its size.
* The classifier is ``probe.linear_probe`` (L-BFGS on the whole training
  set, L2 weight chosen on a validation part), not SGD with a schedule over
  ImageNet.  One layer's features are in memory at a time; the features
  are streamed to ``.npy`` files while the images go through the net.
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


def extract_layers(net, paths, folder, layers=LAYERS, side=224,
                   batch_size=16, seed=0, progress=None):
    """Stream every probed layer's pooled features to ``folder/LAYER.npy``.

    Returns
    -------
    dict layer -> path (see ``features.stream_image_features``)
    """
    return features.stream_image_features(
        net, paths, layers, lambda name, maps: pool_to_target(maps), folder,
        side=side, batch_size=batch_size, seed=seed, progress=progress)


def probe_files(files, labels, train, test, seed=0, report=print):
    """A linear probe per layer on features stored in ``.npy`` files.

    Parameters
    ----------
    files : dict layer -> path of an (N, D) ``.npy``
    labels : (N,) int
    train, test : index arrays into the rows

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
        out[name] = probe.linear_probe(x[train], labels[train], x[test],
                                       labels[test], num_classes, seed=seed)
        out[name]['fit_time'] = time.time() - t0
        report('%s: top-1 %.4f (%d-dim, l2 %g, %.0f s)'
               % (name, out[name]['accuracy'], out[name]['dim'],
                  out[name]['l2'], out[name]['fit_time']))
        del x
    return out


def probe_layers(net, paths, labels, train, test, layers=LAYERS, side=224,
                 batch_size=16, seed=0, folder=None, report=print,
                 progress=None):
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
                               batch_size, seed, progress)
        feature_time = time.time() - t0
        result = probe_files(files, labels, train, test, seed, report)
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
