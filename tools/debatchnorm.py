"""Fold BatchNorm into conv/fc weights: a network other Caffe tools accept.

    python tools/debatchnorm.py indefinition inmodel outdefinition outmodel

Same command line and rules as the original debatchnorm.py (see
deepcontext/transfer/debatchnorm.py).  When the output definition has the same patch
tower as the input (e.g. network_no_bn.prototxt), the result is verified:
real patches go through the BatchNorm net in TEST phase (global statistics)
and through the folded net, and every shared blob up to fc6 must agree to
1e-4 relative, or the tool fails.
"""
import argparse
import os
import sys

os.environ.setdefault('GLOG_minloglevel', '2')  # before caffe loads glog
import caffe  # noqa: E402

from deepcontext.data import batches, photos  # noqa: E402
from deepcontext.eval import toolcheck  # noqa: E402
from deepcontext.transfer import debatchnorm  # noqa: E402

TOLERANCE = 1e-4
SHARED = ['conv1', 'pool1', 'norm1', 'conv2', 'pool2', 'norm2', 'conv3',
          'conv4', 'conv5', 'pool5', 'fc6']


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('indefinition', help='input network definition (prototxt)')
    p.add_argument('inmodel', help='input network parameters (caffemodel)')
    p.add_argument('outdefinition', help='output network definition')
    p.add_argument('outmodel', help='output parameters (overwritten)')
    p.add_argument('--images', nargs='+', default=None,
                   help='images for the check: folders, list files or '
                        'files (default: embedded photos)')
    p.add_argument('--patches', type=int, default=32)
    return p.parse_args()


def verify(args, src_def, dst_def):
    if debatchnorm.tower_signature(src_def) != debatchnorm.tower_signature(dst_def):
        print('check skipped: conv1..fc6 of %s differ from the input '
              'definition (shapes, padding), so activations cannot be '
              'compared' % args.outdefinition)
        return True
    images = (toolcheck.image_files(args.images).paths if args.images
              else photos.test_photos())
    data = batches.real_patches(images, args.patches)
    bn = caffe.Net(args.indefinition, args.inmodel, caffe.TEST)
    folded = caffe.Net(args.outdefinition, args.outmodel, caffe.TEST)
    ok = True
    for name, (diff, rel) in debatchnorm.compare_activations(
            bn, folded, SHARED, data, end='relu6').items():
        good = rel <= TOLERANCE
        ok &= good
        print('check %-6s max abs diff %.3g, relative %.3g  %s'
              % (name, diff, rel, 'ok' if good else 'TOO LARGE'))
    return ok


def main():
    args = parse_args()
    caffe.set_mode_cpu()
    src_def = toolcheck.net_definition(args.indefinition, 'indefinition')
    dst_def = toolcheck.net_definition(args.outdefinition, 'outdefinition')
    toolcheck.input_file(args.inmodel, 'inmodel')
    src = caffe.Net(args.indefinition, args.inmodel, caffe.TEST)
    dst = caffe.Net(args.outdefinition, caffe.TEST)
    debatchnorm.debatchnorm(src, src_def, dst)
    toolcheck.finite_net(dst, 'the folded network')
    dst.save(args.outmodel)
    print('wrote %s' % args.outmodel)
    if not verify(args, src_def, dst_def):
        sys.exit('debatchnorm: CHECK FAILED: the folded network differs from '
                 'the BatchNorm network by more than %g' % TOLERANCE)
    print('check passed: the folded network matches up to fc6')


if __name__ == '__main__':
    toolcheck.run(main, 'debatchnorm')
