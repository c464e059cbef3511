"""Image and patch preprocessing, with the numbers of the original train.py.

Resizing is part of those numbers.  The original resized through caffe.io,
i.e. scikit-image of 2015: bilinear interpolation (order 1), pixel centres
mapped as ``(i + 0.5) * scale - 0.5``, zeros outside the image, and no
anti-aliasing.  scikit-image >= 0.15 blurs before downsampling unless told
not to, which changes every downsampled patch.  :func:`resize_bilinear`
implements the 2015 algorithm directly (separably, which is also much
faster); ``tests/test_preprocess.py`` checks it against an independent
implementation and against today's scikit-image with
``anti_aliasing=False, mode='constant'``.

Randomness comes from explicit generators (``random.Random`` for the
scalar draws the original took from Python's ``random``, a numpy generator
for the noise channels it took from ``np.random``).

Two implementations of the loaders' work, switched by ``reference``:

* the reference (``reference=True``): numpy, per patch, noise from a
  ``RandomState`` in float64 (:func:`prep_patch_reference`), the code the
  loaders ran until issue 16;
* the fast path (the default): the whole-image resize and the per-patch
  work (crop, downsampling, colour dropping, RMS) in ``_patchops.c``, one
  call per image and per grid, computing only the kept channel, with the
  noise drawn as float32 from a numpy ``Generator`` (SFC64), one draw per
  grid.  The scalar draws from ``random.Random`` are the reference's, in
  its order, so the same seed keeps the same channels and downsamples the
  same patches to the same sides; only the noise values differ.  The
  resize equals the reference bit for bit, a patch given the same noise
  equals it to float32 rounding (tests/test_preprocess.py).
"""
import ctypes
import functools
import math
import os

import numpy as np

from deepcontext.data import sampling

# Probability that a patch is downsampled and upsampled again.  The paper
# says "1/3"; the original code tests random() < .33, kept here.
DOWNSAMPLE_PROB = .33
# A downsampled patch has side sqrt(U(10^2, 95^2)) pixels (100 to 9025 pixels).
DOWNSAMPLE_MIN_PIXELS = 10 * 10
DOWNSAMPLE_MAX_PIXELS = 95 * 95
TARGET_RMS = 50.0   # per-patch RMS after normalisation (about AlexNet's)
TARGET_PIXELS = (150000, 450000)   # images are resized to this many pixels

# Projection (paper, Sec. 3.1): remove the green-magenta colour axis, the
# axis along which chromatic aberration moves colours, instead of dropping
# channels.  B = I - a a^T / (a^T a), a = (-1, 2, -1).
_A = np.array([-1.0, 2.0, -1.0])
PROJECTION = np.eye(3) - np.outer(_A, _A) / _A.dot(_A)

_PATCHOPS = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                         '_patchops')


@functools.lru_cache(maxsize=1)
def _lib():
    """The compiled kernels (``_patchops.c``, built by ``make``)."""
    so, src = _PATCHOPS + '.so', _PATCHOPS + '.c'
    if not os.path.exists(so):
        raise RuntimeError('%s is not built: run `make venv` (or pass '
                           'reference=True for the numpy code)' % so)
    if os.path.exists(src) and os.path.getmtime(src) > os.path.getmtime(so):
        raise RuntimeError('%s is older than its source: run `make venv`'
                           % so)
    lib = ctypes.CDLL(so)
    ptr, i32, f32 = ctypes.c_void_p, ctypes.c_int, ctypes.c_float
    lib.dc_resize_u8.argtypes = [ptr, i32, i32, ptr, i32, i32, ptr, f32,
                                 ctypes.c_double, f32, f32]
    lib.dc_resize_u8.restype = i32
    lib.dc_prep_grid.argtypes = [ptr, i32, i32, ptr, ptr, ptr, ptr, ptr, f32]
    lib.dc_prep_grid.restype = None
    lib.dc_uniform_f32.argtypes = [ptr, ptr, ptr, ctypes.c_int64]
    lib.dc_uniform_f32.restype = None
    return lib


def uniform_float32(gen, shape):
    """``gen.random(shape, np.float32)``, drawn in C for an SFC64 Generator.

    The same numbers, and ``gen`` left in the same state, as numpy's own
    draw (tests/test_preprocess.py checks both), about 3x faster: numpy
    calls its generator through a function pointer per number.  Other
    generators are left to numpy.
    """
    bits = gen.bit_generator
    state = bits.state
    if state['bit_generator'] != 'SFC64':
        return gen.random(shape, np.float32)
    out = np.empty(shape, np.float32)
    s = np.array(state['state']['state'], np.uint64)
    extra = np.array([state['has_uint32'], state['uinteger']], np.uint32)
    _lib().dc_uniform_f32(s.ctypes.data, extra.ctypes.data, out.ctypes.data,
                          out.size)
    state['state']['state'] = s
    state['has_uint32'], state['uinteger'] = int(extra[0]), int(extra[1])
    bits.state = state
    return out


