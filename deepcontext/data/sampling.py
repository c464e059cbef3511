"""Patch-pair sampling of the context-prediction task: pure and seedable.

This is the geometry of the original ``train.py`` (cdoersch/deepcontext):
a grid of 96x96 patches with a 48-pixel gap is laid over the image at a
random offset, each patch is jittered by up to 7 pixels, and every patch is
paired with its up-left, up, up-right and left neighbours, in both orders.
The label of a pair (first, second) is where the second patch lies relative
to the first, numbered as the original ``pos2lbl``::

    0 1 2
    3 . 4
    5 6 7

Nothing here touches files, processes or Caffe: functions take an explicit
``random.Random`` and return plain Python/numpy values, so the tests can
check every label against the true grid positions.
"""
import math

import numpy as np

PATCH_SIZE = 96     # side of a square patch, pixels
GAP = 48            # gap between neighbouring patches of a grid, pixels
JITTER = 7          # each patch moves by up to this much in x and in y
GRIDS_PER_IMAGE = 4
BATCH_SIZE = 512    # a batch holds fewer patches than this
PATCH_SHAPE = (3, PATCH_SIZE, PATCH_SIZE)   # one patch as the net sees it
NUM_LABELS = 8      # relative positions (pos2lbl)
# Loss of an 8-way softmax that answers uniformly: ln 8 = 2.079 per pair.
CHANCE_LOSS = math.log(NUM_LABELS)

# (dx, dy) of the neighbours each patch is paired with, in the original order.
NEIGHBOURS = ((-1, -1), (0, -1), (1, -1), (-1, 0))


def pos2lbl(pos):
    """Label of an (dx, dy) grid offset, as the original ``pos2lbl``.

    Parameters
    ----------
    pos : (int, int)
        Offset of the second patch from the first, in grid cells; dy grows
        downwards.  Both in {-1, 0, 1}, not both 0.

    Returns
    -------
    int in 0..7
    """
    dx, dy = pos
    if dy == -1:
        return dx + 1
    if dy == 0:
        # The original wrote (posx + 7) / 2: integer division in Python 2.
        if dx not in (-1, 1):
            raise ValueError('no label for offset %r' % (pos,))
        return (dx + 7) // 2
    if dy != 1:
        raise ValueError('no label for offset %r' % (pos,))
    return dx + 6


def lbl2pos(lbl):
    """Inverse of :func:`pos2lbl`."""
    return LABEL_POSITIONS[lbl]


LABEL_POSITIONS = {pos2lbl((dx, dy)): (dx, dy)
                   for dy in (-1, 0, 1) for dx in (-1, 0, 1)
                   if (dx, dy) != (0, 0)}


def min_image_side(patch=PATCH_SIZE, gap=GAP, jitter=JITTER):
    """Images must be larger than this on both sides to be used (original)."""
    return 2 * patch + gap + jitter


def grid_start(rng, patch=PATCH_SIZE, gap=GAP):
    """Random upper-left corner of a grid, uniform in [0, patch+gap-1]^2."""
    startx = rng.randint(0, patch + gap - 1)
    starty = rng.randint(0, patch + gap - 1)
    return startx, starty


def grid_size(im_shape, start, patch=PATCH_SIZE, gap=GAP):
    """Number of grid cells (cols, rows) that fit, as the original computed.

    Parameters
    ----------
    im_shape : (height, width, ...)
    start : (startx, starty)
    """
    cols = (im_shape[1] + gap - start[0]) // (patch + gap)
    rows = (im_shape[0] + gap - start[1]) // (patch + gap)
    return cols, rows


def sample_patch(x, y, start, im_shape, rng, patch=PATCH_SIZE, gap=GAP,
                 jitter=JITTER):
    """Upper-left pixel of the jittered patch at grid cell (x, y).

    The jittered position is clamped into the image; the clamp moves a patch
    by less than ``gap`` (asserted, as in the original).

    Returns
    -------
    (xpix, ypix) : ints
    """
    xpix = start[0] + x * (patch + gap) + rng.randint(-jitter, jitter)
    xclamp = min(max(xpix, 0), im_shape[1] - patch)
    ypix = start[1] + y * (patch + gap) + rng.randint(-jitter, jitter)
    yclamp = min(max(ypix, 0), im_shape[0] - patch)
    assert abs(xpix - xclamp) < gap and abs(ypix - yclamp) < gap
    return xclamp, yclamp


