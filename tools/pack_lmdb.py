#!/usr/bin/env python
"""Pack images into a Caffe LMDB of Datum records, resumably.

    .venv/bin/python tools/pack_lmdb.py SOURCE [SOURCE ...] DB [--raw]
        [--max-side N] [--commit-every N] [--limit N]

SOURCE is anything the config's ``images`` accepts except an LMDB: an
ImageNet root (train.txt and train/), a folder searched recursively, or a
list file.  Record i holds image i under the key ``%08d_<relative path>``,
as Caffe's convert_imageset writes.  By default a record keeps the image
file's bytes (``encoded: true``); ``--raw`` stores decoded BGR pixels, which
Caffe's Data layer reads even when Caffe is built without OpenCV.  Run the
same command again to continue an interrupted run.  The library code is
``deepcontext.data.lmdb_source.pack``.
"""
import argparse
import sys

from deepcontext.data import lmdb_source
from deepcontext.eval import toolcheck


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('sources', nargs='+', metavar='SOURCE',
                   help='ImageNet root, folder or list file')
    p.add_argument('db', metavar='DB', help='LMDB folder to write')
    p.add_argument('--raw', action='store_true',
                   help='store decoded pixels (C x H x W BGR uint8) instead '
                   'of the encoded file')
    p.add_argument('--max-side', type=int, default=None,
                   help='shrink images whose longer side is larger than '
                   'this (default: keep their size, as the original did)')
    p.add_argument('--commit-every', type=int, default=1000,
                   help='images per write transaction (default 1000)')
    p.add_argument('--limit', type=int, default=None,
                   help='stop after this many more images (pack in chunks)')
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    image_set = toolcheck.image_files(args.sources)
    print('packing %s into %s (%s)' % (image_set.describe(), args.db,
                                       'raw' if args.raw else 'encoded'),
          file=sys.stderr)
    try:
        result = lmdb_source.pack(image_set, args.db, raw=args.raw,
                                  max_side=args.max_side,
                                  commit_every=args.commit_every,
                                  limit=args.limit, progress=sys.stderr)
    except lmdb_source.PackError as err:
        raise toolcheck.ToolError(err)
    print('%s: %d records; this run wrote %d, skipped %d, from image %d'
          % (args.db, result['records'], result['written'],
             result['skipped'], result['first']), file=sys.stderr)


if __name__ == '__main__':
    toolcheck.run(main, 'pack_lmdb')
