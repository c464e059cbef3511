"""The image-to-batch pipeline (deepcontext/data/batches.py).

The loader's use of the same pipeline is tested in test_loader.py.
"""
import numpy as np

from conftest import held_out
from deepcontext.data import batches


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
