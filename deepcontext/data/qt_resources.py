"""Files inside a compiled Qt resource file (``.rcc``), without Qt.

GCompris ships its pictures inside ``.rcc`` files (Qt's ``rcc -binary``
output).  The format, as Qt's ``qresource.cpp`` reads it (all integers big
endian):

* header: ``b'qres'``, version, then the offsets of the tree, the data and
  the names (and, from version 3, a flags word);
* tree: one fixed-size node per file or directory: name offset (4), flags
  (2), then for a directory the child count (4) and the first child's node
  index (4), for a file the territory (2), language (2) and data offset (4);
  from version 2 a node ends with an 8-byte modification time;
* names: length (2, in UTF-16 units), a hash (4), the UTF-16 name;
* data: length (4), then the bytes; a file flagged compressed holds
  ``qCompress`` output (its uncompressed length (4), then a zlib stream),
  one flagged zstd a zstd frame (not supported here: Qt 5's rcc, which
  Debian's GCompris uses, never writes it).
"""

import struct
import zlib

_COMPRESSED = 0x01
_DIRECTORY = 0x02
_COMPRESSED_ZSTD = 0x04


class ResourceError(ValueError):
    """The file is not a Qt resource file this reader understands."""


def read_rcc(path):
    """All files of a ``.rcc`` file (see :func:`parse_rcc`)."""
    with open(path, 'rb') as f:
        return parse_rcc(f.read(), path)


def parse_rcc(blob, path='<rcc>'):
    """All files of a ``.rcc`` file's bytes; ``path`` names it in errors.

    Returns
    -------
    dict
        Path inside the resource (``'a/b/c.jpg'``, no leading colon or
        slash) -> bytes, uncompressed.

    Raises
    ------
    ResourceError
        Not a Qt resource file, a version other than 1-3, offsets outside
        the file, or a zstd-compressed entry.
    """
    if blob[:4] != b'qres' or len(blob) < 20:
        raise ResourceError('%s: not a Qt resource file (no qres header)'
                            % path)
    version, tree, data, names = struct.unpack_from('>4I', blob, 4)
    if version not in (1, 2, 3):
        raise ResourceError('%s: Qt resource version %d, expected 1-3'
                            % (path, version))
    node_size = 14 if version == 1 else 22
    if max(tree, data, names) >= len(blob):
        raise ResourceError('%s: offsets beyond the end of the file' % path)

    def name_of(node):
        (offset,) = struct.unpack_from('>I', blob, tree + node * node_size)
        (length,) = struct.unpack_from('>H', blob, names + offset)
        start = names + offset + 6
        return blob[start:start + 2 * length].decode('utf-16-be')

    def payload(node, where):
        (flags,) = struct.unpack_from('>H', blob, tree + node * node_size + 4)
        (offset,) = struct.unpack_from('>I', blob,
                                       tree + node * node_size + 10)
        (size,) = struct.unpack_from('>I', blob, data + offset)
        raw = blob[data + offset + 4:data + offset + 4 + size]
        if len(raw) != size:
            raise ResourceError('%s: %s runs past the end of the file'
                                % (path, where))
        if flags & _COMPRESSED_ZSTD:
            raise ResourceError('%s: %s is zstd-compressed (not supported)'
                                % (path, where))
        if flags & _COMPRESSED:
            return zlib.decompress(raw[4:])
        return raw

    files = {}
    stack = [(0, '')]          # node 0 is the root directory
    while stack:
        node, prefix = stack.pop()
        (flags,) = struct.unpack_from('>H', blob, tree + node * node_size + 4)
        if flags & _DIRECTORY:
            count, first = struct.unpack_from('>2I', blob,
                                              tree + node * node_size + 6)
            for child in range(first, first + count):
                stack.append((child, prefix + name_of(child) + '/'))
        else:
            where = prefix.rstrip('/')
            files[where] = payload(node, where)
    return files
