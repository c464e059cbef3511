"""Relative-position (pretext) accuracy of a snapshot on held-out images.

    python tools/eval_pretext.py --weights model_iter_N.caffemodel \
        [--images HELD_OUT] [--random] [--max-images 200] [--out DIR]

Patches are sampled and preprocessed exactly as in training (fixed seeds)
from images the run never saw, and classified in TEST phase.  Chance is
12.5%, but always answering the most frequent label (left or right) scores
about 15%, printed as the majority baseline; the paper reports about 40%
on ImageNet val.  --images takes what the config's ``images`` takes:
folders, list files, image files; without it, the embedded held-out photos
(``photos.held_out_photos()``, which no demo or bench run trains on).
"""
import argparse
import os

os.environ.setdefault('GLOG_minloglevel', '2')  # before caffe loads glog
from deepcontext.data import photos  # noqa: E402
from deepcontext.data.sampling import CHANCE_LOSS  # noqa: E402
from deepcontext.eval import pretext, toolargs, toolcheck  # noqa: E402


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    toolargs.add_net_arguments(p)
    p.add_argument('--images', nargs='+', default=None,
                   help='held-out images (folders, lists or files); '
                        'default: the embedded held-out photos')
    p.add_argument('--max-images', type=int, default=None,
                   help='use the first N images only')
    p.add_argument('--grids', type=int, default=4,
                   help='grids per image (training uses 4)')
    p.add_argument('--batch-size', type=int, default=256,
                   help='patches per forward pass (at most)')
    p.add_argument('--out', help='folder for pretext.json')
    return p.parse_args()


def main():
    args = parse_args()
    toolcheck.net_files(args)
    if args.images:
        image_set = toolcheck.image_files(args.images)
        paths, where = image_set.paths, image_set.describe()
    else:
        paths, where = photos.held_out_photos(), 'the embedded held-out photos'
    paths = paths[:args.max_images]
    print('evaluating on %d images from %s' % (len(paths), where))
    results = []
    for tag, net, bn_mode in toolargs.iter_nets(args):
        r = pretext.pretext_accuracy(net, paths, args.seed,
                                     args.batch_size, args.grids)
        r.update(net=tag, weights=args.weights if tag == 'trained' else None,
                 bn_mode=bn_mode)
        print('%s: pretext accuracy %.4f (chance %.4f, majority label '
              '%.4f) on %d pairs from %d images, loss per pair %.4f '
              '(ln 8 = %.4f), BatchNorm %s'
              % (tag, r['accuracy'], r['chance'], r['majority_baseline'],
                 r['pairs'], r['images'], r['loss_per_pair'], CHANCE_LOSS,
                 bn_mode))
        results.append(r)
    toolcheck.finite_numbers(results, 'pretext.json')
    if args.out:
        toolargs.write_json(args.out, 'pretext.json',
                            {'images': paths, 'seed': args.seed,
                             'results': results})


if __name__ == '__main__':
    toolcheck.run(main, 'eval_pretext')
