"""Labelled images for the linear probe, from an installed package.

``elpv-dataset`` (PyPI, pinned in requirements.txt; import name
``elpv_dataset``) holds 2,624 electroluminescence images of solar cells,
300x300 pixels, 8-bit grey, from 44 solar modules (Buerhop-Lutz et al.
2018, Deitsch et al. 2019; data CC BY-NC-SA 4.0).  Each cell has a defect
probability in {0, 1/3, 2/3, 1} given by an expert and the module type
(mono- or polycrystalline).  Two tasks are offered:

* ``'defect'``: functional (probability < 0.5, 1,803 cells) against
  defective (>= 0.5, 821 cells): the benchmark's own question.
* ``'type'``: monocrystalline (1,074) against polycrystalline (1,550).

These are not the object categories of the paper's ImageNet/VOC
evaluations, but they are real, labelled, and installed without a
download at run time.  The labels file does not say which module a cell
comes from, so a split cannot keep modules apart: cells of one module can
be on both sides (easier than a per-module split).

As for the demo photos (``photos.package_dir``), the package is located
with ``importlib.util.find_spec`` and never imported.
"""
import os

import numpy as np

from deepcontext.data.photos import package_dir

TASKS = {
    'defect': ('functional', 'defective'),
    'type': ('mono', 'poly'),
}


def elpv_dir():
    """Folder ``elpv_dataset/data`` of the installed package.

    Raises
    ------
    ModuleNotFoundError
        If elpv-dataset is not installed, saying how to install it.
    """
    return os.path.join(package_dir('elpv_dataset', 'elpv-dataset',
                                    'the linear probe'), 'data')


def elpv(task='defect'):
    """Paths and labels of all elpv cells for a task.

    Parameters
    ----------
    task : 'defect' or 'type'

    Returns
    -------
    paths : list of str, in the order of the package's labels.csv
    labels : (N,) int64 array, indices into ``class_names``
    class_names : tuple of str
    """
    if task not in TASKS:
        raise ValueError('task must be one of %s, not %r'
                         % (', '.join(TASKS), task))
    folder = elpv_dir()
    paths, labels = [], []
    with open(os.path.join(folder, 'labels.csv')) as f:
        for line in f:
            fields = line.split()
            if len(fields) != 3:
                continue
            rel, prob, kind = fields
            paths.append(os.path.join(folder, rel))
            if task == 'defect':
                labels.append(int(float(prob) >= 0.5))
            else:
                labels.append(TASKS['type'].index(kind))
    return paths, np.array(labels, dtype=np.int64), TASKS[task]


def stratified_subset(labels, per_class, seed=0):
    """Indices of at most ``per_class`` items of each class, sorted.

    Drawn with ``np.random.RandomState(seed)``, so the subset is fixed.
    """
    rng = np.random.RandomState(seed)
    keep = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        keep.extend(rng.permutation(idx)[:per_class])
    return np.sort(np.array(keep, dtype=np.int64))


def fixed_split(labels, test_fraction=0.5, seed=0):
    """A stratified train/test split that depends only on labels and seed.

    Returns
    -------
    train, test : sorted int64 index arrays; each class is split in the
    same proportion (at least one item on each side when it has two).
    """
    rng = np.random.RandomState(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_test = int(round(len(idx) * test_fraction))
        if len(idx) >= 2:
            n_test = min(max(n_test, 1), len(idx) - 1)
        test.extend(idx[:n_test])
        train.extend(idx[n_test:])
    return (np.sort(np.array(train, dtype=np.int64)),
            np.sort(np.array(test, dtype=np.int64)))
