"""Data-dependent initialisation and rescaling of a Caffe net (magic_init).

    python tools/rescale.py DEFINITION -l WEIGHTS -o OUT.caffemodel
        [--images PATH ...] [--init gaussian|pca|kmeans] [--no-calibrate]

Layers whose weights are all zero (or named with --reinit) are initialised
on real images; then all layers are calibrated to learn at the same rate
(deepcontext/transfer/calibration.py).  Prints a per-layer table before and after.
"""
import argparse
import os

os.environ.setdefault('GLOG_minloglevel', '2')  # before caffe loads glog
import numpy as np  # noqa: E402

from deepcontext.data import photos  # noqa: E402
from deepcontext.transfer import calibration  # noqa: E402


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
    net = calibration.load_net(args.definition, args.load)
    paths = args.images or photos.demo_photos()
    batches = calibration.input_batches(net, paths, args.batch_size,
                                    args.batches)
    table('before:', calibration.gradient_ratios(net, batches),
          calibration.weight_scales(net))
    for layer in args.reinit:
        net.params[layer][0].data[...] = 0
    rng = np.random.RandomState(0)
    for layer in calibration.zero_layers(net):
        std = calibration.init_layer(net, layer, batches[0], args.init, rng)
        print('initialised %s (%s): output std before scaling %.3g'
              % (layer, args.init, float(np.mean(std))))
    if not args.no_calibrate:
        calibration.calibrate(net, batches, rounds=args.rounds)
    after = calibration.gradient_ratios(net, batches)
    table('after:', after, calibration.weight_scales(net))
    values = np.array(list(after.values()))
    print('ratio spread: %.2f%% (max/min - 1)'
          % (100 * (values.max() / values.min() - 1)))
    net.save(args.output)
    print('wrote %s' % args.output)


if __name__ == '__main__':
    main()
