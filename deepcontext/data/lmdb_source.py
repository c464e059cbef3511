"""Caffe LMDBs as image sources, and packing images into them.

ImageNet's 1.28M training images as separate files are slow to read from a
network disk; Caffe users already hold them as LMDBs written by Caffe's
``convert_imageset`` (e.g. ``ilsvrc12_train_lmdb``).  Each record of such a
database is a ``caffe_pb2.Datum``, in one of two forms:

* encoded (``encoded: true``): ``data`` is an image file's bytes (JPEG, PNG,
  any format Pillow reads), decoded here exactly as the file would be;
* raw: ``data`` is ``channels x height x width`` uint8 pixels, BGR as Caffe
  stores them; converted here to the RGB the original pipeline read.

Record index.  Records are numbered 0..n-1 in their keys' sorted order,
LMDB's own order; the record index is the image ID the loader uses, as the
original used the line number of ``train.txt``.  ``convert_imageset`` and
``pack`` write keys ``%08d_<name>`` with the source's line (image) number,
so the two agree, except after images the packer skipped as unreadable:
their numbers are left out of the keys, and the records that follow are
numbered one less per skipped image.  ``LmdbImageSet`` scans the keys once
when it is built (0.3 s for 1.28M keys) and keeps them in one bytes string
plus an array of offsets: no Python object per key, so forked workers do not
copy a million small objects page by page as their reference counts change.

Processes.  An LMDB environment must not be used across ``fork``.  The
environment is opened lazily by the first ``load`` in each process and
reopened when the process id has changed, so the loader can fork its
workers after building the source.  It is opened read-only, without the
lock file (``lock=False``: nothing may write to the database while it is
read) and without OS readahead (reads are random; readahead would fetch
pages never used).

Caffe compatibility.  ``pack`` writes what ``convert_imageset`` writes, and
Caffe's Data layer reads it.  Caffe decodes encoded records with OpenCV; this
project builds Caffe without OpenCV, so its Data layer reads only raw
databases (``pack(..., raw=True)``, ``tools/pack_lmdb.py --raw``).  Encoded
databases need an OpenCV-enabled Caffe for Caffe's own Data layer; this
module reads both.

Limits: ``pack`` writes label 0 (the pretext task has no labels); a resumed
``pack`` checks that the source and the form (encoded or raw) match the
records already written, but not ``max_side``; float (``float_data``)
records and channel counts other than 1 and 3 are refused as images.
"""
import array
import io
import os
import re
import time

import lmdb
import numpy as np
from google.protobuf.message import DecodeError
from PIL import Image

from caffe.proto import caffe_pb2
from deepcontext.data import decode, preprocess
from deepcontext.data.imageset import ImageSource

# Key of record i: '%08d_' % i + the image's name.  Eight digits keep keys
# in index order up to 10^8 records (ImageNet-22k has 14M images).
KEY_DIGITS = 8
MAX_RECORDS = 10 ** KEY_DIGITS
_KEY_INDEX = re.compile(rb'^(\d{%d})_' % KEY_DIGITS)

# Map size a new database starts with; ``pack`` doubles it whenever LMDB
# reports the map full.  On Linux the file grows with the data, not with
# the map size.
INITIAL_MAP_SIZE = 1 << 30

# JPEG quality of images that ``pack(max_side=...)`` shrinks and re-encodes.
REENCODE_JPEG_QUALITY = 95


class PackError(RuntimeError):
    """An LMDB that cannot be packed into (or resumed) as asked."""


