"""PASCAL VOC in the devkit's layout, and object proposals.

A VOC root is the folder holding ``Annotations/``, ``ImageSets/Main/`` and
``JPEGImages/`` (``VOCdevkit/VOC2007``; ``VOCdevkit`` itself is accepted
when it holds one ``VOC*`` folder).  Boxes are kept as Fast R-CNN keeps
them: 0-based pixel indices ``x1 y1 x2 y2``, both ends inclusive (a box's
width is ``x2 - x1 + 1``); the XML files are 1-based.

Proposals come from Fast R-CNN's selective-search files
(``selective_search_data/voc_2007_trainval.mat``: a cell array ``boxes``,
one ``K x 4`` array per image of the image set, in order, 1-based
``y1 x1 y2 x2``) or from a plain text file, one box per line,
``IMAGE_ID X1 Y1 X2 Y2`` in the XML's 1-based pixel coordinates.
"""
import os
import xml.etree.ElementTree as ET

import numpy as np

CLASSES = ('__background__',
           'aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car',
           'cat', 'chair', 'cow', 'diningtable', 'dog', 'horse', 'motorbike',
           'person', 'pottedplant', 'sheep', 'sofa', 'train', 'tvmonitor')


class VocError(ValueError):
    """A VOC folder, annotation or proposal file that cannot be used."""


def find_root(path):
    """The folder with Annotations/ and ImageSets/ under ``path``."""
    if os.path.isdir(os.path.join(path, 'Annotations')):
        return path
    subs = sorted(d for d in (os.listdir(path) if os.path.isdir(path) else [])
                  if d.startswith('VOC') and
                  os.path.isdir(os.path.join(path, d, 'Annotations')))
    if len(subs) != 1:
        raise VocError('%s is not a VOC folder (no Annotations/, or not '
                       'exactly one VOC*/ holding one)' % path)
    return os.path.join(path, subs[0])


def read_image_set(root, image_set):
    """Image ids of ``ImageSets/Main/<image_set>.txt``."""
    path = os.path.join(root, 'ImageSets', 'Main', image_set + '.txt')
    if not os.path.isfile(path):
        raise VocError('no image set %s' % path)
    with open(path) as f:
        return [line.split()[0] for line in f if line.strip()]


def read_annotation(path, classes=CLASSES):
    """One XML file: dict boxes (K, 4) float32 0-based, classes (K,) int,
    difficult (K,) bool, width, height."""
    try:
        tree = ET.parse(path).getroot()
        size = tree.find('size')
        width, height = (int(size.find(k).text) for k in ('width', 'height'))
        boxes, labels, difficult = [], [], []
        for obj in tree.findall('object'):
            name = obj.find('name').text.strip().lower()
            if name not in classes:
                raise VocError('%s: unknown class %r' % (path, name))
            bb = obj.find('bndbox')
            boxes.append([float(bb.find(k).text) - 1
                          for k in ('xmin', 'ymin', 'xmax', 'ymax')])
            labels.append(classes.index(name))
            flag = obj.find('difficult')
            difficult.append(flag is not None and int(flag.text) == 1)
    except (OSError, ET.ParseError, AttributeError, TypeError,
            ValueError) as e:
        if isinstance(e, VocError):
            raise
        raise VocError('cannot read annotation %s: %s' % (path, e)) from None
    return dict(boxes=np.array(boxes, np.float32).reshape(-1, 4),
                classes=np.array(labels, np.int32),
                difficult=np.array(difficult, bool), width=width,
                height=height)


def read_selective_search(path, count=None):
    """Fast R-CNN's selective-search .mat: a list of (K, 4) float32 boxes,
    0-based x1 y1 x2 y2, one per image of the image set in order."""
    import scipy.io
    try:
        raw = scipy.io.loadmat(path)['boxes'].ravel()
    except (OSError, ValueError, KeyError) as e:
        raise VocError('cannot read proposals %s: %s' % (path, e)) from None
    if count is not None and len(raw) != count:
        raise VocError('%s has proposals for %d images, the image set %d'
                       % (path, len(raw), count))
    return [np.asarray(b, np.float32).reshape(-1, 4)[:, (1, 0, 3, 2)] - 1
            for b in raw]


