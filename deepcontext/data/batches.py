"""From images to batches of preprocessed patch pairs: the one pipeline.

Training (``loader.py``, endless, one generator pair per worker) and
evaluation (:func:`pretext_batches`, a finite list, seeded generators per
image) assemble batches with the same function, :func:`assemble_batches`,
and judge images with the same rule, :func:`usable_image`:

1. draw a target size U{150,000..450,000} pixels and decode the image;
   with ``min_source_side`` (off by default), skip it, with a message, if
   its shorter side is smaller;
2. resize it to that many pixels (2015 bilinear, ``preprocess``);
3. skip it, with a message, unless both sides exceed ``2*96+48+7`` pixels;
   an image used only because step 2 enlarged it from below that size (a
   1x1 image becomes about 390x390: flat patches) is reported, once per
   ``upscaled`` set, as the original used it silently;
4. draw ``grids_per_image`` grids from it (``sampling.BatchAssembler``: a
   batch closes before a grid would bring it to ``batch_size`` patches);
5. crop every patch and preprocess it straight into the batch buffer
   (``preprocess.prep_grid``, one call per grid).

The random draws of one image (size, grids, jitter, colour dropping, noise)
are taken grid by grid in that order, from the generators given with it:
a ``random.Random`` and a numpy ``Generator`` (SFC64) for the noise.
``reference=True`` runs the numpy code the loaders ran until issue 16
(noise from a ``RandomState``), which tests and benches compare against.
"""
import random

import numpy as np

from deepcontext.data import decode, preprocess, sampling
from deepcontext.data.imageset import ImageSet, ImageSource

# Seed of image i's generators: seed * IMAGE_SEED_STRIDE + i (integers, so
# the same in every process: Python 3 randomises hash() per process).
IMAGE_SEED_STRIDE = 1000003


def rngs(seed, reference=False):
    """(random.Random, noise generator) seeded with the integer ``seed``.

    The noise generator is a numpy ``Generator`` on SFC64 (fast float32
    draws), or with ``reference`` the ``RandomState`` of the numpy code.
    """
    seed = int(seed)
    if reference:
        return random.Random(seed), np.random.RandomState(seed % (2 ** 32))
    return random.Random(seed), np.random.Generator(np.random.SFC64(seed))


def image_rngs(seed, index, reference=False):
    """The generators of image ``index`` for a run ``seed`` (:func:`rngs`)."""
    return rngs(int(seed) * IMAGE_SEED_STRIDE + int(index), reference)


def usable_image(image_set, index, rng, report=print, reference=False,
                 min_source_side=0, upscaled=None):
    """Image ``index`` resized to a random size, or None if it is unusable.

    Parameters
    ----------
    image_set : imageset.ImageSource
    index : int
    rng : random.Random, draws the target size
    report : callable(str), told why an image is skipped, and of a used
        image upscaled from below a grid's size
    reference : bool, resize with the numpy code (same result, slower)
    min_source_side : int, skip images whose decoded shorter side is
        smaller (0: off, the original's behaviour).  A JPEG draft decode is
        at least twice the resize target a side, so only big images are
        drafted and this compares as with a full decode.
    upscaled : set or None, indices of upscaled images already reported
        (each is reported once per set; its size counts them); None
        reports every time

    Returns
    -------
    (H, W, 3) float32 in [0, 1], or None (broken, or too small for a 2x2
    grid after resizing, as the original skipped it, or smaller than
    ``min_source_side``)
    """
    target = rng.randint(*preprocess.TARGET_PIXELS)
    try:
        im = image_set.load(index, target)
    except decode.ImageError as err:
        report('skipping image %d: %s' % (index, err))
        return None
    source = im.shape[:2]
    if min(source) < min_source_side:
        report('skipping image %d (%s): %dx%d, smaller than min_source_side '
               '%d' % (index, image_set.name(index), source[1], source[0],
                       min_source_side))
        return None
    im = preprocess.resize_to_pixels(im, target, reference)
    min_side = sampling.min_image_side()
    if im.shape[0] > min_side and im.shape[1] > min_side:
        tiny = min(source) <= min_side
        if tiny and (upscaled is None or index not in upscaled):
            report('image %d (%s): %dx%d upscaled to %dx%d: too small for a '
                   '2x2 grid by itself (<= %d a side; min_source_side skips '
                   'such images)' % (index, image_set.name(index), source[1],
                                     source[0], im.shape[1], im.shape[0],
                                     min_side))
            if upscaled is not None:
                upscaled.add(index)
        return im
    report('skipping image %d (%s): %dx%d after resizing to %d pixels, too '
           'small for a 2x2 grid (needs > %d a side)'
           % (index, image_set.name(index), im.shape[1], im.shape[0], target,
              min_side))
    return None


