"""Does a run learn something that transfers to photos it never saw?

Trains ``--iters`` iterations with train.py on the training side of the
embedded photos (``photos.train_photos``), snapshotting every ``--every``
(a stop by the original's divergence check ends training early and is
reported),
then measures every snapshot (and the random initialisation, iteration 0)
on the held-out photos (``photos.held_out_photos``):

* pretext accuracy, against chance (12.5%) and the most frequent label;
* fc6 retrieval: patches sampled from the held-out photos (4 a photo),
  each one's 4 nearest neighbours by fc6 correlation (itself left out);
  precision = the share from the query's own photo, against its chance
  level (3 of the other patches come from the same photo);
* category retrieval: GCompris's 140 categorised pictures (5 classes,
  ``debian_photos.gcompris_categories``; ``--categories`` for another
  labelled set), relu5 at 224 x 224 max-pooled over 2 x 2 cells, each
  picture's 5 nearest neighbours by correlation; precision = the share of
  its class, against chance (a random neighbour's).

``--measure-only`` measures the snapshots of an earlier run in ``--out``
without training; ``--replot`` only redraws learning.png from the
learning.json in ``--out`` (where a run was measured on a machine without
matplotlib, such as the GPU bundle's Python).

Prints one line per checkpoint and writes learning.json and learning.png
into ``--out``.  A short CPU run: ``--iters 200 --every 50`` (see
docs/evaluation.md for the measured curve and its duration).

    .venv/bin/python bench/learning.py --out /tmp/learning [--iters 200]
        [--every 50] [--batch-size 64] [--base-lr 1e-4 --momentum 0.9]
        [--gpu 0] [--images TRAIN... --held-out HELD...]

On the GPU machine, bench/gpu_session.sh's ``learning`` step runs it on
the photos bench/gpu_prepare.sh split into gpudata/photos/{train,held}.
"""
import argparse
import json
import os
import subprocess
import sys
import time

os.environ.setdefault('GLOG_minloglevel', '2')  # before caffe loads glog
import numpy as np  # noqa: E402

from deepcontext.data import debian_photos, labelled_folder  # noqa: E402
from deepcontext.data import photos  # noqa: E402
from deepcontext.eval import features, logparse, neighbours  # noqa: E402
from deepcontext.eval import pretext, toolcheck  # noqa: E402
from deepcontext.model import pycaffe  # noqa: E402
from deepcontext.train import snapshots  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PER_IMAGE = 4
CATEGORY_K = 5


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--out', required=True)
    p.add_argument('--iters', type=int, default=200)
    p.add_argument('--every', type=int, default=50)
    p.add_argument('--batch-size', type=int, default=64)
    p.add_argument('--base-lr', type=float, default=1e-4,
                   help='(the original: 1e-5 without momentum on batches '
                        'of ~2,000 pairs, which moves nothing in a few '
                        'hundred CPU steps; 1e-3 with momentum trips the '
                        "original's divergence check within 300 steps)")
    p.add_argument('--momentum', type=float, default=0.9)
    p.add_argument('--gpu', type=int, default=None)
    p.add_argument('--workers', type=int, default=2)
    p.add_argument('--images', nargs='+', default=None,
                   help='training images (folders, lists, files; default: '
                        'photos.train_photos())')
    p.add_argument('--held-out', nargs='+', default=None,
                   help='held-out images (default: photos.held_out_photos())')
    p.add_argument('--categories', default=None,
                   help='labelled set for category retrieval (default: '
                        "GCompris's categories; 'none' to skip)")
    p.add_argument('--measure-only', action='store_true',
                   help='measure the snapshots already in --out')
    p.add_argument('--replot', action='store_true',
                   help='redraw learning.png from --out/learning.json')
    return p.parse_args()


