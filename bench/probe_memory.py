"""Peak memory of the two linear probes against the set size.

Each size runs in a fresh process (peak resident memory is per process):
N rows of D-dim float32 features (9,600 dims as conv1 of the probes,
100 classes by default) are written to a ``.npy`` batch by batch, as the feature
extraction writes them, then one epoch of ``probe.streaming_probe`` (SGD,
read through a memory map) and, up to --lbfgs-max rows,
``probe.linear_probe`` (L-BFGS, in memory, one l2) are run.  Prints the
peak of the memory the probe allocates (tracemalloc, which numpy reports
to) and the peak resident size of the process, which also counts the
pages of the memory-mapped file that were read (page cache the kernel
can drop, not allocations), and the time of each.

    .venv/bin/python bench/probe_memory.py [--sizes 2000 8000 32000] \
        [--dim 9600] [--classes 100] [--lbfgs-max 8000]
"""
import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc

import numpy as np

from deepcontext.eval import probe


def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def one(n, dim, classes, method, folder):
    """In this process: write the features, run one probe, print a line."""
    rs = np.random.RandomState(0)
    y = rs.randint(0, classes, n)
    centres = rs.randn(classes, dim).astype(np.float32) * 0.3
    path = os.path.join(folder, 'x.npy')
    mm = np.lib.format.open_memmap(path, 'w+', np.float32, (n, dim))
    for lo in range(0, n, 1000):
        hi = min(n, lo + 1000)
        mm[lo:hi] = centres[y[lo:hi]] + rs.randn(hi - lo, dim)
    del mm
    tracemalloc.start()
    x = np.load(path, mmap_mode='r')
    train, test = np.arange(n // 2), np.arange(n // 2, n)
    t0 = time.time()
    if method == 'sgd':
        r = probe.streaming_probe(x, y, train, test, classes, epochs=1)
    else:
        r = probe.linear_probe(x[train], y[train], x[test], y[test],
                               classes, l2_grid=(1e-2,))
    took = time.time() - t0
    allocated = tracemalloc.get_traced_memory()[1] / 2.0 ** 20
    print('%8d rows %-6s allocated peak %7.1f MB  process RSS peak %7.0f MB'
          '  %6.1f s  top-1 %.3f' % (n, method, allocated, peak_mb(), took,
                                     r['accuracy']))


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--sizes', type=int, nargs='+',
                   default=[2000, 8000, 32000])
    p.add_argument('--dim', type=int, default=9600)
    p.add_argument('--classes', type=int, default=100)
    p.add_argument('--lbfgs-max', type=int, default=8000)
    p.add_argument('--one', nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        with tempfile.TemporaryDirectory(prefix='probe_memory_') as tmp:
            one(int(args.one[0]), args.dim, args.classes, args.one[1], tmp)
        return
    print('%d-dim float32 features, %d classes, half train / half test; '
          'features on disk: %.0f MB per 1,000 rows'
          % (args.dim, args.classes, args.dim * 4 / 1024.0))
    for n in args.sizes:
        for method in ('sgd', 'lbfgs'):
            if method == 'lbfgs' and n > args.lbfgs_max:
                continue
            subprocess.run([sys.executable, __file__, '--one', str(n),
                            method, '--dim', str(args.dim), '--classes',
                            str(args.classes)], check=True)


if __name__ == '__main__':
    main()
