"""The image-to-batch pipeline (deepcontext/data/batches.py).

The loader's use of the same pipeline is tested in test_loader.py.
"""
import random

import numpy as np
from PIL import Image

from conftest import held_out
from deepcontext.data import batches
from deepcontext.data.imageset import ImageSet


def test_pretext_batches_are_seeded_per_image():
    both = list(batches.pretext_batches(held_out(2), seed=3,
                                        batch_size=64, grids_per_image=1))
    first = list(batches.pretext_batches(held_out(1), seed=3,
                                         batch_size=64, grids_per_image=1))
    # The first image's patches do not depend on the images after it.
    n = len(first[0][0])
    assert sum(len(x[0]) for x in both) > n > 0
    assert np.array_equal(both[0][0][:n], first[0][0])
    other = next(batches.pretext_batches(held_out(1), seed=4,
                                         batch_size=64, grids_per_image=1))
    assert not np.array_equal(other[0][:n], first[0][0][:len(other[0])])
    for data, pairs, labels, _ in both:
        assert data.shape[1:] == (3, 96, 96) and len(data) < 64
        assert pairs.max() < len(data) and set(labels) <= set(range(8))


def test_tiny_images_are_reported_once_and_skipped_on_request(tmp_path):
    """A 1x1 image is upscaled to ~390x390 and used, as in 2015: reported
    (once per set), and skipped with min_source_side; the draws that follow
    are the same either way."""
    paths = []
    for i, (w, h) in enumerate([(1, 1), (200, 150), (600, 500)]):
        paths.append(str(tmp_path / ('%d.png' % i)))
        Image.new('RGB', (w, h), (i * 80, 30, 60)).save(paths[-1])
    images = ImageSet(paths, 'list', 'three')
    said, seen = [], set()
    rng = random.Random(3)
    for index in (0, 1, 2, 0, 1):
        im = batches.usable_image(images, index, rng, said.append,
                                  upscaled=seen)
        assert im is not None and min(im.shape[:2]) > 247
    assert seen == {0, 1} and len(said) == 2
    assert said[0].startswith('image 0 (%s): 1x1 upscaled to ' % paths[0])
    assert said[1].startswith('image 1 (%s): 200x150 upscaled to ' % paths[1])
    said, rng = [], random.Random(3)
    used = [batches.usable_image(images, i, rng, said.append,
                                 min_source_side=247) is not None
            for i in (0, 1, 2)]
    assert used == [False, False, True]
    assert said == ['skipping image 0 (%s): 1x1, smaller than min_source_side'
                    ' 247' % paths[0],
                    'skipping image 1 (%s): 200x150, smaller than '
                    'min_source_side 247' % paths[1]]
    off = random.Random(3)
    for i in (0, 1, 2):
        batches.usable_image(images, i, off, said.append)
    assert rng.getstate() == off.getstate()
