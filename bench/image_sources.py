"""Loader throughput per image source: files, encoded LMDB, raw LMDB.

Packs the embedded photos into temporary LMDBs (encoded: the files' bytes;
raw: decoded BGR pixels), then measures each source, with JPEG draft mode
off and on:

* ms per image in one process, every photo once at a seeded resize target,
  the best of ``--repeat`` runs per photo: decoding, and decoding plus the
  resize to 150k-450k pixels;
* for each worker count, images/s: forked processes, as the loader's
  workers, each making one pass of the loader's image stream
  (``loader.ImageStream``: decode, resize, skip images too small) in its
  own seeded order;
* for each worker count, patches/s: the real ``loader.BatchLoader``
  (images, grids, patch preprocessing, shared-memory batches), after a
  warm-up batch per worker.

The worker figures are also given per CPU-second of the workers (user +
system time): on a machine shared with other work, wall-clock rates measure
the other work too, while the per-CPU-second rates are what one free core
delivers; n workers on n free cores give about n times that.  The GPU needs
as many patches/s as its solver consumes (the GPU issue's solver
throughput).

    .venv/bin/python bench/image_sources.py [--workers 1 2] [--repeat 3]
        [--batches 6] [--max-side N] [--tmp DIR]
"""
import argparse
import multiprocessing as mp
import os
import random
import tempfile
import time

import numpy as np

from deepcontext.data import (lmdb_source, loader, photos, preprocess,
                              sources)


def decode_times(image_sets, targets, repeat):
    """Mean seconds per image to decode, and to decode and resize, for each
    of ``image_sets``.  Each photo is timed in every set in turn, so a load
    from other work falls on all of them alike, and the best of ``repeat``
    runs is kept (other work only ever adds time)."""
    best = np.full((len(image_sets), len(targets), 2), np.inf)
    for index, target in enumerate(targets):
        for _ in range(repeat):
            for k, image_set in enumerate(image_sets):
                t0 = time.perf_counter()
                im = image_set.load(index, target)
                t1 = time.perf_counter()
                preprocess.resize_to_pixels(im, target)
                t2 = time.perf_counter()
                best[k, index] = np.minimum(best[k, index],
                                            (t1 - t0, t2 - t0))
    return best.mean(axis=1)


def stream_images(image_set, seed, out):
    """Worker: one pass of the loader's image stream (decode, resize, skip
    the too small) in its seeded order; report (images, wall s, CPU s)."""
    stream = loader.ImageStream(image_set, random.Random(seed),
                                np.random.RandomState(seed),
                                report=lambda text: None)
    t0, c0 = time.time(), time.process_time()
    while stream.cursor < len(image_set):
        stream.next()
    out.put((stream.cursor, time.time() - t0, time.process_time() - c0))


def images_per_second(image_set, workers):
    """(images/s, images per CPU-second) of ``workers`` forked streams."""
    ctx = mp.get_context('fork')   # as the loader: the set is inherited
    out = ctx.Queue()
    procs = [ctx.Process(target=stream_images,
                         args=(image_set, 1000 + w, out))
             for w in range(workers)]
    for p in procs:
        p.start()
    results = [out.get() for _ in procs]
    for p in procs:
        p.join()
    count = sum(r[0] for r in results)
    return (sum(r[0] / r[1] for r in results),
            count / sum(r[2] for r in results))


def patches_per_second(image_set, workers, batches, batch_size):
    """(patches/s, patches per worker CPU-second) of a BatchLoader."""
    patches, wall, cpu = loader.measure_throughput(image_set, workers,
                                                   batches, batch_size)
    return patches / wall, patches / cpu


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--workers', type=int, nargs='+',
                   default=sorted({1, os.cpu_count() or 1}))
    p.add_argument('--repeat', type=int, default=3,
                   help='decode timings: best of this many runs per image')
    p.add_argument('--batches', type=int, default=6)
    p.add_argument('--batch-size', type=int, default=512)
    p.add_argument('--max-side', type=int, default=None,
                   help='pack the LMDBs with this max side (files unchanged)')
    p.add_argument('--tmp', default=None, help='folder for the LMDBs')
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    files = sources.open_image_source(photos.demo_photos())
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        kinds = [('files', photos.demo_photos())]
        for form in ('encoded', 'raw'):
            db = os.path.join(tmp, form)
            t0 = time.time()
            lmdb_source.pack(files, db, raw=(form == 'raw'),
                             max_side=args.max_side, progress=None)
            size = os.path.getsize(os.path.join(db, 'data.mdb'))
            print('packed %d embedded photos into an %s LMDB: %.0f MB in '
                  '%.1f s' % (len(files), form, size / 1e6, time.time() - t0))
            kinds.append(('LMDB ' + form, db))
        rng = random.Random(0)
        targets = [rng.randint(*preprocess.TARGET_PIXELS) for _ in files]
        configs = [(label, spec, draft) for label, spec in kinds
                   # Raw records are pixels: draft mode has nothing to do.
                   for draft in ((False,) if 'raw' in label else
                                 (False, True))]
        print('one process, every photo once, best of %d: ms per image'
              % args.repeat)
        print('%-12s %-5s %8s %15s %13s' % ('source', 'draft', 'decode',
                                            'decode+resize', 'images/s'))
        times = decode_times([sources.open_image_source(spec, draft=draft)
                              for _, spec, draft in configs], targets,
                             args.repeat)
        for (label, _, draft), (dec, tot) in zip(configs, times):
            print('%-12s %-5s %8.1f %15.1f %13.1f' % (
                label, 'on' if draft else 'off', 1e3 * dec, 1e3 * tot,
                1 / tot))
        print('loader workers (%d cores; %d-patch batches)'
              % (os.cpu_count(), args.batch_size))
        print('%-12s %-5s %7s %9s %12s %10s %13s' % (
            'source', 'draft', 'workers', 'images/s', 'images/cpu-s',
            'patches/s', 'patches/cpu-s'))
        for label, spec, draft in configs:
            image_set = sources.open_image_source(spec, draft=draft)
            for w in args.workers:
                ims = images_per_second(image_set, w)
                pps = patches_per_second(image_set, w, args.batches,
                                         args.batch_size)
                print('%-12s %-5s %7d %9.1f %12.1f %10.1f %13.1f'
                      % ((label, 'on' if draft else 'off', w) + ims + pps),
                      flush=True)


if __name__ == '__main__':
    main()