def datum_to_rgb(value, name, draft_pixels=None):
    """Decode a serialised ``caffe_pb2.Datum`` into an RGB image.

    Parameters
    ----------
    value : bytes
        The record, as stored in the LMDB.
    name : str
        What to call the record in an ``ImageError`` (key and database).
    draft_pixels : int or None
        As for ``decode.load_rgb``; used by encoded JPEG records only.

    Returns
    -------
    numpy.ndarray
        ``(H, W, 3)`` uint8 RGB.  A one-channel raw record is replicated to
        three channels.

    Raises
    ------
    decode.ImageError
        If the record is not a Datum, holds no pixels, holds float data,
        has a channel count other than 1 or 3, or its size does not match
        its shape, or its encoded image cannot be decoded.
    """
    datum = caffe_pb2.Datum()
    try:
        datum.ParseFromString(value)
    except DecodeError as err:
        raise decode.ImageError(name, 'not a Caffe Datum ({})'.format(
            err)) from None
    if datum.encoded:
        return decode.decode_rgb(datum.data, name, draft_pixels)
    return _raw_to_rgb(datum, name)


def _raw_to_rgb(datum, name):
    """``(H, W, 3)`` RGB from a raw Datum (``C x H x W``, BGR)."""
    c, h, w = datum.channels, datum.height, datum.width
    if not datum.data:
        if len(datum.float_data):
            raise decode.ImageError(name, 'a float_data Datum, not uint8 '
                                    'image pixels')
        raise decode.ImageError(name, 'a Datum without pixels')
    if c not in (1, 3):
        raise decode.ImageError(name, 'a raw Datum with {} channels (an '
                                'image has 1 or 3)'.format(c))
    if h < 1 or w < 1 or len(datum.data) != c * h * w:
        raise decode.ImageError(name, 'a raw Datum of shape {}x{}x{} '
                                'holds {} bytes'.format(c, h, w,
                                                        len(datum.data)))
    chw = np.frombuffer(datum.data, dtype=np.uint8).reshape(c, h, w)
    if c == 1:
        return np.repeat(chw.transpose(1, 2, 0), 3, axis=2)
    # Caffe stores OpenCV's BGR order; the original pipeline read RGB.
    return np.ascontiguousarray(chw[::-1].transpose(1, 2, 0))


def rgb_to_datum(im):
    """A raw ``caffe_pb2.Datum`` of an RGB image, as Caffe stores pixels.

    Parameters
    ----------
    im : (H, W, 3) uint8 array, RGB

    Returns
    -------
    caffe_pb2.Datum
        ``channels=3``, BGR, ``C x H x W`` uint8 in ``data``, label 0.
    """
    datum = caffe_pb2.Datum()
    datum.channels, datum.height, datum.width = 3, im.shape[0], im.shape[1]
    datum.data = np.ascontiguousarray(im[:, :, ::-1].transpose(2, 0, 1),
                                      dtype=np.uint8).tobytes()
    datum.label = 0
    datum.encoded = False
    return datum


def _open_readonly(path):
    """A read-only, lock-free environment on the LMDB folder ``path``."""
    return lmdb.open(path, readonly=True, lock=False, readahead=False,
                     meminit=False, subdir=True)


