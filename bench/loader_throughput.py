"""Loader throughput: today's code against the numpy reference, per CPU-second.

On ImageNet-sized JPEGs (the embedded photos shrunk to at most 500 px a
side, quality 90, written to a temporary folder; or ``--images``), prints:

1. patches per CPU-second of one worker, the numpy reference (``old``:
   ``reference=True``, the loaders' code until issue 16) and the C path
   (``new``), and their ratio.  Each measurement is a forked process that
   runs a worker's loop (seeded image order, ``batches.usable_image``,
   ``batches.assemble_batches`` into batch buffers in shared memory) for
   ``--batches`` batches after one warm-up batch, timed by its own CPU
   clock; old and new alternate for ``--rounds`` rounds and the medians
   are compared, so a machine shared with other work slows both alike.
2. where a worker's CPU goes, old and new, in ms per patch: decode, resize
   (whole image), grid sampling, crop, per-patch preprocessing (the new path
   crops inside it), and the consumer's copy of a batch out of shared
   memory (the trainer's side, not a worker's).
3. memory per worker (resident, private and shared) of each variant;
4. the real ``loader.BatchLoader`` (new path) for each ``--workers``:
   patches/s, patches per CPU-second of its workers, resident memory per
   worker and the shared memory of all batch buffers.

    .venv/bin/python bench/loader_throughput.py [--workers 1 2]
        [--batches 12] [--rounds 3] [--batch-size 512] [--images FOLDER]
"""
import argparse
import itertools
import mmap
import multiprocessing as mp
import os
import statistics
import tempfile
import time

import numpy as np
from PIL import Image

from deepcontext.data import (batches, loader, photos, preprocess, sampling,
                              sources)

MAX_SIDE, QUALITY = 500, 90   # about ImageNet's JPEGs


def imagenet_sized(folder):
    """Write the embedded photos, shrunk to MAX_SIDE a side, as JPEGs."""
    for i, path in enumerate(photos.demo_photos()):
        with Image.open(path) as im:
            im = im.convert('RGB')
            im.thumbnail((MAX_SIDE, MAX_SIDE), Image.BILINEAR)
            im.save(os.path.join(folder, '%03d.jpg' % i), quality=QUALITY)


def proc_memory(pid='self'):
    """(resident, private, shared memory) MiB of a process, from /proc."""
    fields = {}
    with open('/proc/%s/status' % pid) as f:
        for line in f:
            key, _, value = line.partition(':')
            if key in ('VmRSS', 'RssAnon', 'RssFile', 'RssShmem'):
                fields[key] = int(value.split()[0]) / 1024
    return fields['VmRSS'], fields['RssAnon'], fields['RssShmem']


def images(image_set, seed, reference):
    """A worker's endless stream of usable images, old or new code."""
    rng, nprng = batches.rngs(seed, reference)
    order = nprng.permutation(len(image_set))
    while True:
        for idx in order:
            im = batches.usable_image(image_set, int(idx), rng,
                                      lambda msg: None, reference)
            if im is not None:
                yield int(idx), im, rng, nprng


def worker_loop(image_set, n_batches, batch_size, reference, out):
    """Child: a worker's loop into shared buffers; report its CPU rate."""
    nbytes = batch_size * int(np.prod(sampling.PATCH_SHAPE)) * 4
    ring = [np.frombuffer(mmap.mmap(-1, nbytes), np.float32).reshape(
        (batch_size,) + sampling.PATCH_SHAPE) for _ in range(3)]
    slots = itertools.count()

    def new_buffer():
        slot = next(slots) % len(ring)
        return slot, ring[slot]

    done, patches, c0 = -1, 0, 0.0
    for _, count, _, _, _ in batches.assemble_batches(
            images(image_set, 7, reference), new_buffer, batch_size,
            reference=reference):
        done += 1
        if done == 0:             # warm-up batch
            c0 = time.process_time()
            continue
        patches += count
        if done == n_batches:
            break
    out.put((patches / (time.process_time() - c0), proc_memory()))


def stage_profile(image_set, n_images, batch_size, reference, out):
    """Child: ms per patch of each stage, the pipeline's pieces timed."""
    rng, nprng = batches.rngs(11, reference)
    buf = np.empty((batch_size,) + sampling.PATCH_SHAPE, np.float32)
    dest = np.empty_like(buf)
    t = dict.fromkeys(('decode', 'resize', 'grids', 'crop', 'prep', 'copy'),
                      0.0)
    clock = time.process_time
    n = 0
    for idx in range(n_images):
        target = rng.randint(*preprocess.TARGET_PIXELS)
        c0 = clock()
        im = image_set.load(idx % len(image_set), target)
        c1 = clock()
        im = preprocess.resize_to_pixels(im, target, reference)
        t['decode'] += c1 - c0
        t['resize'] += clock() - c1
        if min(im.shape[:2]) <= sampling.min_image_side():
            continue
        for _ in range(sampling.GRIDS_PER_IMAGE):
            c0 = clock()
            corners = sampling.sample_grid(im.shape, rng)[0]
            c1 = clock()
            t['grids'] += c1 - c0
            if reference:          # as prep_grid's reference branch
                for i, corner in enumerate(corners):
                    c0 = clock()
                    patch = preprocess.crop(im, corner)
                    c1 = clock()
                    preprocess.prep_patch_reference(patch, rng, nprng,
                                                    out=buf[i])
                    t['crop'] += c1 - c0
                    t['prep'] += clock() - c1
            else:
                preprocess.prep_grid(im, corners, rng, nprng, buf)
                t['prep'] += clock() - c1
            c0 = clock()
            np.copyto(dest[:len(corners)], buf[:len(corners)])
            t['copy'] += clock() - c0
            n += len(corners)
    out.put({k: v / n * 1e3 for k, v in t.items()})


