"""Layer-by-layer CPU/GPU comparison of one forward/backward pass.

The same weights (copied), the same real patches and pairs; prints the
relative difference of every blob's data and diff, and of every learned
parameter's gradient.  A diagnostic for tests/test_gpu.py.

    python bench/gpu_compare.py [--batch 64] [--images FOLDER]
"""
import argparse
import glob
import os
import tempfile

os.environ.setdefault('GLOG_minloglevel', '2')
import numpy as np  # noqa: E402

from deepcontext.data import batches  # noqa: E402
from deepcontext.model import nets, pycaffe  # noqa: E402


def rel(a, b):
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--batch', type=int, default=64)
    p.add_argument('--images', default='gpudata/photos')
    a = p.parse_args()
    paths = sorted(glob.glob(os.path.join(a.images, '*.jpg')))[:12]
    data = batches.real_patches(paths, a.batch, seed=3)
    n = a.batch
    pairs = np.stack([np.arange(n - 1), np.arange(1, n)], 1)
    labels = np.random.RandomState(4).randint(0, 8, n - 1)
    with tempfile.TemporaryDirectory() as tmp:
        path = nets.write_nets(tmp, batch_size=n, debug_info=False)[0]
        (dc, fc, gc), (dg, fg, gg) = pycaffe.pass_on_devices(path, data, pairs,
                                                             labels)
    print('%-20s %10s %10s' % ('blob', 'data', 'diff'))
    for k in dc:
        print('%-20s %10.1e %10.1e' %
              (k, rel(dg[k], dc[k]), rel(fg[k], fc[k])))
    print('%-20s %10s' % ('param', 'grad'))
    for k in gc:
        print('%-20s %10.1e' % (k, rel(gg[k], gc[k])))


if __name__ == '__main__':
    main()
