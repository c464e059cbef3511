"""Image-level labels of a PASCAL VOC devkit folder, for classification.

Layout (the devkit's): ``ROOT/Annotations/ID.xml``,
``ROOT/ImageSets/Main/SPLIT.txt`` (one image id a line) and
``ROOT/JPEGImages/ID.jpg``, where ROOT is ``VOCdevkit/VOC2007`` (a
``VOCdevkit`` folder holding one ``VOC20xx`` is accepted too).

An image's label for a class follows the devkit's classification files
(``ImageSets/Main/CLASS_SPLIT.txt``): ``1`` if it has an object of the class
that is not ``difficult``, ``0`` if all its objects of the class are
difficult (ignored by the evaluation), ``-1`` if it has none.  They are
computed from the XML annotations, which every devkit ships.

Bad layouts are refused with a ``ValueError`` of one line.
"""
import os
import xml.etree.ElementTree as ET

import numpy as np

CLASSES = ('aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car',
           'cat', 'chair', 'cow', 'diningtable', 'dog', 'horse', 'motorbike',
           'person', 'pottedplant', 'sheep', 'sofa', 'train', 'tvmonitor')
PARTS = ('Annotations', os.path.join('ImageSets', 'Main'), 'JPEGImages')


def voc_root(path):
    """The year folder (holding Annotations, ImageSets/Main, JPEGImages)."""
    if not os.path.isdir(path):
        raise ValueError('%s is not a folder (expected a VOC devkit year '
                         'folder such as VOCdevkit/VOC2007)' % path)
    years = sorted(n for n in os.listdir(path) if n.startswith('VOC')
                   and os.path.isdir(os.path.join(path, n)))
    if not all(os.path.isdir(os.path.join(path, p)) for p in PARTS) \
            and len(years) == 1:
        path = os.path.join(path, years[0])
    missing = [p for p in PARTS if not os.path.isdir(os.path.join(path, p))]
    if missing:
        raise ValueError('%s is not a VOC devkit folder: no %s'
                         % (path, ', '.join(missing)))
    return path


def image_ids(root, split):
    """Image ids of ``ImageSets/Main/SPLIT.txt``."""
    path = os.path.join(root, 'ImageSets', 'Main', split + '.txt')
    if not os.path.isfile(path):
        raise ValueError('no split %s in %s (no %s)' % (split, root, path))
    with open(path) as f:
        ids = [line.split()[0] for line in f if line.strip()]
    if not ids:
        raise ValueError('%s lists no images' % path)
    return ids


def objects(xml_path):
    """(class name, difficult) of every object of one annotation file."""
    try:
        tree = ET.parse(xml_path)
    except (ET.ParseError, OSError) as err:
        raise ValueError('%s: not a readable VOC annotation (%s)'
                         % (xml_path, err))
    out = []
    for obj in tree.getroot().iter('object'):
        name = (obj.findtext('name') or '').strip()
        difficult = (obj.findtext('difficult') or '0').strip() == '1'
        out.append((name, difficult))
    return out


def classification_set(path, split, classes=CLASSES):
    """Paths and image-level labels of a split.

    Returns
    -------
    paths : list of str, ``JPEGImages/ID.jpg`` in the split's order
    labels : (N, C) int64 in {1, 0, -1} (present, difficult only, absent)
    classes : tuple of str
    """
    root = voc_root(path)
    ids = image_ids(root, split)
    labels = -np.ones((len(ids), len(classes)), dtype=np.int64)
    paths = []
    for i, image_id in enumerate(ids):
        jpeg = os.path.join(root, 'JPEGImages', image_id + '.jpg')
        if not os.path.isfile(jpeg):
            raise ValueError('%s: no image %s' % (split, jpeg))
        paths.append(jpeg)
        for name, difficult in objects(
                os.path.join(root, 'Annotations', image_id + '.xml')):
            if name not in classes:
                raise ValueError('%s: unknown class %r' % (image_id, name))
            j = classes.index(name)
            labels[i, j] = max(labels[i, j], 0 if difficult else 1)
    return paths, labels, tuple(classes)