class LmdbImageSet(ImageSource):
    """A Caffe LMDB of Datum records as an image source.

    ``len``, ``describe()`` and ``load(index, target_pixels)`` are what the
    loader uses, as for ``imageset.ImageSet``.  See the module docstring for
    the record index and for use across processes.

    Parameters
    ----------
    path : str or os.PathLike
        The LMDB folder (it holds ``data.mdb``).
    draft : bool
        Decode encoded JPEG records in draft mode (``decode.load_rgb``).

    Raises
    ------
    FileNotFoundError
        If ``path`` holds no ``data.mdb``.
    ValueError
        If the database has no records.
    """

    kind = 'LMDB'

    def __init__(self, path, draft=False):
        self.path = os.path.abspath(os.fspath(path))
        if not os.path.isfile(os.path.join(self.path, 'data.mdb')):
            raise FileNotFoundError('no LMDB at {} (no data.mdb)'.format(
                self.path))
        self.draft = draft
        env = _open_readonly(self.path)
        try:
            self._keys, self._ends = _scan_keys(env)
        finally:
            env.close()
        if len(self._ends) == 0:
            raise ValueError('no records in LMDB {}'.format(self.path))
        self._env = None
        self._pid = None

    @property
    def source(self):
        """The database folder, as ``imageset.ImageSet.source``."""
        return self.path

    def __len__(self):
        return len(self._ends)

    def __repr__(self):
        return '<LmdbImageSet {}>'.format(self.describe())

    def describe(self):
        """One line: the database and its number of records.

        Returns
        -------
        str
        """
        return 'LMDB {}: {} images'.format(self.path, len(self))

    def key(self, index):
        """The key of record ``index`` (bytes)."""
        start = int(self._ends[index - 1]) if index > 0 else 0
        return self._keys[start:int(self._ends[index])]

    def name(self, index):
        """Record ``index`` in words, naming its key and the database."""
        key = self.key(index).decode('utf-8', 'backslashreplace')
        return 'key {} in LMDB {}'.format(key, self.path)

    def load(self, index, target_pixels=None):
        """Decode record ``index`` (see :meth:`ImageSource.load`); a missing
        or undecodable record raises ``decode.ImageError`` naming its key
        and the database."""
        if not 0 <= index < len(self):
            raise IndexError('record {} of {}'.format(index, self.describe()))
        key = self.key(index)
        with self._environment().begin() as txn:
            value = txn.get(key)
        if value is None:
            raise decode.ImageError(self.name(index), 'record missing '
                                    '(the database changed after it was '
                                    'opened)')
        return datum_to_rgb(value, self.name(index),
                            target_pixels if self.draft else None)

    def _environment(self):
        """This process's environment, opened on first use after a fork."""
        if self._env is None or self._pid != os.getpid():
            # An environment inherited through fork must not be used (LMDB's
            # rule).  Without a lock file, dropping the inherited handle
            # only unmaps this process's copy; the parent's stays valid.
            self._env = _open_readonly(self.path)
            self._pid = os.getpid()
        return self._env

    def close(self):
        """Close this process's environment; a later ``load`` reopens it."""
        if self._env is not None and self._pid == os.getpid():
            self._env.close()
        self._env = None
        self._pid = None

    def __getstate__(self):
        # An environment cannot be pickled; the receiver opens its own.
        state = dict(self.__dict__)
        state['_env'] = None
        state['_pid'] = None
        return state


def _scan_keys(env):
    """All keys in order, as (one bytes string, int64 end offsets)."""
    # Appending to one buffer, not a list of keys, keeps the peak memory at
    # about the keys' own size (51 MB for ImageNet's 1.28M keys).
    blob = bytearray()
    ends = array.array('q')
    with env.begin() as txn:
        for key in txn.cursor().iternext(keys=True, values=False):
            blob += key
            ends.append(len(blob))
    return bytes(blob), np.frombuffer(ends, dtype=np.int64).copy()


# ------------------------------------------------------------------ packing

def record_names(paths):
    """Names of image files in keys: paths relative to their common folder.

    Parameters
    ----------
    paths : list of str
        Absolute paths, e.g. ``imageset.ImageSet.paths``.

    Returns
    -------
    list of str
        '/'-separated relative paths; for ImageNet this is the ``train.txt``
        name (``n01440764/n01440764_10026.JPEG``).
    """
    base = os.path.commonpath(paths)
    if len(paths) == 1:
        base = os.path.dirname(base)
    return [os.path.relpath(p, base).replace(os.sep, '/') for p in paths]


def record_key(index, name, max_size=511):
    """The key ``%08d_<name>`` of record ``index``, cut to ``max_size``.

    The index prefix alone makes keys unique and ordered, so a name too
    long for LMDB (511 bytes by default) is cut at the end.
    """
    return (b'%0*d_' % (KEY_DIGITS, index) + os.fsencode(name))[:max_size]


