"""Image-level labels of a PASCAL VOC devkit folder, for classification.

The folder is read by :mod:`deepcontext.data.voc` (the detection reader:
``Annotations/``, ``ImageSets/Main/``, ``JPEGImages/``).  An image's label
for a class follows the devkit's classification files
(``ImageSets/Main/CLASS_SPLIT.txt``): ``1`` if it has an object of the class
that is not ``difficult``, ``0`` if all its objects of the class are
difficult (ignored by the evaluation), ``-1`` if it has none.
"""
import numpy as np

from deepcontext.data import voc

# The 20 classes, in the devkit's order (voc.CLASSES less the background).
CLASSES = voc.CLASSES[1:]


def image_labels(records, num_classes=len(CLASSES)):
    """(N, C) int64 labels in {1, 0, -1} of ``voc.load`` records.

    Record class indices count the background as 0, as ``voc.CLASSES``.
    """
    labels = -np.ones((len(records), num_classes), dtype=np.int64)
    for i, rec in enumerate(records):
        for cls, difficult in zip(rec['classes'], rec['difficult']):
            j = int(cls) - 1
            labels[i, j] = max(labels[i, j], 0 if difficult else 1)
    return labels


def classification_set(path, split):
    """Paths and image-level labels of a split of a VOC folder.

    Returns
    -------
    paths : list of str, ``JPEGImages/ID.jpg`` in the split's order
    labels : (N, 20) int64 in {1, 0, -1}
    classes : tuple of the 20 class names

    Raises
    ------
    voc.VocError (a ValueError) naming what is wrong with the folder
    """
    records = voc.load(path, split)
    if not records:
        raise voc.VocError('split %s of %s lists no images' % (split, path))
    return [r['image'] for r in records], image_labels(records), CLASSES