def train(args):
    """Run train.py to --iters; return (run folder, seconds)."""
    os.makedirs(args.out, exist_ok=True)
    cfg = os.path.join(args.out, 'deepcontext_config.py')
    settings = dict(out_dir=os.path.abspath(args.out),
                    batch_size=args.batch_size,
                    snapshot_every=args.every, stats_every=10,
                    loader_workers=args.workers, queue_size=2,
                    base_lr=args.base_lr, momentum=args.momentum,
                    resume='yes')
    if args.gpu is not None:
        settings['gpu'] = args.gpu
    # train.py runs in --out: the config names folders absolutely
    images = ('images = %r\n' % ([os.path.abspath(p) for p in args.images],)
              if args.images else
              'from deepcontext.data import photos as _photos\n'
              'images = _photos.train_photos()\n')
    with open(cfg, 'w') as f:
        f.write(images + ''.join('%s = %r\n' % kv for kv in settings.items()))
    t0 = time.time()
    r = subprocess.run([sys.executable, os.path.join(ROOT, 'train.py'),
                        '--config', cfg, '--max-iter', str(args.iters),
                        '--resume', 'yes'],
                       env=dict(os.environ, GLOG_minloglevel='1'),
                       cwd=args.out, stdout=subprocess.DEVNULL)
    outdir = os.path.join(args.out, 'train_out')
    stopped = None
    if r.returncode == 3:
        # The original's divergence check stopped the run: measure the
        # snapshots it left, and say so.
        stopped = logparse.last_message(os.path.join(outdir, 'out.log'),
                                        'diverged at iteration')
        print('training stopped by the divergence check: %s' % stopped)
    elif r.returncode != 0:
        sys.exit('training failed (exit %d); see %s'
                 % (r.returncode, args.out))
    return outdir, time.time() - t0, stopped


def same_photo_precision(net, patches, owner):
    """Share of each patch's PER_IMAGE fc6 neighbours from its own photo."""
    data = np.stack([features.prep_eval(p) for p in patches])
    feats = features.extract(net, data, ['relu6'])['relu6']
    idx, _ = neighbours.nearest_neighbours(feats, np.arange(len(owner)),
                                           k=PER_IMAGE)
    return float(np.mean(owner[idx] == owner[:, None]))


def category_precision(net, paths, labels):
    """Share of each picture's CATEGORY_K relu5 neighbours of its class."""
    feats = features.image_features(net, paths, layer='relu5', side=224,
                                    grid=2, op='max')
    idx, _ = neighbours.nearest_neighbours(feats, np.arange(len(labels)),
                                           k=CATEGORY_K)
    return float(np.mean(labels[idx] == labels[:, None]))


def category_chance(labels):
    """Precision of a random neighbour (the query itself left out)."""
    n = np.bincount(labels).astype(float)
    return float(np.sum(n * (n - 1)) / (len(labels) * (len(labels) - 1)))


def measure(outdir, iteration, held, patches, owner, categories):
    weights = (None if iteration == 0 else os.path.join(
        outdir, 'model_iter_%d.caffemodel' % iteration))
    net, bn_mode = features.load_net(
        weights, os.path.join(outdir, 'network.prototxt'))
    r = pretext.pretext_accuracy(net, held, seed=0, report=lambda s: None)
    return {'iteration': iteration, 'bn_mode': bn_mode,
            'pretext_accuracy': r['accuracy'],
            'majority_baseline': r['majority_baseline'],
            'loss_per_pair': r['loss_per_pair'], 'pairs': r['pairs'],
            'fc6_same_photo_precision': same_photo_precision(net, patches,
                                                             owner),
            'relu5_category_precision': (
                None if categories is None else
                category_precision(net, *categories))}


def draw(out, rows, chance_retrieval, chance_category=None):
    """learning.png in ``out``; False (and a line) without matplotlib."""
    try:
        from deepcontext.eval import plots
    except ImportError as e:
        print('learning.png not drawn (%s): bench/learning.py --replot --out '
              'DIR draws it from learning.json where matplotlib is' % e)
        return False
    plots.save(figure(rows, chance_retrieval, chance_category),
               os.path.join(out, 'learning.png'))
    return True