def _address(a, dtype, what):
    """Data pointer of a C-contiguous array of ``dtype`` for the kernels."""
    if a.dtype != dtype or not a.flags['C_CONTIGUOUS']:
        raise ValueError('%s must be a C-contiguous %s array, not %s%s'
                         % (what, np.dtype(dtype).name, a.dtype,
                            '' if a.flags['C_CONTIGUOUS'] else
                            ' (not contiguous)'))
    return a.ctypes.data


@functools.lru_cache(maxsize=4096)
def _taps(n_in, n_out):
    """Source pixels and weights of 1-D bilinear resampling, 2015 style.

    Output pixel i samples the input at x = (i + .5) * n_in / n_out - .5,
    between pixels floor(x) and floor(x) + 1; a neighbour outside the image
    is zero, so it gets weight 0 (its index is clipped to stay valid).
    """
    x = (np.arange(n_out) + .5) * (n_in / n_out) - .5
    x0 = np.floor(x).astype(np.intp)
    f = x - x0
    x1 = x0 + 1
    w0 = np.where((x0 >= 0) & (x0 < n_in), 1 - f, 0.0)
    w1 = np.where((x1 >= 0) & (x1 < n_in), f, 0.0)
    taps = ((np.clip(x0, 0, n_in - 1), w0), (np.clip(x1, 0, n_in - 1), w1))
    for a in taps[0] + taps[1]:
        a.flags.writeable = False   # cached: shared by every caller
    return taps


def resize_bilinear(im, shape, offset=0.0, scale=None, dtype=np.float64):
    """Resize as skimage.transform.resize did in 2015 (caffe.io.resize).

    Bilinear interpolation (order 1), pixel centres mapped as
    ``(i + .5) * scale - .5``, zeros outside the image, no anti-aliasing.
    Bilinear interpolation is separable: this gathers the needed columns,
    then rows, touching only the source pixels it reads (whole images shrink
    10x faster than through scikit-image).  Values equal scikit-image's
    ``resize(order=1, mode='constant', anti_aliasing=False)`` to float64
    rounding; tests/test_preprocess.py checks both against the 2015
    algorithm.

    Parameters
    ----------
    im : (H, W) or (H, W, C) array
    shape : (height, width)
    offset, scale : the image is resized as ``(im - offset) * scale``
        (the zeros outside are zeros of that).  ``scale`` defaults to 1/255
        for uint8 input (scikit-image's conversion to [0, 1]), else 1.
    dtype : arithmetic and result type.  The loaders use float32, whose
        result they keep anyway (about 3x faster; differences ~1e-7 of the
        value range).

    Returns
    -------
    array of ``dtype``, shape (height, width[, C])
    """
    im = np.asarray(im)
    if scale is None:
        scale = 1 / 255.0 if im.dtype == np.uint8 else 1.0
    flat = im.ndim == 2
    src = im[:, :, None] if flat else im
    h, w, ch = src.shape
    oh, ow = int(shape[0]), int(shape[1])
    (xa, wa), (xb, wb) = _taps(w, ow)
    (ya, va), (yb, vb) = _taps(h, oh)
    # Work on (rows, width * channels) views: numpy's inner loops then run
    # along whole rows instead of over 3 channels (1.7x faster).
    src2 = src.reshape(h, w * ch)
    chans = np.arange(ch)
    # columns: (src - offset) * scale * w, in place where possible
    cols = np.take(src2, (xa[:, None] * ch + chans).ravel(),
                   axis=1).astype(dtype)
    other = np.take(src2, (xb[:, None] * ch + chans).ravel(),
                    axis=1).astype(dtype)
    if offset:
        cols -= dtype(offset)
        other -= dtype(offset)
    cols *= np.repeat(wa * scale, ch).astype(dtype)
    other *= np.repeat(wb * scale, ch).astype(dtype)
    cols += other
    # rows
    out = np.take(cols, ya, axis=0)
    out *= va.astype(dtype)[:, None]
    other = np.take(cols, yb, axis=0)
    other *= vb.astype(dtype)[:, None]
    out += other
    out = out.reshape(oh, ow, ch)
    return out[:, :, 0] if flat else out