def sample_grid(im_shape, rng, first_index=0, patch=PATCH_SIZE, gap=GAP,
                jitter=JITTER):
    """Sample one grid of patches and their pairs.

    Parameters
    ----------
    im_shape : (height, width, ...)
    rng : random.Random
    first_index : int
        Batch index given to the grid's first patch.

    Returns
    -------
    corners : list of (xpix, ypix), one per patch, row-major over the grid
    cells : list of (x, y) grid cell of each patch
    pairs : list of (i, j) batch indices (first, second)
    labels : list of int, position of the second patch relative to the first
    """
    start = grid_start(rng, patch, gap)
    cols, rows = grid_size(im_shape, start, patch, gap)
    return grid_pairs(im_shape, start, cols, rows, rng, first_index, patch,
                      gap, jitter)


def grid_pairs(im_shape, start, cols, rows, rng, first_index=0,
               patch=PATCH_SIZE, gap=GAP, jitter=JITTER):
    """Patches and pairs of a grid whose start and size are already known."""
    corners, cells, pairs, labels = [], [], [], []
    index = {}
    j = first_index
    for y in range(rows):
        for x in range(cols):
            corners.append(sample_patch(x, y, start, im_shape, rng, patch,
                                        gap, jitter))
            cells.append((x, y))
            index[x, y] = j
            for dx, dy in NEIGHBOURS:
                nx, ny = x + dx, y + dy
                if nx < 0 or ny < 0 or nx >= cols:
                    continue
                pairs.append((j, index[nx, ny]))
                labels.append(pos2lbl((dx, dy)))
                pairs.append((index[nx, ny], j))
                labels.append(pos2lbl((-dx, -dy)))
            j += 1
    return corners, cells, pairs, labels


def target_shape(im_shape, target_pixels):
    """Size an image is resized to so it has about target_pixels pixels.

    The aspect ratio is kept; sides are truncated to integers as the
    original utils.get_resized_image did.
    """
    h, w = im_shape[:2]
    scale = np.sqrt(target_pixels / float(h * w))
    return int(h * scale), int(w * scale)


class BatchAssembler:
    """Collects grids into batches exactly as the original imgloader did.

    A batch is closed before a grid would bring it to ``batch_size``
    patches or more, so a batch holds at most ``batch_size - 1`` patches.
    The assembler keeps pair indices and labels; the caller crops the
    pixels at the corners :meth:`add` returns (so this module stays pure)::

        start, cols, rows, closes = asm.plan_grid(im.shape, rng)
        if closes:
            pairs, labels = asm.take()      # ship the batch
        corners = asm.add(im.shape, start, cols, rows, rng)
    """

    def __init__(self, batch_size=BATCH_SIZE, patch=PATCH_SIZE, gap=GAP,
                 jitter=JITTER):
        self.batch_size = batch_size
        self.patch, self.gap, self.jitter = patch, gap, jitter
        self.pairs, self.labels = [], []
        self.count = 0

    def plan_grid(self, im_shape, rng):
        """Draw a grid; return (start, cols, rows, closes_batch)."""
        start = grid_start(rng, self.patch, self.gap)
        cols, rows = grid_size(im_shape, start, self.patch, self.gap)
        if cols * rows >= self.batch_size:
            raise ValueError('a %dx%d grid does not fit a batch of %d'
                             % (cols, rows, self.batch_size))
        closes = cols * rows + self.count >= self.batch_size
        return start, cols, rows, closes

    def take(self):
        """Return (pairs Nx2, labels N) collected so far; start a new batch."""
        pairs = np.array(self.pairs, dtype=np.int64).reshape(-1, 2)
        labels = np.array(self.labels, dtype=np.int64)
        self.pairs, self.labels = [], []
        self.count = 0
        return pairs, labels

    def add(self, im_shape, start, cols, rows, rng):
        """Sample the planned grid into the batch; return its patch corners.

        The i-th corner belongs to batch index ``count_before + i``.
        """
        corners, _, pairs, labels = grid_pairs(
            im_shape, start, cols, rows, rng, self.count, self.patch,
            self.gap, self.jitter)
        self.pairs.extend(pairs)
        self.labels.extend(labels)
        self.count += len(corners)
        return corners