def figure(rows, chance_retrieval, chance_category=None):
    from deepcontext.eval import plots      # matplotlib: see draw
    it = [r['iteration'] for r in rows]
    series = {'pretext accuracy': (
        [100 * r['pretext_accuracy'] for r in rows], None),
        'fc6 same-photo precision': (
        [100 * r['fc6_same_photo_precision'] for r in rows], None)}
    if rows[0].get('relu5_category_precision') is not None:
        series['relu5 category precision'] = (
            [100 * r['relu5_category_precision'] for r in rows], None)
    return plots.curves_figure(
        series, it, [str(i) for i in it], 'iteration', '% on held-out photos',
        'learning on the embedded photos, measured on held-out ones',
        # Each reference line in its series' colour (matplotlib's cycle).
        [(100 / 8.0, 'pretext chance', dict(color='tab:blue', ls=':')),
         (100 * rows[0]['majority_baseline'], 'most frequent label',
          dict(color='tab:blue', ls='--', lw=1)),
         (100 * chance_retrieval, 'same-photo chance',
          dict(color='tab:orange', ls=':'))]
        + ([] if chance_category is None else
           [(100 * chance_category, 'category chance',
             dict(color='tab:green', ls=':'))]))


def main():
    args = parse_args()
    if args.replot:
        with open(os.path.join(args.out, 'learning.json')) as f:
            run = json.load(f)
        if not draw(args.out, run['rows'], run['retrieval_chance'],
                    run.get('category_chance')):
            sys.exit(1)
        print('wrote %s/learning.png' % args.out)
        return
    if args.measure_only:
        outdir, seconds, stopped = (os.path.join(args.out, 'train_out'),
                                    None, None)
    else:
        outdir, seconds, stopped = train(args)
    pycaffe.set_mode(args.gpu)
    categories, cat_chance = None, None
    if args.categories != 'none':
        paths, labels, _ = labelled_folder.open_labelled(
            args.categories or debian_photos.gcompris_categories())
        categories, cat_chance = (paths, labels), category_chance(labels)
    held = (toolcheck.image_files(args.held_out).paths if args.held_out
            else photos.held_out_photos())
    patches, owner, _ = neighbours.sample_patches(held, PER_IMAGE, seed=0,
                                                  report=lambda s: None)
    chance = (PER_IMAGE - 1) / float(len(owner) - 1)
    print('%s; measuring on %d held-out photos'
          % ('the snapshots of %s' % outdir if seconds is None else
             'trained %d iterations in %.0f s' % (args.iters, seconds),
             len(held)))
    rows = []
    for iteration in [0] + snapshots.complete(outdir):
        rows.append(measure(outdir, iteration, held, patches, owner,
                            categories))
        r = rows[-1]
        print('iteration %5d: pretext %.1f%% (most frequent label %.1f%%, '
              'chance 12.5%%), fc6 same-photo precision@%d %.1f%% '
              '(chance %.1f%%)'
              % (iteration, 100 * r['pretext_accuracy'],
                 100 * r['majority_baseline'], PER_IMAGE,
                 100 * r['fc6_same_photo_precision'], 100 * chance)
              + ('' if categories is None else
                 ', relu5 category precision@%d %.1f%% (chance %.1f%%)'
                 % (CATEGORY_K, 100 * r['relu5_category_precision'],
                    100 * cat_chance)),
              flush=True)
    with open(os.path.join(args.out, 'learning.json'), 'w') as f:
        json.dump(dict(vars(args), train_seconds=seconds,
                       held_out_photos=len(held), stopped=stopped,
                       retrieval_chance=chance,
                       category_chance=cat_chance, rows=rows), f, indent=1)
    drawn = draw(args.out, rows, chance, cat_chance)
    print('wrote %s/learning.json%s'
          % (args.out, ' and learning.png' if drawn else ''))


if __name__ == '__main__':
    main()
