"""Loader throughput on the embedded photos: patches/s per worker and total.

Prints, for each worker count, batches/s, patches/s and patches/s per
worker, measured after a warm-up batch from every worker.  The GPU needs as
many patches/s as its solver step consumes (see bench/cpu_step_time.py, and
the GPU issue's solver throughput).

    .venv/bin/python bench/loader_throughput.py [--workers 1 2] [--batches 12]
        [--images FOLDER]
"""
import argparse
import os
import time

from deepcontext import demo_data, images, loader


def measure(image_set, workers, batches, batch_size):
    seeds = [1000 + i for i in range(workers)]
    with loader.BatchLoader(image_set, seeds, batch_size, queue_size=2,
                            log=lambda m: None) as ld:
        for _ in range(workers):          # warm-up: every worker once
            ld.release(ld.get())
        t0 = time.time()
        patches = 0
        for _ in range(batches):
            b = ld.get()
            patches += b.data.shape[0]
            ld.release(b)
        dt = time.time() - t0
    return patches, dt


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--workers', type=int, nargs='+',
                   default=sorted({1, os.cpu_count() or 1}))
    p.add_argument('--batches', type=int, default=12)
    p.add_argument('--batch-size', type=int, default=512)
    p.add_argument('--images', default=None,
                   help='image source (default: the embedded photos)')
    args = p.parse_args()
    image_set = images.open_image_source(args.images or
                                         demo_data.demo_photos())
    print('loader throughput, %d photos (%s), batch < %d patches, '
          '%d cores' % (len(image_set), args.images or 'embedded',
                        args.batch_size, os.cpu_count()))
    for w in args.workers:
        n, dt = measure(image_set, w, args.batches, args.batch_size)
        print('workers %2d: %6.1f patches/s total, %6.1f patches/s per '
              'worker, %.2f s per batch' % (w, n / dt, n / dt / w,
                                             dt / args.batches))


if __name__ == '__main__':
    main()
