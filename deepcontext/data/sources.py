"""Open an image source from what a config or command line names."""
import os

from deepcontext.data.imageset import ImageSet, ImageSource, lmdb_path
from deepcontext.data.lmdb_source import LmdbImageSet


def open_image_source(spec, draft=False):
    """Open the image source ``spec`` names.

    Parameters
    ----------
    spec : str, os.PathLike, list, tuple or an image source
        * ``'lmdb:/path'``, or a folder holding ``data.mdb``: a Caffe LMDB
          (``lmdb_source.LmdbImageSet``), alone, not in a list;
        * anything else ``ImageSet.open`` accepts: image files;
        * an already opened ``ImageSource``: returned unchanged, ``draft``
          ignored.
    draft : bool
        Decode JPEGs in draft mode (see ``decode``).

    Returns
    -------
    ImageSet or LmdbImageSet, both ``ImageSource``s
    """
    if isinstance(spec, ImageSource):
        return spec
    if not isinstance(spec, (str, os.PathLike, list, tuple)):
        raise TypeError('not an image source: {!r}'.format(spec))
    db = lmdb_path(spec)
    if db is not None:
        return LmdbImageSet(db, draft=draft)
    image_set = ImageSet.open(spec)
    image_set.draft = draft
    return image_set
