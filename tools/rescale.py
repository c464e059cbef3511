"""Data-dependent initialisation and rescaling of a Caffe net (magic_init).

    python tools/rescale.py DEFINITION -l WEIGHTS -o OUT.caffemodel
        [--images PATH ...] [--init gaussian|pca|kmeans] [--no-calibrate]

Layers whose weights are all zero (or named with --reinit) are initialised
on real images; then all layers are calibrated to learn at the same rate
(deepcontext/transfer/calibration.py).  The calibrated net computes the
same function with every blob scaled; LRN keeps it exact through a new
alpha, so the tool also writes OUT.prototxt (the definition to use with
OUT.caffemodel).  Prints the ratios before and after and the layer-by-layer
check; exits 1, writing nothing, when the ratios do not converge or a
weight turns NaN.  For Fast R-CNN use tools/export_fast_rcnn.py, which
calibrates the detection net itself.
"""
import argparse
import os
import sys

os.environ.setdefault('GLOG_minloglevel', '2')  # before caffe loads glog
import numpy as np  # noqa: E402

from deepcontext.data import photos  # noqa: E402
from deepcontext.eval import toolcheck  # noqa: E402
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
    p.add_argument('--draws', type=int, default=4,
                   help='random gradients per batch and round')
    p.add_argument('--tolerance', type=float, default=0.1,
                   help='largest ratio spread (max/min - 1) accepted on the '
                        'independent re-measurement')
    p.add_argument('--no-calibrate', action='store_true')
    return p.parse_args()


def print_report(report):
    print('  %-10s %12s %12s %10s %12s' % ('layer', 'ratio before',
                                           'ratio after', '+-', 'factor'))
    for l, r in report['before'].items():
        print('  %-10s %12.4g %12.4g %9.1f%% %12.4g' % (
            l, r, report['independent'][l], 100 * report['noise'][l],
            report['factors'][l]))
    print('function kept, blob by blob (calibrated = scale x original):')
    for blob, (s, dev) in report['function'].items():
        print('  %-10s scale %10.4g   relative deviation %.2g' % (blob, s, dev))


def main():
    args = parse_args()
    toolcheck.net_definition(args.definition)
    toolcheck.input_file(args.load, 'weights')
    netdef, net = calibration.load_net(args.definition, args.load)
    toolcheck.known_layers(net, args.reinit, '--reinit layer')
    paths = (toolcheck.image_files(args.images).paths if args.images
             else photos.demo_photos())
    batches = calibration.input_batches(net, paths, args.batch_size,
                                        args.batches)
    for layer in args.reinit:
        net.params[layer][0].data[...] = 0
    rng = np.random.RandomState(0)
    for layer in calibration.zero_layers(net):
        std = calibration.init_layer(net, layer, batches[0], args.init, rng)
        print('initialised %s (%s): output std before scaling %.3g'
              % (layer, args.init, float(np.mean(std))))
    try:
        if not args.no_calibrate:
            net, report = calibration.calibrate(
                net, netdef, batches, rounds=args.rounds,
                tolerance=args.tolerance, draws=args.draws)
            print_report(report)
            if not report['converged']:
                sys.exit('rescale: NOT CONVERGED: ratio spread %.1f%% > %.1f%% '
                         'after %d rounds; nothing written (more --batches or '
                         '--rounds, or a larger --tolerance)' % (
                             100 * report['spread'], 100 * args.tolerance,
                             report['rounds']))
        calibration.check_finite(net, 'result')
    except calibration.CalibrationError as e:
        sys.exit('rescale: %s; nothing written' % e)
    net.save(args.output)
    print('wrote %s' % args.output)
    definition = os.path.splitext(args.output)[0] + '.prototxt'
    out = calibration.copy_lrn(netdef, calibration.read_definition(
        args.definition))
    with open(definition, 'w') as f:
        f.write(str(out))
    print('wrote %s (LRN alpha: %s)' % (definition, ', '.join(
        '%s %.4g' % (n, p.alpha) for n, p in
        calibration.lrn_params(out).items())))


if __name__ == '__main__':
    toolcheck.run(main, 'rescale')