def resize_image(im, shape):
    """caffe.io.resize_image: rescale to [0, 1], resize, scale back.

    The detour through [0, 1] means the zeros outside the image are, in the
    image's own units, its minimum value.

    Returns
    -------
    float32 array of shape (height, width, C)
    """
    lo, hi = float(im.min()), float(im.max())
    if hi <= lo:
        return np.full(tuple(shape) + im.shape[2:], lo, dtype=np.float32)
    out = resize_bilinear(im, shape, offset=lo, scale=1 / (hi - lo))
    return (out * (hi - lo) + lo).astype(np.float32)


def resize_to_pixels(im_uint8, target_pixels, reference=False):
    """The original utils.get_resized_image: float in [0, 1], ~N pixels.

    Equal, to float rounding, to ``resize_image(im_uint8 / 255., ...)``; the
    division is folded into the resize so the full-size image is never
    converted to float.  The C kernel (default) gives the numpy code's
    float32 result bit for bit, about 3x faster.

    Parameters
    ----------
    im_uint8 : (H, W, 3) uint8
    target_pixels : int, e.g. drawn from U{150000..450000}
    reference : bool, use the numpy code

    Returns
    -------
    float32 (h, w, 3) array, values in [0, 1]
    """
    shape = sampling.target_shape(im_uint8.shape, target_pixels)
    lo, hi = int(im_uint8.min()), int(im_uint8.max())
    if hi <= lo:
        return np.full(shape + (im_uint8.shape[2],), lo / 255.0,
                       dtype=np.float32)
    mul, add = np.float32((hi - lo) / 255.0), np.float32(lo / 255.0)
    if not reference and im_uint8.dtype == np.uint8 and \
            im_uint8.ndim == 3 and im_uint8.shape[2] == 3:
        src = np.ascontiguousarray(im_uint8)
        out = np.empty(shape + (3,), np.float32)
        cols = np.empty((src.shape[0], shape[1] * 3), np.float32)
        if _lib().dc_resize_u8(src.ctypes.data, src.shape[0], src.shape[1],
                               out.ctypes.data, shape[0], shape[1],
                               cols.ctypes.data, lo, 1.0 / (hi - lo), mul,
                               add):
            raise MemoryError('resizing a %dx%d image' % src.shape[:2])
        return out
    out = resize_bilinear(im_uint8, shape, offset=lo, scale=1.0 / (hi - lo),
                          dtype=np.float32)
    out *= mul
    out += add
    return out


def crop(im, corner, patch=sampling.PATCH_SIZE):
    """A patch at corner (x, y) of a [0, 1] image, as float32 in [0, 255]."""
    x, y = corner
    return im[y:y + patch, x:x + patch, :] * np.float32(255)


def downsample_side(rng):
    """The side a patch is downsampled to, or 0 to leave it alone.

    With probability ``DOWNSAMPLE_PROB`` the side is
    ``int(sqrt(U(100, 9025)))``; one or two ``rng.random()`` draws, as the
    original took them.
    """
    if rng.random() < DOWNSAMPLE_PROB:
        return int(math.sqrt(rng.random() *
                             (DOWNSAMPLE_MAX_PIXELS - DOWNSAMPLE_MIN_PIXELS) +
                             DOWNSAMPLE_MIN_PIXELS))
    return 0


def prep_grid(im, corners, rng, nprng, out, projection=False,
              reference=False):
    """Crop and preprocess the patches at ``corners`` into ``out[:n]``.

    What :func:`crop` and :func:`prep_patch_reference` do to each patch in
    turn.  The fast path (default) takes the scalar draws of every patch
    first (the reference's draws from ``rng``, in its order), then the noise
    of the whole grid in one float32 draw from ``nprng``, and does the rest
    in one C call.  With ``projection`` both paths run the reference (it
    draws no noise).

    Parameters
    ----------
    im : (H, W, 3) float32 in [0, 1], the resized image
    corners : list of (x, y), upper-left pixels of patches inside ``im``
    rng : random.Random
    nprng : numpy.random.Generator (fast path) or RandomState (reference)
    out : (>= n, 3, 96, 96) float32 array, C-contiguous (a batch buffer)
    projection, reference : bool

    Returns
    -------
    out[:n]
    """
    n = len(corners)
    if reference or projection:
        for i, corner in enumerate(corners):
            prep_patch_reference(crop(im, corner), rng, nprng, projection,
                                 out=out[i])
        return out[:n]
    xy = np.array(corners, dtype=np.int32).reshape(n, 2)
    if n and (xy.min() < 0 or xy[:, 0].max() + sampling.PATCH_SIZE >
              im.shape[1] or xy[:, 1].max() + sampling.PATCH_SIZE >
              im.shape[0]):
        raise ValueError('a patch at %s leaves the %dx%d image'
                         % (corners, im.shape[1], im.shape[0]))
    side = np.empty(n, np.int32)
    keep = np.empty(n, np.int32)
    for i in range(n):
        side[i] = downsample_side(rng)
        keep[i] = rng.randint(0, 2)
    noise = uniform_float32(nprng, (n, 2) + sampling.PATCH_SHAPE[1:])
    return prep_grid_given(im, xy, keep, side, noise, out)


