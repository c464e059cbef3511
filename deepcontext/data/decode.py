"""Decoding one image into ``H x W x 3`` uint8 RGB, with errors that name it.

``load_rgb`` (a file) and ``decode_rgb`` (bytes, e.g. an LMDB record) are the
replacement for the ``scipy.misc.imread`` call of the original
cdoersch/deepcontext ``train.py`` (gone from SciPy).  Every failure becomes
an ``ImageError`` naming the image, so the loader can skip it with a
message, as the original skipped "broken image id"s.  Free of Caffe, so
loader workers and tests use it on its own.

JPEG draft mode (``draft_pixels``, off unless the config's ``jpeg_draft``):
libjpeg can decode a JPEG at 1/2, 1/4 or 1/8 scale inside its inverse DCT,
which is faster than a full decode and leaves a smaller image to resize.
The image is then decoded at the smallest such scale that still leaves it
at least ``DRAFT_MARGIN`` times the size it will be resized to, on both
sides.  It is not the original's behaviour: the DCT scaling averages
pixels, so the 2015 bilinear resize that follows, which has no
anti-aliasing, aliases less and the images come out less sharp (measured by
``bench/jpeg_draft.py``; see docs/fidelity.md).

Limits and deliberate behaviour:

* EXIF orientation is NOT applied: ``scipy.misc.imread`` ignored it, and
  training should see the same pixels as the original did.
* Alpha is dropped without compositing (the original kept channels 0-2).
* Only the first frame of multi-frame files (GIF, TIFF) is read.
* ``load_rgb`` changes the process-wide warnings filters for the duration of
  the call (``warnings.catch_warnings``), which is not thread-safe; the loader
  uses processes, not threads.
"""

import io
import os
import stat
import struct
import warnings

import numpy as np
from PIL import Image

from deepcontext.data import sampling

# Extensions, lower case, that ``ImageSet.from_folder`` treats as images.
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.tif', '.tiff',
                    '.webp', '.ppm', '.pgm')

# What Pillow raises for files it cannot identify or decode.  Pillow plugins
# are not consistent: truncated data gives OSError, broken chunks SyntaxError,
# bad headers ValueError / EOFError / struct.error / IndexError.  Listing
# them, rather than catching Exception, keeps real programming errors
# (TypeError, NameError, ...) loud.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error,
                  IndexError)
# Everything ``_decode`` raises for bad input, after the cases that get
# their own message (missing file, unidentified image).
_FAILURES = (Image.DecompressionBombError,
             Image.DecompressionBombWarning) + _DECODE_ERRORS

# Draft mode decodes a JPEG at a reduced DCT scale only if the result is
# still at least this many times the resize target on both sides, so the
# bilinear resize that follows still shrinks it (bench/jpeg_draft.py).
DRAFT_MARGIN = 2


class ImageError(Exception):
    """An image file that cannot be decoded.

    Parameters
    ----------
    path : str
        The file that failed.
    reason : str
        Why it failed, in words.
    """

    def __init__(self, path, reason):
        # Passing both to Exception keeps the error picklable, so a loader
        # process can send it through a queue.
        super().__init__(path, reason)
        self.path = path
        self.reason = reason

    def __str__(self):
        return 'cannot load image {}: {}'.format(self.path, self.reason)


def load_rgb(path, draft_pixels=None):
    """Decode an image file into an RGB array.

    Parameters
    ----------
    path : str or os.PathLike
        The image file.
    draft_pixels : int or None
        The number of pixels the image will be resized to.  If given and
        the file is a JPEG, it is decoded at the smallest DCT scale (1, 1/2,
        1/4 or 1/8) that keeps it at least ``DRAFT_MARGIN`` times that size
        on both sides (see the module docstring).  None decodes at full size.

    Returns
    -------
    numpy.ndarray
        ``uint8`` array of shape ``(H, W, 3)``.  Grey images are replicated to
        three channels; alpha is dropped; 16- and 32-bit integer images are
        scaled by their bit depth to 0..255.

    Raises
    ------
    ImageError
        For any failure: missing or empty file, not a regular file (a FIFO
        named .jpg), not an image, truncated data,
        an image over Pillow's decompression-bomb limit, or an unsupported
        pixel mode.
    """
    path = os.fspath(path)
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            # a FIFO would block open() for ever, a device read for ever
            raise ImageError(path, 'not a regular file')
        return _decode(path, draft_pixels)
    except FileNotFoundError:
        raise ImageError(path, 'no such file') from None
    except Image.UnidentifiedImageError:
        reason = ('empty file' if os.path.isfile(path)
                  and os.path.getsize(path) == 0 else 'not a recognised image')
        raise ImageError(path, reason) from None
    except _FAILURES as err:
        raise ImageError(path, _reason(err)) from None


def decode_rgb(data, name, draft_pixels=None):
    """Decode an encoded image held in memory (e.g. a JPEG from an LMDB).

    Parameters
    ----------
    data : bytes
        The image file's bytes.
    name : str
        What to call the image in an ``ImageError`` (where it came from).
    draft_pixels : int or None
        As for ``load_rgb``.

    Returns
    -------
    numpy.ndarray
        ``uint8`` array of shape ``(H, W, 3)``, exactly what ``load_rgb``
        returns for a file holding ``data``.

    Raises
    ------
    ImageError
        With ``path`` set to ``name``, for the failures of ``load_rgb``.
    """
    try:
        return _decode(io.BytesIO(data), draft_pixels)
    except Image.UnidentifiedImageError:
        reason = 'empty data' if not data else 'not a recognised image'
        raise ImageError(name, reason) from None
    except _FAILURES as err:
        raise ImageError(name, _reason(err)) from None


