"""Solver step time of the real network on this machine's CPU.

Feeds real loader batches (embedded photos) and times solver.step(1),
excluding the first step.  Prints ms/step and patches/s per batch size.

    .venv/bin/python bench/cpu_step_time.py [--batch-sizes 128 512] [--steps 3]
"""
import argparse
import os
import tempfile
import time

os.environ.setdefault('GLOG_minloglevel', '2')  # before caffe loads glog
import caffe  # noqa: E402

from deepcontext.data import loader, photos, sources
from deepcontext.model import nets, pycaffe, solver


def measure(image_set, batch_size, steps):
    with tempfile.TemporaryDirectory() as tmp:
        nets.write_nets(tmp, batch_size)
        path = solver.write_solver(os.path.join(tmp, 'solver.prototxt'),
                                   solver.gen_solver(tmp))
        caffe.set_mode_cpu()
        s = caffe.get_solver(path)
        times, patches = [], 0
        with loader.BatchLoader(image_set, [7], batch_size, queue_size=2,
                                log=lambda m: None) as ld:
            for i in range(steps + 1):
                b = ld.get()
                pycaffe.set_inputs(s.net, b.data, b.pairs, b.labels)
                ld.release(b)
                t0 = time.time()
                s.step(1)
                if i:
                    times.append(time.time() - t0)
                    patches += b.data.shape[0]
    return sum(times) / len(times), patches / sum(times)


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--batch-sizes', type=int, nargs='+', default=[128, 512])
    p.add_argument('--steps', type=int, default=3)
    args = p.parse_args()
    image_set = sources.open_image_source(photos.test_photos())
    print('CPU solver step, %d cores' % os.cpu_count())
    for bs in args.batch_sizes:
        dt, rate = measure(image_set, bs, args.steps)
        print('batch < %3d patches: %7.0f ms/step, %6.1f patches/s'
              % (bs, dt * 1000, rate))


if __name__ == '__main__':
    main()