def assemble_batches(images, new_buffer, batch_size=sampling.BATCH_SIZE,
                     projection=False,
                     grids_per_image=sampling.GRIDS_PER_IMAGE,
                     reference=False):
    """Sample grids from images into batch buffers; yield each full batch.

    Parameters
    ----------
    images : iterable of (index, image, rng, nprng)
        Usable resized images (:func:`usable_image`) with the generators
        their draws come from (:func:`rngs`: ``random.Random`` and a numpy
        ``Generator``, or a ``RandomState`` with ``reference``).
    new_buffer : callable() -> (key, (batch_size, 3, 96, 96) float32 array)
        Called when a batch starts; the patches are written into the array.
    batch_size : int, a batch holds fewer patches than this
    projection : bool, see ``preprocess.prep_patch_reference``
    grids_per_image : int
    reference : bool, preprocess with the numpy code (``prep_grid``)

    Yields
    ------
    key : the buffer's key, as ``new_buffer`` returned it
    count : int, patches in the batch (rows ``0..count-1`` of the buffer)
    pairs : (P, 2) int64 batch indices (first, second)
    labels : (P,) int64 in 0..7
    image_indices : list of int, the images whose last grid is in the batch
    """
    asm = sampling.BatchAssembler(batch_size)
    key, out = new_buffer()
    in_batch = []
    for index, im, rng, nprng in images:
        for _ in range(grids_per_image):
            start, cols, rows, closes = asm.plan_grid(im.shape, rng)
            if closes:
                count = asm.count
                pairs, labels = asm.take()
                yield key, count, pairs, labels, in_batch
                key, out = new_buffer()
                in_batch = []
            base = asm.count
            corners = asm.add(im.shape, start, cols, rows, rng)
            preprocess.prep_grid(im, corners, rng, nprng, out[base:],
                                 projection, reference)
        in_batch.append(index)
    if asm.count:
        count = asm.count
        pairs, labels = asm.take()
        yield key, count, pairs, labels, in_batch


def as_image_source(images):
    """An ImageSource for a list of paths (or the source itself)."""
    if isinstance(images, ImageSource):
        return images
    return ImageSet(list(images), 'list', '%d images' % len(images))


def pretext_batches(images, seed=0, batch_size=256,
                    grids_per_image=sampling.GRIDS_PER_IMAGE,
                    projection=False, report=print, reference=False):
    """Batches of the pretext task over a finite, ordered set of images.

    As training (see the module docstring), except that each image has its
    own generators (:func:`image_rngs` of ``seed`` and its index), so its
    patches do not depend on the images before or after it.  ``reference``
    runs the numpy code (see the module docstring).

    Parameters
    ----------
    images : list of paths, or an ImageSource

    Yields
    ------
    data : (N, 3, 96, 96) float32
    pairs : (P, 2) int64
    labels : (P,) int64
    images : list of int, indices of the images in the batch
    """
    source = as_image_source(images)

    def seeded():
        for index in range(len(source)):
            rng, nprng = image_rngs(seed, index, reference)
            im = usable_image(source, index, rng, report, reference)
            if im is not None:
                yield index, im, rng, nprng

    def new_buffer():   # a fresh array per batch, which is its own key
        data = np.empty((batch_size,) + sampling.PATCH_SHAPE, np.float32)
        return data, data

    for data, count, pairs, labels, used in assemble_batches(
            seeded(), new_buffer, batch_size, projection, grids_per_image,
            reference):
        yield data[:count], pairs, labels, used


def real_patches(images, count, seed=0):
    """``count`` preprocessed 96x96 patches from real images (N, 3, 96, 96).

    The pretext task's own sampler (:func:`pretext_batches`: training's
    resizing, grids and preprocessing, with fixed seeds), one grid per
    image, so a check sees the inputs the network was made for.  Few images
    are walked again with the next seed until there are ``count`` patches.
    """
    out = []
    for attempt in range(count):
        for data, _, _, _ in pretext_batches(images, seed + attempt,
                                             grids_per_image=1,
                                             report=lambda msg: None):
            out.extend(data)
            if len(out) >= count:
                return np.stack(out[:count])
        if not out:
            raise ValueError('no usable image among %d' % len(images))
    return np.stack(out)