def in_child(target, *args):
    """Run ``target(*args, queue)`` in a forked process; return its result."""
    ctx = mp.get_context('fork')
    q = ctx.Queue()
    p = ctx.Process(target=target, args=args + (q,))
    p.start()
    result = q.get()
    p.join()
    return result


def compare(image_set, args):
    rates = {True: [], False: []}
    memory = {}
    for r in range(args.rounds):
        for reference in (True, False):
            rate, mem = in_child(worker_loop, image_set, args.batches,
                                 args.batch_size, reference)
            rates[reference].append(rate)
            memory[reference] = mem
        print('round %d: old %6.0f, new %6.0f patches per CPU-second'
              % (r + 1, rates[True][-1], rates[False][-1]), flush=True)
    old, new = (statistics.median(rates[k]) for k in (True, False))
    print('one worker, medians: old %.0f, new %.0f patches per CPU-second: '
          '%.2fx' % (old, new, new / old))
    print('\nms of CPU per patch     decode  resize   grids    crop    prep'
          '   total    copy (consumer)')
    for reference in (True, False):
        t = in_child(stage_profile, image_set, args.profile_images,
                     args.batch_size, reference)
        total = sum(v for k, v in t.items() if k != 'copy')
        print('%-20s' % ('old (numpy)' if reference else 'new (C)') +
              ''.join('%8.4f' % t[k] for k in ('decode', 'resize', 'grids',
                                               'crop', 'prep')) +
              '%8.4f%8.4f' % (total, t['copy']))
    print('(new: the crop is done inside prep)')
    print('\nmemory of one worker, MiB   resident  private  shared (its 3 '
          'batch buffers)')
    for reference in (True, False):
        print('%-27s %9.0f %8.0f %7.0f' % (('old' if reference else 'new',)
                                           + memory[reference]))


def real_loader(image_set, workers, n_batches, batch_size):
    """(patches/s, patches per worker CPU-second, MiB per worker resident
    and private, MiB of shared batch buffers) of a BatchLoader (new path).
    The rates are ``loader.measure_throughput``'s; memory is read from a
    second loader once each of its workers has filled two batches."""
    n, wall, cpu = loader.measure_throughput(image_set, workers, n_batches,
                                             batch_size)
    seeds = [1000 + i for i in range(workers)]
    with loader.BatchLoader(image_set, seeds, batch_size, queue_size=2,
                            log=lambda m: None) as ld:
        for _ in range(2 * workers):
            ld.release(ld.get())
        mem = np.array([proc_memory(p.pid) for p in ld.procs])
        shared = sum(b.nbytes for bufs in ld.buffers for b in bufs) / 2 ** 20
    return n / wall, n / cpu, mem[:, 0].mean(), mem[:, 1].mean(), shared


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--workers', type=int, nargs='+',
                   default=sorted({1, os.cpu_count() or 1}))
    p.add_argument('--batches', type=int, default=12)
    p.add_argument('--rounds', type=int, default=3)
    p.add_argument('--profile-images', type=int, default=60)
    p.add_argument('--batch-size', type=int, default=512)
    p.add_argument('--images', default=None,
                   help='image folder or LMDB (default: the embedded photos '
                        'at most %d px a side, JPEG quality %d)'
                        % (MAX_SIDE, QUALITY))
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix='dc-bench-') as tmp:
        if args.images is None:
            imagenet_sized(tmp)
        image_set = sources.open_image_source(args.images or tmp)
        print('loader throughput, %d photos (%s), batch < %d patches, %d '
              'cores, %s' % (len(image_set), args.images or 'embedded, '
                             '<= %d px, q%d' % (MAX_SIDE, QUALITY),
                             args.batch_size, os.cpu_count(),
                             time.strftime('%Y-%m-%d')), flush=True)
        compare(image_set, args)
        print('\nBatchLoader (new)  patches/s  per worker-CPU-s  MiB/worker '
              '(private)  shared buffers MiB')
        for w in args.workers:
            rate, per_cpu, rss, anon, shared = real_loader(
                image_set, w, args.batches, args.batch_size)
            print('workers %2d %15.0f %17.0f %11.0f %10.0f %18.0f'
                  % (w, rate, per_cpu, rss, anon, shared), flush=True)


if __name__ == '__main__':
    main()