def image_header(data, name):
    """Format and size of an encoded image, read from its header only.

    Much cheaper than decoding: the LMDB packer uses it to reject files that
    are not images without decoding every one.

    Parameters
    ----------
    data : bytes
        The image file's bytes.
    name : str
        What to call the image in an ``ImageError``.

    Returns
    -------
    (str, int, int)
        Pillow's format name (e.g. ``'JPEG'``), width and height.

    Raises
    ------
    ImageError
        If Pillow does not recognise the data as an image.
    """
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.format, img.size[0], img.size[1]
    except Image.UnidentifiedImageError:
        reason = 'empty data' if not data else 'not a recognised image'
        raise ImageError(name, reason) from None
    except _FAILURES as err:
        raise ImageError(name, _reason(err)) from None


def _reason(err):
    """The words of an ImageError for an exception from ``_decode``."""
    if isinstance(err, (Image.DecompressionBombError,
                        Image.DecompressionBombWarning)):
        return 'too many pixels (decompression bomb guard): {}'.format(err)
    return '{}: {}'.format(type(err).__name__, err)


def _decode(source, draft_pixels):
    """Open, optionally draft, and fully decode ``source`` (path or file)."""
    with warnings.catch_warnings():
        # Pillow only warns between MAX_IMAGE_PIXELS and twice that; for a
        # training loader a 90-megapixel image is as unwanted as a bigger
        # one, so the warning is turned into an error too.
        warnings.simplefilter('error', Image.DecompressionBombWarning)
        with Image.open(source) as img:
            if draft_pixels is not None:
                _draft(img, draft_pixels)
            # Image.open only reads the header; load() decodes, so that a
            # truncated file fails here and not later in the caller.  The
            # global ImageFile.LOAD_TRUNCATED_IMAGES is left False so a
            # half-decoded image is never passed on as valid data.
            img.load()
            # No ImageOps.exif_transpose: see the module docstring.
            return _to_rgb_array(img)


def _draft(img, target_pixels):
    """Ask Pillow to decode a JPEG at a reduced scale (see ``load_rgb``).

    Pillow picks the largest scale 1/s (s in 8, 4, 2, 1) whose result is at
    least the requested size, so requesting ``DRAFT_MARGIN`` times the
    resize target keeps that margin.  The mode is left alone (``None``), so
    grey and CMYK JPEGs convert exactly as in a full decode.
    """
    if img.format != 'JPEG':
        return
    width, height = img.size
    out_h, out_w = sampling.target_shape((height, width), target_pixels)
    if out_h >= 1 and out_w >= 1:
        img.draft(None, (DRAFT_MARGIN * out_w, DRAFT_MARGIN * out_h))


def _to_rgb_array(img):
    """Convert a decoded Pillow image of any mode to ``(H, W, 3)`` uint8."""
    mode = img.mode
    if mode == 'RGB':
        return np.array(img, dtype=np.uint8)
    if mode.startswith('I'):
        # Pillow's own convert('L') clips 16-bit values at 255, which turns
        # almost every 16-bit image white; scale by the bit depth instead.
        grey = np.array(img).astype(np.float64)
        full_scale = 2.0 ** _integer_bit_depth(img, grey) - 1
        grey = np.clip(np.round(grey * (255.0 / full_scale)), 0, 255)
        return _grey_to_rgb(grey)
    if mode == 'F':
        # Float images have no declared range.  Values in [0, 1] are read as
        # normalised intensities; anything else as 0..255 (what Pillow's
        # convert('L') assumes), clipped.
        grey = np.nan_to_num(np.array(img, dtype=np.float64), nan=0.0,
                             posinf=255.0, neginf=0.0)
        if grey.size and grey.min() >= 0.0 and grey.max() <= 1.0:
            grey = grey * 255.0
        return _grey_to_rgb(np.clip(np.round(grey), 0, 255))
    # L, P, PA, 1, LA, RGBA, RGBX, CMYK, YCbCr, ...: Pillow's conversion does
    # what scipy.misc.imread + "take 3 channels" did (grey replicated, palette
    # looked up, alpha ignored rather than composited).
    try:
        rgb = img.convert('RGB')
    except ValueError as err:
        raise ValueError('cannot convert mode {} to RGB ({})'.format(
            mode, err)) from None
    return np.array(rgb, dtype=np.uint8)


def _grey_to_rgb(grey):
    """Replicate a 2-D array of 0..255 values into ``(H, W, 3)`` uint8."""
    grey = grey.astype(np.uint8)
    return np.repeat(grey[:, :, np.newaxis], 3, axis=2)


def _integer_bit_depth(img, values):
    """Bits per sample of an integer-mode (``I``, ``I;16*``) Pillow image.

    Parameters
    ----------
    img : PIL.Image.Image
        The decoded image.
    values : numpy.ndarray
        Its pixel values, used only when the file does not declare a depth.

    Returns
    -------
    int
        The number of significant bits per sample.
    """
    # TIFF states its depth (it may be 12 in a 16-bit container).
    tags = getattr(img, 'tag_v2', None)
    if tags is not None and 258 in tags:
        bits = max(tags[258]) if isinstance(tags[258], tuple) else tags[258]
        if 1 <= bits <= 32:
            return int(bits)
    if img.mode.startswith('I;16'):
        return 16
    # Pillow stores 16-bit PNG / PPM (PPM already rescaled to 0..65535) as
    # 32-bit 'I'; their depth is 16.
    if img.format in ('PNG', 'PPM'):
        return 16
    # Unknown container: the smallest of 16 / 32 bits that holds the data.
    if values.size == 0 or values.max() <= 65535:
        return 16
    return 32
