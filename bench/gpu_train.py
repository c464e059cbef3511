"""End-to-end GPU training throughput: real photos through the loaders.

Runs the real Trainer (train.py's loop: loader workers, the GPU feed,
statistics, snapshots) on a folder of photos for --iters iterations and
prints, over the iterations after --warmup: patches/s, median step ms, the
share of the time the GPU waited for data (time in the loader/feed before
each step over all the time), and the mean norm_loss of the last 100
iterations against ln 8 = 2.079.

    python bench/gpu_train.py --images FOLDER [--iters 600] [--workers 15]
        [--tf32] [--out DIR]
"""
import argparse
import contextlib
import os
import tempfile
import time

import numpy as np

os.environ.setdefault('GLOG_minloglevel', '2')  # before caffe loads glog
from deepcontext import config  # noqa: E402
from deepcontext.data.sampling import CHANCE_LOSS  # noqa: E402
from deepcontext.eval import logparse  # noqa: E402
from deepcontext.train import trainer  # noqa: E402


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--images', required=True)
    p.add_argument('--iters', type=int, default=600)
    p.add_argument('--warmup', type=int, default=50)
    p.add_argument('--workers', type=int,
                   default=max(1, (os.cpu_count() or 2) - 1))
    p.add_argument('--tf32', action='store_true')
    p.add_argument('--no-debug-info', action='store_true')
    p.add_argument('--gpu', type=int, default=0, help='-1: the CPU')
    p.add_argument('--batch-size', type=int, default=512)
    p.add_argument('--out', default=None,
                   help='output folder (default: a temporary one, removed)')
    return p.parse_args()


def train(a, out):
    """Run the trainer into ``out``; return (state, setup s, run s, log)."""
    cfg = config.resolve(dict(out_dir=out, images=a.images,
                              gpu=a.gpu if a.gpu >= 0 else None,
                              batch_size=a.batch_size,
                              loader_workers=a.workers, max_iter=a.iters,
                              tf32=a.tf32, resume='no', exp_name='bench',
                              debug_info=not a.no_debug_info,
                              snapshot_every=max(2000, a.iters)))
    t0 = time.time()
    tr = trainer.Trainer(cfg, 'bench')
    t_setup = time.time() - t0
    t0 = time.time()
    try:
        state = tr.run()
    finally:
        tr.close()
    wall = time.time() - t0
    return (state, t_setup, wall,
            logparse.parse_out_log(os.path.join(tr.outdir, 'out.log')))


def main():
    a = parse_args()
    with contextlib.ExitStack() as stack:
        out = a.out or stack.enter_context(
            tempfile.TemporaryDirectory(prefix='dc-gpu-train-'))
        state, t_setup, wall, log = train(a, out)
    body = log['iteration'] >= a.warmup
    patches = log['patches'][body].sum()
    total = log['step_time'][body].sum()
    data = log['data_time'][body].sum()
    loss = log['norm_loss']
    print('gpu-train workers=%d tf32=%s debug_info=%s iters=%d (%s) '
          'setup_s=%.1f wall_s=%.0f' % (a.workers, a.tf32,
                                        not a.no_debug_info, len(loss),
                                        state, t_setup, wall))
    print('  patches_per_s=%.0f step_ms=%.2f (median %.2f) data_wait=%.1f%% '
          'norm_loss_last100=%.4f (ln 8 = %.4f) first10=%.4f'
          % (patches / total, 1e3 * total / body.sum(),
             1e3 * np.median(log['step_time'][body]), 100 * data / total,
             loss[-100:].mean(), CHANCE_LOSS, loss[:10].mean()))


if __name__ == '__main__':
    main()