def pack(image_set, db_path, raw=False, max_side=None, commit_every=1000,
         limit=None, progress=None, progress_every=100):
    """Pack image files into a Caffe LMDB, resuming an interrupted run.

    Record ``i`` gets key ``%08d_<name>`` (``record_key``) for image ``i``
    of ``image_set``, so the database keeps the source's order.  Files that
    cannot be read are skipped with a message (their index is left unused).
    Records are committed every ``commit_every`` images; a run stopped at any
    point (Ctrl-C, kill, crash) loses at most the uncommitted ones, and
    running ``pack`` again with the same source and options continues after
    the last record written.  The map size starts at 1 GiB and doubles
    whenever LMDB reports it full.

    Parameters
    ----------
    image_set : imageset.ImageSet
        The files, e.g. ``sources.open_image_source(folder)``.
    db_path : str
        The LMDB folder; created if missing.
    raw : bool
        Store decoded pixels (``C x H x W`` BGR uint8), which Caffe's Data
        layer reads without OpenCV, instead of the encoded file.  Raw records
        are far larger.
    max_side : int or None
        Shrink images whose longer side exceeds this (2015 bilinear, as the
        loader's resize); encoded ones are then re-encoded (JPEG at quality
        95, other formats as PNG).  None keeps images as they are (the
        original read full-size images; shrinking changes what the loader
        sees).
    commit_every : int
        Records per write transaction.
    limit : int or None
        Stop after this many more images of the source (packing in chunks).
    progress : file or None
        Where the progress line and the skipped files go (e.g.
        ``sys.stderr``); None is silent.
    progress_every : int
        Images between progress updates.

    Returns
    -------
    dict
        ``written``, ``skipped`` (this run), ``records`` (in the database),
        ``first`` (the source index this run started at).

    Raises
    ------
    PackError
        If the database holds records of another source or form.
    ValueError
        If the source has ``MAX_RECORDS`` images or more.
    """
    paths = image_set.paths
    if len(paths) >= MAX_RECORDS:
        raise ValueError('{} images: keys %0{}d_ hold at most {}'.format(
            len(paths), KEY_DIGITS, MAX_RECORDS - 1))
    names = record_names(paths)
    os.makedirs(db_path, exist_ok=True)
    env = lmdb.open(db_path, map_size=INITIAL_MAP_SIZE, subdir=True,
                    meminit=False)
    try:
        max_key = env.max_key_size()
        first = _resume_index(env, db_path, names, raw, max_key)
        stop = len(paths) if limit is None else min(len(paths),
                                                    first + limit)
        meter = _Progress(stop - first, progress, progress_every)
        pending, written, skipped = [], 0, 0
        for i in range(first, stop):
            try:
                datum = _make_datum(paths[i], raw, max_side)
            except decode.ImageError as err:
                skipped += 1
                meter.message('skipping image {}: {}'.format(i, err))
            else:
                pending.append((record_key(i, names[i], max_key),
                                datum.SerializeToString()))
            if len(pending) >= commit_every:
                _commit(env, pending)
                written += len(pending)
                pending = []
            meter.update(i + 1 - first, skipped)
        _commit(env, pending)
        written += len(pending)
        meter.done(stop - first, skipped)
        records = env.stat()['entries']
    finally:
        env.close()
    return {'written': written, 'skipped': skipped, 'records': records,
            'first': first}


def _resume_index(env, db_path, names, raw, max_key):
    """Source index after the database's last record (0 if it is empty)."""
    with env.begin() as txn:
        cursor = txn.cursor()
        if not cursor.last():
            return 0
        key, value = cursor.key(), cursor.value()
    match = _KEY_INDEX.match(key)
    index = int(match.group(1)) if match else -1
    if not 0 <= index < len(names) or key != record_key(index, names[index],
                                                        max_key):
        raise PackError('{} already holds records of another source: its '
                        'last key is {!r}; pack into a new folder'.format(
                            db_path, key))
    datum = caffe_pb2.Datum()
    datum.ParseFromString(value)
    if datum.encoded == raw:
        raise PackError('{} holds {} records: resume {} --raw'.format(
            db_path, 'encoded' if datum.encoded else 'raw',
            'without' if datum.encoded else 'with'))
    return index + 1


