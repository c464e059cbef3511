"""Small labelled sets built from installed packages, for the transfer tests.

* :func:`elpv_folder`: elpv solar cells (labels from the package) in
  ImageFolder layout, ``mono/`` and ``poly/``.
* :func:`voc_folder`: a VOC devkit layout (Annotations XML, ImageSets/Main,
  JPEGImages) of embedded photos whose objects were labelled by hand,
  looking at each photo; ``*`` marks an object labelled difficult (partly
  visible).  Classes without a photo have no positive.
"""
import os

from PIL import Image

from deepcontext.data import labelled, photos, voc

# (split, package, file name, objects), objects by hand.
VOC_HAND_LABELS = (
    ('trainval', 'skimage', 'astronaut.png', ['person']),
    ('trainval', 'skimage', 'chelsea.png', ['cat']),
    ('trainval', 'skimage', 'motorcycle_left.png', ['motorbike']),
    ('trainval', 'tiktok', 'pexels-36236147.jpg', ['chair', 'pottedplant']),
    ('trainval', 'tiktok', 'pexels-3965508.jpg', ['diningtable', 'chair']),
    ('trainval', 'tiktok', 'pexels-5853819.jpg', ['sofa', 'pottedplant']),
    ('trainval', 'tiktok', 'pexels-6373478.jpg', ['chair']),
    ('trainval', 'tiktok', 'pexels-7247504.jpg', ['sofa']),
    ('trainval', 'tiktok', 'pexels-7303782.jpg', ['chair']),
    ('trainval', 'tiktok', 'pexels-7303992.jpg', ['diningtable',
                                                  'pottedplant']),
    ('trainval', 'tiktok', 'pexels-7303842.jpg', ['chair', 'diningtable']),
    ('trainval', 'tiktok', 'pexels-2416933.jpg', []),   # a bedroom
    ('trainval', 'tiktok', 'pexels-36358763.jpg', ['pottedplant',
                                                   'diningtable', 'chair*']),
    ('test', 'skimage', 'camera.png', ['person']),
    ('test', 'tiktok', 'pexels-2560067.jpg', ['person', 'person']),
    ('test', 'skimage', 'motorcycle_right.png', ['motorbike']),
    ('test', 'tiktok', 'pexels-4400637.jpg', ['pottedplant']),
    ('test', 'tiktok', 'pexels-6830376.jpg', ['pottedplant', 'chair*']),
    ('test', 'tiktok', 'pexels-6956495.jpg', ['chair']),
    ('test', 'tiktok', 'pexels-maksgelatin-4352247.jpg', ['sofa']),
    ('test', 'tiktok', 'pexels-7303800.jpg', ['chair', 'chair']),
    ('test', 'tiktok', 'pexels-7303994.jpg', ['diningtable', 'pottedplant']),
    ('test', 'tiktok', 'pexels-7303995.jpg', ['diningtable', 'pottedplant']),
    ('test', 'tiktok', 'pexels-7688357.jpg', ['diningtable', 'chair',
                                              'chair']),
    ('test', 'tiktok', 'pexels-3062948.jpg', []),       # an empty room
)


def elpv_folder(root, per_class=6):
    """root/mono/*.png and root/poly/*.png, symlinks to elpv cells."""
    paths, labels, names = labelled.elpv('type')
    keep = labelled.stratified_subset(labels, per_class, seed=3)
    for i in keep:
        folder = os.path.join(str(root), names[labels[i]])
        os.makedirs(folder, exist_ok=True)
        os.symlink(paths[i], os.path.join(folder, os.path.basename(paths[i])))
    return str(root)


def _photo(package, name):
    found = {'skimage': photos.skimage_photos,
             'tiktok': photos.tiktok_photos}[package]()
    return [p for p in found if os.path.basename(p) == name][0]


def voc_folder(root):
    """root/VOC2007 in devkit layout, the splits of VOC_HAND_LABELS.

    Written with ``data.voc.write_voc``; every object's box is the whole
    photo (classification needs none); JPEGImages/ID.jpg are symlinks
    (load_rgb reads the content, so a PNG may stand behind a .jpg name).

    Returns
    -------
    str, the year folder
    """
    year = os.path.join(str(root), 'VOC2007')
    for split in ('trainval', 'test'):
        images, sources = [], {}
        for i, (s, package, name, objects) in enumerate(VOC_HAND_LABELS):
            if s != split:
                continue
            image_id = '%06d' % (i + 1)
            sources[image_id] = _photo(package, name)
            with Image.open(sources[image_id]) as im:
                w, h = im.size
            images.append((image_id, w, h, [
                (o.rstrip('*'), 1, 1, w, h, o.endswith('*'))
                for o in objects]))
        voc.write_voc(year, split, images,
                      lambda image_id, path: os.symlink(sources[image_id],
                                                        path))
    return year
