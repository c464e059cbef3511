"""Image sources and decoding for the patch loader.

Two concerns live here, both free of Caffe so they can be tested and used in
loader worker processes on their own:

* ``load_rgb`` decodes one file into an ``H x W x 3`` ``uint8`` array, the
  replacement for the ``scipy.misc.imread`` call of the original
  cdoersch/deepcontext ``train.py`` (gone from SciPy).  Every failure becomes
  an ``ImageError`` naming the file, so the loader can skip the image with a
  message, as the original skipped "broken image id"s.
* ``ImageSet`` is the deterministic, ordered list of image paths that the
  loader indexes into.  The original used the index in this list as an image
  ID, so the order must not depend on the file system.  Sources are an ImageNet
  root (``train.txt`` plus ``train/``, as the original ``load_imageset``), a
  folder searched recursively, a text file listing paths, or a Python list or
  tuple of any of these.  ``open_image_source`` also opens Caffe LMDBs
  (``deepcontext/lmdb_source.py``).

Every image source has the interface the loader uses: ``len(source)``,
``source.describe()`` and ``source.load(index, target_pixels=None)``, which
returns ``H x W x 3`` ``uint8`` RGB or raises ``ImageError``.

JPEG draft mode (``draft=True``, off by default): libjpeg can decode a JPEG
at 1/2, 1/4 or 1/8 scale inside its inverse DCT, which is faster than a full
decode and leaves a smaller image to resize.  ``load`` then decodes at the
smallest such scale that still leaves the image at least ``DRAFT_MARGIN``
times the size it will be resized to, on both sides.  It is not the
original's behaviour: the DCT scaling averages pixels, so the 2015 bilinear
resize that follows, which has no anti-aliasing, aliases less and the images
come out less sharp (measured by ``bench/jpeg_draft.py``; see README, "Image
sources and LMDB").

Limits and deliberate behaviour:

* EXIF orientation is NOT applied: ``scipy.misc.imread`` ignored it, and
  training should see the same pixels as the original did.
* Alpha is dropped without compositing (the original kept channels 0-2).
* Only the first frame of multi-frame files (GIF, TIFF) is read.
* Files listed in ``train.txt`` or a list file are not checked for existence
  up front: ImageNet has 1.28M of them; a missing one fails in ``load_rgb``.
* ``load_rgb`` changes the process-wide warnings filters for the duration of
  the call (``warnings.catch_warnings``), which is not thread-safe; the loader
  uses processes, not threads.
"""

import io
import os
import struct
import warnings

import numpy as np
from PIL import Image

from deepcontext import sampling

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