def _make_datum(path, raw, max_side):
    """The Datum of one image file (see ``pack``); ImageError if unreadable."""
    if raw:
        im = decode.load_rgb(path)
        if max_side is not None and max(im.shape[:2]) > max_side:
            im = _shrink(im, max_side)
        return rgb_to_datum(im)
    try:
        with open(path, 'rb') as f:
            data = f.read()
    except OSError as err:
        raise decode.ImageError(path, '{}: {}'.format(
            type(err).__name__, err)) from None
    # The header is enough to refuse a file that is no image; the pixels
    # are decoded only when the image must be shrunk.
    fmt, width, height = decode.image_header(data, path)
    if max_side is not None and max(width, height) > max_side:
        im = _shrink(decode.decode_rgb(data, path), max_side)
        data = _encode(im, fmt)
        height, width = im.shape[:2]
    datum = caffe_pb2.Datum()
    # Caffe ignores the shape of encoded records (it decodes them); it is
    # set so that the records describe themselves.
    datum.channels, datum.height, datum.width = 3, height, width
    datum.data = data
    datum.label = 0
    datum.encoded = True
    return datum


def _shrink(im, max_side):
    """``im`` resized so its longer side is ``max_side`` (2015 bilinear)."""
    scale = max_side / float(max(im.shape[:2]))
    shape = (max(1, int(round(im.shape[0] * scale))),
             max(1, int(round(im.shape[1] * scale))))
    out = preprocess.resize_bilinear(im, shape) * 255.0
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def _encode(im, fmt):
    """JPEG bytes of ``im`` if it came from a JPEG, else lossless PNG."""
    buf = io.BytesIO()
    if fmt == 'JPEG':
        Image.fromarray(im).save(buf, format='JPEG',
                                 quality=REENCODE_JPEG_QUALITY)
    else:
        Image.fromarray(im).save(buf, format='PNG')
    return buf.getvalue()


def _commit(env, pending):
    """Write ``pending`` (key, value) pairs in one transaction.

    Keys arrive in increasing order after every key already stored, so
    they are appended (LMDB's MDB_APPEND: no tree search, full pages).
    When the map is full the transaction is aborted, the map doubled and
    the whole transaction written again.
    """
    while pending:
        try:
            with env.begin(write=True) as txn:
                cursor = txn.cursor()
                for key, value in pending:
                    # With append, LMDB refuses (put returns False) a key
                    # that does not sort after the last one.
                    if not cursor.put(key, value, append=True):
                        raise PackError('key {!r} does not sort after the '
                                        'records already written'.format(key))
            return
        except lmdb.MapFullError:
            env.set_mapsize(env.info()['map_size'] * 2)


class _Progress:
    """A progress line on a stream: done/total, rate, ETA, skipped."""

    def __init__(self, total, stream, every):
        self.total = total
        self.stream = stream
        self.every = max(1, every)
        self.start = time.time()
        self.last = ''
        # On a terminal the line is rewritten in place; in a log file every
        # update is its own line.
        self.tty = stream is not None and stream.isatty()

    def _line(self, done, skipped):
        elapsed = max(time.time() - self.start, 1e-9)
        rate = done / elapsed
        eta = int((self.total - done) / rate) if rate > 0 else 0
        return ('packed {}/{} images ({:.1f}%), {:.1f} images/s, ETA '
                '{}:{:02d}:{:02d}, {} skipped'.format(
                    done, self.total, 100.0 * done / max(self.total, 1),
                    rate, eta // 3600, eta // 60 % 60, eta % 60, skipped))

    def _write(self, text, end):
        if self.tty:
            # Pad to blank out the rest of the previous, longer line.
            self.stream.write('\r' + text.ljust(len(self.last)) + end)
            self.last = '' if end == '\n' else text
        else:
            self.stream.write(text + '\n')
        self.stream.flush()

    def update(self, done, skipped):
        # The last line is left to done(), which ends it.
        if (self.stream is not None and done % self.every == 0
                and done < self.total):
            self._write(self._line(done, skipped), '')

    def message(self, text):
        if self.stream is not None:
            self._write(text, '\n')

    def done(self, done, skipped):
        if self.stream is not None:
            self._write(self._line(done, skipped), '\n')
