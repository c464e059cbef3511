"""Patch-pair geometry: labels against true grid positions, counts, bounds."""
import random

import numpy as np
import pytest

from deepcontext.data import sampling as S

CELL = S.PATCH_SIZE + S.GAP


def test_pos2lbl_table():
    # 0 1 2 / 3 . 4 / 5 6 7, as the original pos2lbl (1..8 there, minus 1).
    want = {(-1, -1): 0, (0, -1): 1, (1, -1): 2, (-1, 0): 3, (1, 0): 4,
            (-1, 1): 5, (0, 1): 6, (1, 1): 7}
    for pos, lbl in want.items():
        assert S.pos2lbl(pos) == lbl
        assert isinstance(S.pos2lbl(pos), int)
        assert S.lbl2pos(lbl) == pos
    with pytest.raises(ValueError):
        S.pos2lbl((0, 0))


def expected_pair_count(cols, rows):
    left = (cols - 1) * rows
    up = cols * (rows - 1)
    diagonal = 2 * (cols - 1) * (rows - 1)
    return 2 * (left + up + diagonal)


@pytest.mark.parametrize('shape', [(248, 248), (300, 500), (387, 1161),
                                   (600, 750), (1161, 387), (250, 1000)])
def test_grid_labels_are_true_relative_positions(shape):
    rng = random.Random(sum(shape))
    for _ in range(40):
        corners, cells, pairs, labels = S.sample_grid(shape, rng,
                                                      first_index=5)
        cols = max(c[0] for c in cells) + 1
        rows = max(c[1] for c in cells) + 1
        assert len(corners) == cols * rows
        assert len(pairs) == len(labels) == expected_pair_count(cols, rows)
        for x, y in corners:   # inside the image
            assert 0 <= x <= shape[1] - S.PATCH_SIZE
            assert 0 <= y <= shape[0] - S.PATCH_SIZE
        for (a, b), lbl in zip(pairs, labels):
            ca, cb = cells[a - 5], cells[b - 5]
            assert S.pos2lbl((cb[0] - ca[0], cb[1] - ca[1])) == lbl
            # the pixels agree: jitter and clamping stay below half a cell
            (xa, ya), (xb, yb) = corners[a - 5], corners[b - 5]
            assert round((xb - xa) / CELL) == cb[0] - ca[0]
            assert round((yb - ya) / CELL) == cb[1] - ca[1]
        # both directions of every pair
        assert sorted(pairs) == sorted((b, a) for a, b in pairs)


def test_grid_size_rule_and_offset_range():
    rng = random.Random(0)
    starts = [S.grid_start(rng) for _ in range(2000)]
    xs = [s[0] for s in starts]
    assert min(xs) == 0 and max(xs) == S.PATCH_SIZE + S.GAP - 1
    # cols = floor((W + gap - startx) / (patch + gap)), the original's rule
    assert S.grid_size((300, 500), (0, 0)) == (3, 2)
    assert S.grid_size((300, 500), (143, 143)) == (2, 1)
    assert S.grid_size((248, 248), (0, 0)) == (2, 2)


def test_jitter_is_at_most_7():
    rng = random.Random(1)
    for _ in range(500):
        x, y = S.sample_patch(1, 1, (20, 20), (1000, 1000), rng)
        assert abs(x - (20 + CELL)) <= S.JITTER
        assert abs(y - (20 + CELL)) <= S.JITTER


def test_batches_close_before_512_patches():
    rng = random.Random(2)
    asm = S.BatchAssembler(512)
    sizes, sizes_at_close = [], []
    shape = (520, 860)
    for _ in range(300):
        start, cols, rows, closes = asm.plan_grid(shape, rng)
        if closes:
            sizes_at_close.append(asm.count)
            pairs, labels = asm.take()
            assert pairs.shape == (len(labels), 2)
            assert pairs.max() < sizes_at_close[-1]
        corners = asm.add(shape, start, cols, rows, rng)
        sizes.append(len(corners))
        assert asm.count < 512
    assert sizes_at_close and max(sizes_at_close) < 512
    # a batch is closed only when the next grid would reach 512
    assert min(sizes_at_close) >= 512 - max(sizes)


def test_labels_balanced_between_opposite_directions():
    rng = random.Random(3)
    counts = np.zeros(8, int)
    for _ in range(50):
        _, _, _, labels = S.sample_grid((480, 640), rng)
        counts += np.bincount(labels, minlength=8)
    assert all(counts[l] == counts[7 - l] for l in range(8))


def test_target_shape_keeps_aspect_and_pixels():
    h, w = S.target_shape((480, 640, 3), 300000)
    assert abs(h * w - 300000) < h + w
    assert abs(w / h - 640 / 480) < 0.01
    assert S.min_image_side() == 2 * 96 + 48 + 7


def test_plan_grid_refuses_a_grid_that_cannot_fit_a_batch():
    """A 2x2 grid (4 patches) never fits a batch of 4 (at most 3 patches)."""
    asm = S.BatchAssembler(batch_size=4)
    with pytest.raises(ValueError, match='does not fit a batch of 4'):
        # 400 px a side: 2 or 3 cells whatever the offset
        asm.plan_grid((400, 400, 3), random.Random(0))
    start, cols, rows, closes = S.BatchAssembler(batch_size=10).plan_grid(
        (400, 400, 3), random.Random(0))
    assert cols * rows < 10 and not closes