def read_box_file(path, ids):
    """A text file of ``IMAGE_ID X1 Y1 X2 Y2`` lines (1-based): a list of
    (K, 4) 0-based boxes, one per id (empty when an image has none)."""
    found = {i: [] for i in ids}
    with open(path) as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            try:
                box = [float(v) - 1 for v in parts[1:5]]
            except ValueError:
                box = []
            if len(parts) != 5 or len(box) != 4:
                raise VocError('%s line %d: expected IMAGE_ID X1 Y1 X2 Y2'
                               % (path, n))
            if parts[0] in found:
                found[parts[0]].append(box)
    return [np.array(found[i], np.float32).reshape(-1, 4) for i in ids]


def read_proposals(path, ids):
    if path.endswith('.mat'):
        return read_selective_search(path, len(ids))
    return read_box_file(path, ids)


def load(root, image_set, proposals=None):
    """Records of an image set: dicts id, image (path), boxes, classes,
    difficult, width, height, proposals ((K, 4), clipped to the image;
    empty without a proposal file)."""
    root = find_root(root)
    ids = read_image_set(root, image_set)
    props = read_proposals(proposals, ids) if proposals else None
    records = []
    for n, i in enumerate(ids):
        rec = read_annotation(os.path.join(root, 'Annotations', i + '.xml'))
        rec['id'] = i
        rec['image'] = os.path.join(root, 'JPEGImages', i + '.jpg')
        if not os.path.isfile(rec['image']):
            raise VocError('missing image %s' % rec['image'])
        p = props[n] if props is not None else np.zeros((0, 4), np.float32)
        rec['proposals'] = clip_boxes(p, rec['width'], rec['height'])
        records.append(rec)
    return records


def clip_boxes(boxes, width, height):
    """Boxes (..., 4k) clipped to the image."""
    boxes = boxes.copy()
    boxes[..., 0::4] = np.clip(boxes[..., 0::4], 0, width - 1)
    boxes[..., 1::4] = np.clip(boxes[..., 1::4], 0, height - 1)
    boxes[..., 2::4] = np.clip(boxes[..., 2::4], 0, width - 1)
    boxes[..., 3::4] = np.clip(boxes[..., 3::4], 0, height - 1)
    return boxes


def box_overlaps(a, b):
    """IoU matrix (len(a), len(b)) of inclusive-pixel boxes."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    area_a = (a[:, 2] - a[:, 0] + 1) * (a[:, 3] - a[:, 1] + 1)
    area_b = (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)
    iw = (np.minimum(a[:, None, 2], b[None, :, 2]) -
          np.maximum(a[:, None, 0], b[None, :, 0]) + 1).clip(0)
    ih = (np.minimum(a[:, None, 3], b[None, :, 3]) -
          np.maximum(a[:, None, 1], b[None, :, 1]) + 1).clip(0)
    inter = iw * ih
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def write_voc(folder, image_set, images, write_image):
    """Write a VOC-layout folder; used to make small datasets (the tests).

    ``images``: list of (id, width, height, objects) with objects a list of
    (class name, x1, y1, x2, y2 1-based, difficult); ``write_image(id,
    path)`` writes the JPEG.
    """
    for sub in ('Annotations', 'ImageSets/Main', 'JPEGImages'):
        os.makedirs(os.path.join(folder, sub), exist_ok=True)
    for i, width, height, objects in images:
        write_image(i, os.path.join(folder, 'JPEGImages', i + '.jpg'))
        root = ET.Element('annotation')
        ET.SubElement(root, 'filename').text = i + '.jpg'
        size = ET.SubElement(root, 'size')
        for k, v in (('width', width), ('height', height), ('depth', 3)):
            ET.SubElement(size, k).text = str(v)
        for name, x1, y1, x2, y2, difficult in objects:
            obj = ET.SubElement(root, 'object')
            ET.SubElement(obj, 'name').text = name
            ET.SubElement(obj, 'difficult').text = str(int(difficult))
            bb = ET.SubElement(obj, 'bndbox')
            for k, v in zip(('xmin', 'ymin', 'xmax', 'ymax'),
                            (x1, y1, x2, y2)):
                ET.SubElement(bb, k).text = str(int(v))
        ET.ElementTree(root).write(
            os.path.join(folder, 'Annotations', i + '.xml'))
    with open(os.path.join(folder, 'ImageSets', 'Main',
                           image_set + '.txt'), 'w') as f:
        f.write(''.join(i + '\n' for i, _, _, _ in images))