# What an LMDB source is called in a spec string: 'lmdb:/path/to/db'.
LMDB_PREFIX = 'lmdb:'


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
        For any failure: missing or empty file, not an image, truncated data,
        an image over Pillow's decompression-bomb limit, or an unsupported
        pixel mode.
    """
    path = os.fspath(path)
    try:
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


class ImageSet:
    """A deterministic, ordered list of image file paths.

    The position of a path in ``paths`` is the image's ID for the loader, so
    every constructor returns the same order for the same input on any
    machine.  Build one with a classmethod or ``ImageSet.open(spec)``.

    Parameters
    ----------
    paths : list of str
        Absolute image paths, in order.
    kind : str
        Kind of source, for ``describe()`` (e.g. ``'folder'``).
    source : str
        The source itself, for ``describe()`` (e.g. the folder).
    draft : bool
        Decode JPEGs in draft mode in ``load`` (see the module docstring).
    """

    def __init__(self, paths, kind, source, draft=False):
        self.paths = list(paths)
        self.kind = kind
        self.source = source
        self.draft = draft

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        return self.paths[index]

    def load(self, index, target_pixels=None):
        """Decode image ``index``.

        Parameters
        ----------
        index : int
            Position in ``paths``, the image's ID.
        target_pixels : int or None
            The number of pixels the caller will resize the image to; used
            only in draft mode.

        Returns
        -------
        numpy.ndarray
            ``(H, W, 3)`` uint8 RGB, as ``load_rgb``.

        Raises
        ------
        ImageError
            Naming the file, if it cannot be decoded.
        """
        return load_rgb(self.paths[index],
                        target_pixels if self.draft else None)

    def __repr__(self):
        return '<ImageSet {}>'.format(self.describe())

    def describe(self):
        """One line saying where the images come from and how many there are.

        Returns
        -------
        str
        """
        return '{} {}: {} images'.format(self.kind, self.source,
                                         len(self.paths))

    @classmethod
    def from_imagenet_root(cls, root):
        """Images listed in ``root/train.txt``, relative to ``root/train/``.

        Mirrors the original ``load_imageset``: the first whitespace-separated
        column of every non-empty line is a path under ``root/train/``, kept
        in file order.  Listed files are not checked for existence.

        Parameters
        ----------
        root : str or os.PathLike
            ImageNet root folder, containing ``train.txt`` and ``train/``.

        Returns
        -------
        ImageSet

        Raises
        ------
        FileNotFoundError
            If ``root`` or ``root/train.txt`` does not exist.
        ValueError
            If ``train.txt`` lists no image.
        """
        root = _existing_abspath(root)
        list_file = os.path.join(root, 'train.txt')
        if not os.path.isfile(list_file):
            raise FileNotFoundError('ImageNet root {} has no train.txt'.format(
                root))
        train_dir = os.path.join(root, 'train')
        paths = []
        # Bytes + os.fsdecode, so file names that are not valid UTF-8 still
        # name the right file (the original opened train.txt with 'rb').
        with open(list_file, 'rb') as f:
            for line in f:
                fields = line.split()
                if fields:
                    paths.append(os.path.normpath(
                        os.path.join(train_dir, os.fsdecode(fields[0]))))
        return cls._nonempty(paths, 'ImageNet root', root)

    @classmethod
    def from_folder(cls, folder):
        """All image files under ``folder``, searched recursively.

        Files are recognised by extension (``IMAGE_EXTENSIONS``, any case) and
        sorted by their path relative to ``folder`` (a plain string sort),
        because ``os.walk`` order depends on the file system.  Hidden files
        and folders (name starting with ``.``, e.g. macOS ``._x.jpg`` resource
        forks) are skipped, and symbolic links to folders are not followed
        (no cycles).

        Parameters
        ----------
        folder : str or os.PathLike
            The folder to search.

        Returns
        -------
        ImageSet

        Raises
        ------
        FileNotFoundError
            If ``folder`` does not exist.
        ValueError
            If no image file is found.
        """
        folder = _existing_abspath(folder)
        relpaths = []
        for dirpath, dirnames, filenames in os.walk(folder):
            # Pruning in place stops os.walk descending into hidden folders.
            dirnames[:] = [d for d in dirnames if not d.startswith('.')]
            for name in filenames:
                if (not name.startswith('.')
                        and name.lower().endswith(IMAGE_EXTENSIONS)):
                    relpaths.append(os.path.relpath(
                        os.path.join(dirpath, name), folder))
        # Sort on '/'-separated strings so the order, and so the image IDs,
        # are the same on every platform.
        relpaths.sort(key=lambda p: p.replace(os.sep, '/'))
        paths = [os.path.join(folder, p) for p in relpaths]
        return cls._nonempty(paths, 'folder', folder)

    @classmethod
    def from_list(cls, list_file):
        """Images named one per line in a text file.

        Blank lines and lines starting with ``#`` are skipped; leading and
        trailing white space is removed.  Relative paths are resolved against
        the folder of ``list_file``, not the current directory, so a list
        stays valid wherever it is used from.  Listed files are not checked
        for existence.

        Parameters
        ----------
        list_file : str or os.PathLike
            The text file.

        Returns
        -------
        ImageSet

        Raises
        ------
        FileNotFoundError
            If ``list_file`` does not exist.
        ValueError
            If it lists no image.
        """
        list_file = _existing_abspath(list_file)
        base = os.path.dirname(list_file)
        paths = []
        with open(list_file, 'rb') as f:
            data = f.read()
        # A byte-order mark from a Windows editor would otherwise become part
        # of the first file name.
        if data.startswith(b'\xef\xbb\xbf'):
            data = data[3:]
        for line in data.splitlines():
            line = line.strip()
            if line and not line.startswith(b'#'):
                paths.append(os.path.normpath(
                    os.path.join(base, os.fsdecode(line))))
        return cls._nonempty(paths, 'list', list_file)

    @classmethod
    def open(cls, spec):
        """Build an ImageSet from whatever ``spec`` names.

        Parameters
        ----------
        spec : str, os.PathLike, ImageSet, list or tuple
            * a folder containing ``train.txt``: ``from_imagenet_root``;
            * another folder: ``from_folder``;
            * an image file (by extension, ``IMAGE_EXTENSIONS``): that image
              alone (checked to exist, unlike the paths inside a list);
            * any other file: ``from_list``;
            * an ``ImageSet``: returned unchanged;
            * a list or tuple: the union of its elements, each opened as
              above, in the given order and without repeats (the first
              occurrence is kept).

        Returns
        -------
        ImageSet

        Raises
        ------
        FileNotFoundError
            If a named path does not exist.
        ValueError
            If the source, or one element of a list, holds no image.
        """
        if isinstance(spec, ImageSet):
            return spec
        if isinstance(spec, (list, tuple)):
            return cls._union(spec)
        if lmdb_path(spec) is not None:
            # An LMDB's record index is its image ID; a union would need a
            # second numbering, so an LMDB is only accepted on its own.
            raise ValueError('{} is an LMDB: name it alone as the image '
                             'source, not in a list'.format(spec))
        path = _existing_abspath(spec)
        if os.path.isdir(path):
            if os.path.isfile(os.path.join(path, 'train.txt')):
                return cls.from_imagenet_root(path)
            return cls.from_folder(path)
        if path.lower().endswith(IMAGE_EXTENSIONS):
            # Reading an image as a list file would yield garbage paths.
            return cls([path], 'image', path)
        return cls.from_list(path)

    @classmethod
    def _union(cls, specs):
        """The ordered, duplicate-free union of several sources."""
        if not specs:
            raise ValueError('empty list of image sources')
        paths = []
        seen = set()
        parts = []
        for spec in specs:
            part = cls.open(spec)
            parts.append(part)
            for p in part.paths:
                if p not in seen:
                    seen.add(p)
                    paths.append(p)
        shown = [p.describe() for p in parts[:4]]
        if len(parts) > 4:
            shown.append('and {} more'.format(len(parts) - 4))
        return cls(paths, 'union of', '[{}]'.format('; '.join(shown)))

    @classmethod
    def _nonempty(cls, paths, kind, source):
        """An ImageSet, or ValueError naming ``source`` if it has no path."""
        if not paths:
            raise ValueError('no images found in {} {}'.format(kind, source))
        return cls(paths, kind, source)


def open_image_source(spec, draft=False):
    """Open the image source ``spec`` names.

    Parameters
    ----------
    spec : str, os.PathLike, list, tuple or an image source
        * ``'lmdb:/path'``, or a folder holding ``data.mdb``: a Caffe LMDB
          (``lmdb_source.LmdbImageSet``), alone, not in a list;
        * anything else ``ImageSet.open`` accepts: image files;
        * an already opened source (anything with ``load``): returned
          unchanged, ``draft`` ignored.
    draft : bool
        Decode JPEGs in draft mode (see the module docstring).

    Returns
    -------
    ImageSet or lmdb_source.LmdbImageSet
        Either has ``len``, ``describe()`` and ``load(index,
        target_pixels=None)``.
    """
    if not isinstance(spec, (str, os.PathLike, list, tuple)):
        if hasattr(spec, 'load') and hasattr(spec, 'describe'):
            return spec
        raise TypeError('not an image source: {!r}'.format(spec))
    db = lmdb_path(spec)
    if db is not None:
        # Imported here: lmdb_source needs pycaffe (caffe_pb2) and lmdb,
        # which sources of plain files do not.
        from deepcontext import lmdb_source
        return lmdb_source.LmdbImageSet(db, draft=draft)
    image_set = ImageSet.open(spec)
    image_set.draft = draft
    return image_set


def lmdb_path(spec):
    """The LMDB folder ``spec`` names, or None if it names none.

    Parameters
    ----------
    spec : anything ``open_image_source`` accepts
        ``'lmdb:/path'`` names ``/path``; a folder that holds ``data.mdb``
        names itself.

    Returns
    -------
    str or None
    """
    if isinstance(spec, str) and spec.startswith(LMDB_PREFIX):
        return spec[len(LMDB_PREFIX):]
    if isinstance(spec, (str, os.PathLike)) and os.path.isfile(
            os.path.join(os.fspath(spec), 'data.mdb')):
        return os.fspath(spec)
    return None


def _existing_abspath(path):
    """``os.path.abspath(path)``, or FileNotFoundError naming ``path``."""
    path = os.path.abspath(os.fspath(path))
    if not os.path.exists(path):
        raise FileNotFoundError('no such file or folder: {}'.format(path))
    return path
