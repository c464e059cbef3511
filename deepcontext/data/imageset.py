"""Image sources: the ordered sets of images the loader indexes into.

Every source is an :class:`ImageSource`: ``len(source)``,
``source.describe()``, ``source.name(index)`` and ``source.load(index,
target_pixels=None)``, which returns ``H x W x 3`` ``uint8`` RGB or raises
``decode.ImageError``.  The original used the position of an image in its
list as the image's ID, so the order must not depend on the file system.

:class:`ImageSet` holds image files: an ImageNet root (``train.txt`` plus
``train/``, as the original ``load_imageset``), a folder searched
recursively, a text file listing paths, or a Python list or tuple of any of
these.  Caffe LMDBs are the other kind (``lmdb_source.LmdbImageSet``);
``sources.open_image_source`` opens either from a spec.

Files listed in ``train.txt`` or a list file are not checked for existence
up front: ImageNet has 1.28M of them; a missing one fails in ``load``.
"""

import os

from deepcontext.data.decode import load_rgb

# Extensions, lower case, that ``ImageSet.from_folder`` treats as images.
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.tif', '.tiff',
                    '.webp', '.ppm', '.pgm')

# What an LMDB source is called in a spec string: 'lmdb:/path/to/db'.
LMDB_PREFIX = 'lmdb:'


class ImageSource:
    """What the loader and the tools read images from (a base class).

    Subclasses implement ``__len__``, :meth:`describe`, :meth:`name` and
    :meth:`load`; the image's index is its ID (its place in a fixed order).
    """

    def __len__(self):
        raise NotImplementedError

    def describe(self):
        """One line: where the images come from and how many there are."""
        raise NotImplementedError

    def name(self, index):
        """What to call image ``index`` in a message (a path, a key)."""
        raise NotImplementedError

    def load(self, index, target_pixels=None):
        """Decode image ``index`` into ``(H, W, 3)`` uint8 RGB.

        ``target_pixels`` is the size the caller will resize to (used by
        JPEG draft decoding only).  Raises ``decode.ImageError``.
        """
        raise NotImplementedError


class ImageSet(ImageSource):
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
        Decode JPEGs in draft mode in ``load`` (see ``decode``).
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

    def name(self, index):
        return self.paths[index]

    def load(self, index, target_pixels=None):
        """Decode file ``index`` (see :meth:`ImageSource.load`); JPEGs in
        draft mode when ``draft`` is set."""
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
