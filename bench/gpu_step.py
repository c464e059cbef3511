"""Solver-only GPU step time of the real network, and where it goes.

The batch stays on the GPU (as in ../shared/bench/torch_reference.py):
random patches at the preprocessing's scale (RMS 50), pairs and labels
laid out by the real BatchAssembler over ImageNet-sized images.  Prints
the median step time, patches/s and the loss; ``--layers`` adds
per-layer forward/backward milliseconds (each layer timed alone between
device synchronisations).

    python bench/gpu_step.py [--iters 50] [--layers] [--no-debug-info]

Engine switches are environment variables read by our Caffe build:
CAFFE_TF32=1, CAFFE_CUDNN_FIND=0/1, CAFFE_CUDNN_WORKSPACE_MB=N (here 1024
unless set, as in training).
"""
import argparse
import os
import random
import statistics
import tempfile
import time

os.environ.setdefault('GLOG_minloglevel', '2')  # before caffe loads glog
# what training uses (config cudnn_workspace_mb); Caffe's own default is 256
os.environ.setdefault('CAFFE_CUDNN_WORKSPACE_MB', '1024')
import numpy as np  # noqa: E402
import caffe  # noqa: E402

from deepcontext.data import preprocess, sampling  # noqa: E402
from deepcontext.model import nets, pycaffe, solver  # noqa: E402
from deepcontext.train import gpufeed  # noqa: E402


CUDART = gpufeed.load_cudart()   # the runtime libcaffe uses


def sync():
    rc = CUDART.cudaDeviceSynchronize()
    if rc:
        raise RuntimeError('cudaDeviceSynchronize: error %d' % rc)


def synthetic_batch(batch_size, seed):
    """(data, pairs, labels) with the loader's layout: grids until full."""
    rng = random.Random(seed)
    nprng = np.random.RandomState(seed)
    asm = sampling.BatchAssembler(batch_size)
    while True:
        h, w = rng.choice([(375, 500), (500, 375), (333, 500), (500, 500)])
        shape = sampling.target_shape(
            (h, w), rng.randint(*preprocess.TARGET_PIXELS))
        start, cols, rows, closes = asm.plan_grid(shape, rng)
        if closes:
            break
        asm.add(shape, start, cols, rows, rng)
    n = asm.count
    pairs, labels = asm.take()
    data = (nprng.standard_normal((n, 3, 96, 96)) * 50).astype(np.float32)
    return data, pairs, labels


def make_solver(tmp, batch_size, debug_info, engine=None):
    nets.write_nets(tmp, batch_size, engine=engine, debug_info=debug_info)
    sp = solver.gen_solver(tmp, gpu=True)
    sp.display = 0
    sp.snapshot = 0
    return caffe.get_solver(solver.write_solver(
        os.path.join(tmp, 'solver.prototxt'), sp))


def time_steps(s, iters, warmup, chunk=10):
    """Seconds per step, one figure per ``s.step(chunk)`` call.

    Like the PyTorch reference's loop, steps follow each other without a
    host synchronisation in between (Caffe synchronises inside a step only
    where it reads the loss); the device is synchronised around each chunk.
    """
    s.step(warmup)
    sync()
    times = []
    for _ in range(max(1, iters // chunk)):
        t0 = time.perf_counter()
        s.step(chunk)
        sync()
        times.append((time.perf_counter() - t0) / chunk)
    return times


def layer_times(net, reps=10):
    """Median forward and backward ms per layer, each timed alone."""
    names = pycaffe.layer_names(net)
    fwd = {n: [] for n in names}
    bwd = {n: [] for n in names}
    for _ in range(reps):
        for i, name in enumerate(names):
            sync()
            t0 = time.perf_counter()
            pycaffe.forward_layer(net, i)
            sync()
            fwd[name].append(time.perf_counter() - t0)
        for i in reversed(range(len(names))):
            sync()
            t0 = time.perf_counter()
            pycaffe.backward_layer(net, i)
            sync()
            bwd[names[i]].append(time.perf_counter() - t0)
    return [(n, 1e3 * statistics.median(fwd[n]),
             1e3 * statistics.median(bwd[n])) for n in names]


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--batch-size', type=int, default=sampling.BATCH_SIZE)
    p.add_argument('--iters', type=int, default=100)
    p.add_argument('--warmup', type=int, default=5)
    p.add_argument('--gpu', type=int, default=0)
    p.add_argument('--layers', action='store_true',
                   help='also time every layer alone')
    p.add_argument('--no-debug-info', action='store_true',
                   help="turn off the net's debug_info (the original has it on)")
    p.add_argument('--caffe-engine', action='store_true',
                   help="Caffe's own kernels on every layer (config cudnn=False)")
    p.add_argument('--label', default='',
                   help='name printed with the result line')
    a = p.parse_args()
    if CUDART is None:
        raise SystemExit('libcudart not found: is this the CUDA build?')
    caffe.set_device(a.gpu)
    caffe.set_mode_gpu()
    data, pairs, labels = synthetic_batch(a.batch_size, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        s = make_solver(tmp, a.batch_size, not a.no_debug_info,
                        'CAFFE' if a.caffe_engine else None)
        pycaffe.set_inputs(s.net, data, pairs, labels)
        t_setup = time.perf_counter() - t0
        times = time_steps(s, a.iters, a.warmup)
        loss = pycaffe.loss(s.net) / len(labels)
        if a.layers:
            rows = layer_times(s.net)
    ms = 1e3 * statistics.median(times)
    env = ' '.join('%s=%s' % (k, os.environ[k]) for k in
                   ('CAFFE_TF32', 'CAFFE_CUDNN_FIND', 'CAFFE_CUDNN_WORKSPACE_MB')
                   if k in os.environ)
    if a.layers:
        print('%-12s %9s %9s' % ('layer', 'fwd ms', 'bwd ms'))
        for name, f, b in rows:
            print('%-12s %9.3f %9.3f' % (name, f, b))
        print('%-12s %9.3f %9.3f' % ('sum', sum(r[1] for r in rows),
                                     sum(r[2] for r in rows)))
    print('caffe-step %s patches=%d pairs=%d debug_info=%s %s setup_s=%.1f '
          'step_ms=%.2f (min %.2f) patches_per_s=%.0f loss=%.4f'
          % (a.label, data.shape[0], len(labels), not a.no_debug_info, env,
             t_setup, ms, 1e3 * min(times), data.shape[0] / ms * 1e3, loss))


if __name__ == '__main__':
    main()
