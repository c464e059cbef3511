"""Data-dependent initialisation and rescaling of a Caffe net (magic_init).

    python tools/rescale.py DEFINITION -l WEIGHTS -o OUT.caffemodel
        [--images PATH ...] [--init gaussian|pca|kmeans] [--no-calibrate]

Layers whose weights are all zero (or named with --reinit) are initialised
on real images; then all layers are calibrated to learn at the same rate
(deepcontext/rescale.py).  Prints a per-layer table before and after.
"""
import argparse
import os

os.environ.setdefault('GLOG_minloglevel', '2')  # before caffe loads glog
import numpy as np  # noqa: E402

from deepcontext import demo_data, rescale  # noqa: E402


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('definition', help='network definition (prototxt)')
    p.add_argument('-l', '--load', help='pretrained weights (caffemodel)')
    p.add_argument('-o', '--output', required=True, help='output caffemodel')
    p.add_argument('--images', nargs='+', default=None,
                   help='real images (default: the embedded photos)')
    p.add_argument('--init', default='gaussian',
                   choices=('gaussian', 'pca', 'kmeans'))
    p.add_argument('--reinit', nargs='*', default=[],
                   help='layers to initialise even if not zero')
    p.add_argument('--batch-size', type=int, default=32)
    p.add_argument('--batches', type=int, default=2)
    p.add_argument('--rounds', type=int, default=10)
    p.add_argument('--no-calibrate', action='store_true')
    return p.parse_args()


def table(title, ratios, scales):
    print(title)
    print('  %-8s %12s %12s' % ('layer', 'ratio', 'rms weight'))
    for layer, r in ratios.items():
        print('  %-8s %12.4g %12.4g' % (layer, r, scales[layer]))


def main():
    args = parse_args()
    net = rescale.load_net(args.definition, args.load)
    paths = args.images or demo_data.demo_photos()
    batches = rescale.input_batches(net, paths, args.batch_size,
                                    args.batches)
    table('before:', rescale.gradient_ratios(net, batches),
          rescale.weight_scales(net))
    for layer in args.reinit:
        net.params[layer][0].data[...] = 0
    rng = np.random.RandomState(0)
    for layer in rescale.zero_layers(net):
        std = rescale.init_layer(net, layer, batches[0], args.init, rng)
        print('initialised %s (%s): output std before scaling %.3g'
              % (layer, args.init, float(np.mean(std))))
    if not args.no_calibrate:
        rescale.calibrate(net, batches, rounds=args.rounds)
    after = rescale.gradient_ratios(net, batches)
    table('after:', after, rescale.weight_scales(net))
    values = np.array(list(after.values()))
    print('ratio spread: %.2f%% (max/min - 1)'
          % (100 * (values.max() / values.min() - 1)))
    net.save(args.output)
    print('wrote %s' % args.output)


if __name__ == '__main__':
    main()
