"""Labelled image sets in the layouts the field uses: a folder or a list.

* ImageFolder layout (ImageNet's ``train/``, Places' and torchvision's):
  ``ROOT/CLASS/xxx.jpg``, one sub-folder per class, class names sorted, the
  images of a class anywhere below its folder.  Image files directly in
  ``ROOT`` mean the layout is wrong and are refused.
* A list file, one image a line: ``PATH LABEL``, where PATH is relative to
  the list's folder (or absolute) and LABEL a class name or an integer
  index (Caffe's ``train.txt`` convention).  Blank lines and lines starting
  with ``#`` are skipped.  Integer labels keep their numbers (class names
  ``'0'``, ``'1'`` ...); names are numbered in sorted order.

Bad input is refused with a ``ValueError`` of one line: a Caffe LMDB (no
labels we can trust for a probe), a folder with fewer than two classes or
with images outside class folders, an empty class, a malformed line or a
listed file that does not exist.
"""
import os

import numpy as np

from deepcontext.data.imageset import lmdb_path

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.ppm', '.pgm', '.tif',
                    '.tiff', '.webp')


def _is_image(name):
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _refuse_lmdb(spec):
    if (str(spec).startswith('lmdb:') or lmdb_path(str(spec)) is not None
            or os.path.basename(str(spec)) in ('data.mdb', 'lock.mdb')):
        raise ValueError('%s is a Caffe LMDB: a labelled set must be a folder '
                         'CLASS/xxx.jpg or a list file "PATH LABEL"' % spec)


def _images_below(folder):
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        found.extend(os.path.join(dirpath, n) for n in sorted(filenames)
                     if _is_image(n))
    return found


def image_folder(root):
    """Paths and labels of an ImageFolder tree ``root/CLASS/xxx.jpg``.

    Returns
    -------
    paths : list of str, class by class, sorted within a class
    labels : (N,) int64, indices into ``class_names``
    class_names : tuple of str, sorted
    """
    _refuse_lmdb(root)
    if not os.path.isdir(root):
        raise ValueError('%s is not a folder' % root)
    loose = [n for n in os.listdir(root)
             if _is_image(n) and os.path.isfile(os.path.join(root, n))]
    if loose:
        raise ValueError('%s holds images outside class folders (e.g. %s): '
                         'expected ROOT/CLASS/xxx.jpg' % (root, loose[0]))
    classes = sorted(n for n in os.listdir(root)
                     if os.path.isdir(os.path.join(root, n))
                     and not n.startswith('.'))
    if len(classes) < 2:
        raise ValueError('%s has %d class folder(s): expected ROOT/CLASS/'
                         'xxx.jpg with at least two classes'
                         % (root, len(classes)))
    paths, labels = [], []
    for index, name in enumerate(classes):
        found = _images_below(os.path.join(root, name))
        if not found:
            raise ValueError('class folder %s has no images'
                             % os.path.join(root, name))
        paths.extend(found)
        labels.extend([index] * len(found))
    return paths, np.array(labels, dtype=np.int64), tuple(classes)


def list_file(path):
    """Paths and labels of a list file of ``PATH LABEL`` lines.

    Returns
    -------
    paths, labels, class_names : as :func:`image_folder`
    """
    _refuse_lmdb(path)
    if os.path.isdir(path):
        raise ValueError('%s is a folder, not a list file' % path)
    if not os.path.isfile(path):
        raise ValueError('no such list file: %s' % path)
    base = os.path.dirname(os.path.abspath(path))
    paths, raw = [], []
    with open(path, errors='replace') as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith('#'):
                continue
            name, _, label = line.rpartition(' ')
            name = name.strip()
            if not name or not label:
                raise ValueError('%s line %d: expected "PATH LABEL", got %r'
                                 % (path, number, line[:80]))
            full = os.path.join(base, name)
            if not os.path.isfile(full):
                raise ValueError('%s line %d: no such image %s'
                                 % (path, number, full))
            paths.append(full)
            raw.append(label)
    if not paths:
        raise ValueError('%s lists no images' % path)
    if all(r.lstrip('-').isdigit() for r in raw):
        labels = np.array([int(r) for r in raw], dtype=np.int64)
        if labels.min() < 0:
            raise ValueError('%s: negative label %d' % (path, labels.min()))
        names = tuple(str(i) for i in range(int(labels.max()) + 1))
    else:
        names = tuple(sorted(set(raw)))
        labels = np.array([names.index(r) for r in raw], dtype=np.int64)
    if len(np.unique(labels)) < 2:
        raise ValueError('%s has fewer than two classes' % path)
    return paths, labels, names


def open_labelled(spec):
    """A labelled set from a folder (ImageFolder) or a list file."""
    _refuse_lmdb(spec)
    if os.path.isdir(spec):
        return image_folder(spec)
    return list_file(spec)