def prep_grid_given(im, xy, keep, side, noise, out):
    """The fast path's deterministic part: patches given their draws.

    Parameters
    ----------
    im : (H, W, 3) float32, C-contiguous
    xy : (n, 2) int32 corners (x, y); keep, side : (n,) int32, as drawn by
        :func:`prep_grid`
    noise : (n, 2, 96, 96) float32 in [0, 1), the dropped channels in
        channel order (the reference's ``noise + .5``)
    out : (>= n, 3, 96, 96) float32, C-contiguous

    Returns
    -------
    out[:n]
    """
    n = len(xy)
    if im.ndim != 3 or im.shape[2] != 3 or noise.shape != (n, 2) + \
            sampling.PATCH_SHAPE[1:] or out.shape[1:] != sampling.PATCH_SHAPE \
            or len(out) < n or len(keep) != n or len(side) != n:
        raise ValueError('prep_grid_given: shapes do not match')
    _lib().dc_prep_grid(_address(im, np.float32, 'image'), im.shape[1], n,
                        _address(xy, np.int32, 'corners'),
                        _address(keep, np.int32, 'keep'),
                        _address(side, np.int32, 'side'),
                        _address(noise, np.float32, 'noise'),
                        _address(out, np.float32, 'out'), TARGET_RMS)
    return out[:n]


def prep_patch_reference(patch, rng, nprng, projection=False, out=None):
    """Preprocess one patch as the original prep_image did (numpy).

    The loaders' code until issue 16, kept as the reference the fast path
    (:func:`prep_grid`) is tested and benchmarked against.

    1. With probability .33, downsample to a random side
       sqrt(U(100, 9025)) and upsample back (bilinear, through uint8 as the
       original did).
    2. Colour dropping: keep one random channel minus its mean; replace the
       other two by U(-0.5, 0.5) noise.  With ``projection=True`` instead
       project out the green-magenta axis and remove each channel's mean.
    3. Scale so the patch's RMS is 50.

    The random draws are the original's, in its order (the two noise
    channels come from one draw of twice the size, the same numbers).  The
    result is written channel-first straight into ``out`` when given (the
    loader's batch buffer), so no full-patch copy is made.

    Parameters
    ----------
    patch : (H, W, 3) float32, values in [0, 255]; not modified
    rng : random.Random
    nprng : numpy.random.RandomState (unused with ``projection``)
    projection : bool
    out : optional (3, H, W) float32 array to fill

    Returns
    -------
    (3, H, W) float32, C-contiguous (``out`` if given)
    """
    im = patch
    if out is None:
        out = np.empty((3,) + im.shape[:2], dtype=np.float32)
    side = downsample_side(rng)
    if side:
        small = resize_bilinear(im.astype(np.uint8), (side, side),
                                dtype=np.float32)
        im = resize_bilinear(small, im.shape[:2], dtype=np.float32)
        im *= np.float32(255)
    if projection:
        proj = np.asarray(im, dtype=np.float32).dot(
            PROJECTION.astype(np.float32))
        proj -= proj.mean(axis=(0, 1), dtype=np.float64).astype(np.float32)
        out[...] = proj.transpose(2, 0, 1)
    else:
        keep = rng.randint(0, 2)
        chan = np.asarray(im[:, :, keep], dtype=np.float32)
        out[keep] = chan
        out[keep] -= np.mean(chan)
        noise = nprng.uniform(0, 1, (2,) + im.shape[:2])
        noise -= .5
        out[[c for c in range(3) if c != keep]] = noise
    rms = np.sqrt(np.mean(np.square(out)))
    if rms > 0:  # only a flat patch under projection has rms 0
        out /= rms
        out *= TARGET_RMS
    return out
