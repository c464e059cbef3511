"""Nearest-neighbour patches by normalized correlation (paper, Figure 4).

    python tools/nn_patches.py --weights model_iter_N.caffemodel --random \
        --images IMAGES --out DIR [--layers pool5 fc6] [--queries 8 --k 8]

Samples patches from the images (grid patches as in training), extracts
their features and draws, for each net and layer, a PNG whose rows are a
query patch (red frame) and its k most correlated patches from other
images.  The same patches and queries are used for every net, so a trained
and a random-init montage can be compared side by side.  nn.json lists
the neighbours and their correlations.
"""
import argparse
import os

import numpy as np

os.environ.setdefault('GLOG_minloglevel', '2')  # before caffe loads glog
from deepcontext.eval import neighbours, plots, toolargs, toolcheck  # noqa: E402


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    toolargs.add_net_arguments(p)
    toolargs.add_input_arguments(p)
    p.add_argument('--images', nargs='+', required=True,
                   help='images to take patches from')
    p.add_argument('--out', required=True, help='folder for PNGs and JSON')
    p.add_argument('--layers', nargs='+', default=['pool5', 'fc6'])
    p.add_argument('--per-image', type=int, default=4,
                   help='patches per image')
    p.add_argument('--queries', type=int, default=8)
    p.add_argument('--k', type=int, default=8, help='neighbours per query')
    p.add_argument('--same-image', action='store_true',
                   help="allow neighbours from the query's own image")
    return p.parse_args()


def main():
    args = parse_args()
    toolcheck.net_files(args)
    paths = toolcheck.image_files(args.images).paths
    patches, owner, corners = neighbours.sample_patches(
        paths, args.per_image, args.seed)
    queries = np.sort(np.random.RandomState(args.seed).choice(
        len(patches), min(args.queries, len(patches)), replace=False))
    print('%d patches from %d images, %d queries'
          % (len(patches), len(set(owner.tolist())), len(queries)))
    groups = None if args.same_image else owner
    result = {'images': paths, 'patch_image': owner.tolist(),
              'patch_corner': corners.tolist(), 'queries': queries.tolist(),
              'nets': {}}
    for tag, net, bn_mode in toolargs.iter_nets(args):
        spec = toolargs.input_spec(args, net, patches)
        found = neighbours.patch_neighbours(net, patches, args.layers,
                                            queries, args.k, groups,
                                            spec=spec)
        result['nets'][tag] = {'bn_mode': bn_mode, 'layers': {},
                               'input': spec.describe()}
        for layer, (idx, scores) in found.items():
            title = '%s, %s net (BatchNorm %s): query | %d nearest' % (
                layer, tag, bn_mode, idx.shape[1])
            path = plots.save(plots.neighbours_figure(
                patches, queries, idx, scores, title),
                os.path.join(args.out, 'nn_%s_%s.png' % (layer, tag)))
            print('%s %s: mean correlation of the neighbours %.3f; wrote %s'
                  % (tag, layer, scores.mean(), path))
            result['nets'][tag]['layers'][layer] = {
                'neighbours': idx.tolist(), 'correlation': scores.tolist()}
    toolcheck.finite_numbers(result, 'nn.json')
    toolargs.write_json(args.out, 'nn.json', result)


if __name__ == '__main__':
    toolcheck.run(main, 'nn_patches')
