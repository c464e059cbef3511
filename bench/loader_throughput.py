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

from deepcontext.data import loader, photos, sources


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--workers', type=int, nargs='+',
                   default=sorted({1, os.cpu_count() or 1}))
    p.add_argument('--batches', type=int, default=12)
    p.add_argument('--batch-size', type=int, default=512)
    p.add_argument('--images', default=None,
                   help='image source (default: the embedded photos)')
    args = p.parse_args()
    image_set = sources.open_image_source(args.images or
                                         photos.demo_photos())
    print('loader throughput, %d photos (%s), batch < %d patches, '
          '%d cores' % (len(image_set), args.images or 'embedded',
                        args.batch_size, os.cpu_count()))
    for w in args.workers:
        n, dt, _ = loader.measure_throughput(image_set, w, args.batches,
                                             args.batch_size)
        print('workers %2d: %6.1f patches/s total, %6.1f patches/s per '
              'worker, %.2f s per batch' % (w, n / dt, n / dt / w,
                                             dt / args.batches))


if __name__ == '__main__':
    main()
