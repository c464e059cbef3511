"""Export a trained (debatchnormed) network for Fast R-CNN fine-tuning.

    python tools/export_fast_rcnn.py DEFINITION WEIGHTS OUTDIR
        [--num-classes 21] [--fc6-mode conv6|roi3x3] [--input-scale 1|auto]

DEFINITION/WEIGHTS: the network without BatchNorm (tools/debatchnorm.py,
optionally tools/rescale.py).  Writes OUTDIR/train.prototxt (Fast R-CNN's
RoIDataLayer input), test.prototxt, solver.prototxt and init.caffemodel, and
says which layers were transferred, reshaped or freshly initialised (see
deepcontext/transfer/fast_rcnn.py for the conv6 conversion and the RGB/BGR and input
scale handling).
"""
import argparse
import json
import os
import sys

os.environ.setdefault('GLOG_minloglevel', '2')  # before caffe loads glog
import caffe  # noqa: E402
from google.protobuf import text_format  # noqa: E402

from deepcontext.data import decode, photos  # noqa: E402
from deepcontext.eval import toolcheck  # noqa: E402
from deepcontext.transfer import fast_rcnn  # noqa: E402


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('definition', help='network without BatchNorm (prototxt)')
    p.add_argument('weights', help='its caffemodel')
    p.add_argument('outdir')
    p.add_argument('--num-classes', type=int, default=21,
                   help='classes including background (VOC: 21)')
    p.add_argument('--fc6-mode', default='conv6', choices=('conv6', 'roi3x3'))
    p.add_argument('--input-scale', default='1',
                   help="factor on conv1, or 'auto' (50 / RMS of Fast R-CNN "
                        "input on the embedded photos)")
    p.add_argument('--seed', type=int, default=0,
                   help='seed of the freshly initialised layers')
    return p.parse_args()


def write(path, proto):
    with open(path, 'w') as f:
        f.write(text_format.MessageToString(proto))
    print('wrote %s' % path)


def main():
    args = parse_args()
    toolcheck.input_file(args.weights, 'weights')
    if any(l.type == 'BatchNorm' for l in
           toolcheck.net_definition(args.definition).layer):
        sys.exit('%s has BatchNorm layers: run tools/debatchnorm.py first'
                 % args.definition)
    scale = (fast_rcnn.measure_input_scale(
        [decode.load_rgb(p) for p in photos.test_photos()])
        if args.input_scale == 'auto' else float(args.input_scale))
    os.makedirs(args.outdir, exist_ok=True)
    out = lambda name: os.path.join(args.outdir, name)  # noqa: E731
    for name, train in (('train.prototxt', True), ('test.prototxt', False)):
        write(out(name), fast_rcnn.gen_net(args.num_classes, train,
                                           args.fc6_mode))
    write(out('solver.prototxt'), fast_rcnn.gen_solver(
        'train.prototxt', 'deepcontext_fast_rcnn'))
    caffe.set_mode_cpu()
    caffe.set_random_seed(args.seed)   # fresh layers: reproducible exports
    src = caffe.Net(args.definition, args.weights, caffe.TEST)
    dst = caffe.Net(out('test.prototxt'), caffe.TEST)
    report = fast_rcnn.transfer(src, dst, args.fc6_mode, scale)
    toolcheck.finite_net(dst, 'init.caffemodel')
    dst.save(out('init.caffemodel'))
    print('wrote %s' % out('init.caffemodel'))
    with open(out('export.json'), 'w') as f:
        json.dump({'layers': report, 'input_scale': scale,
                   'fc6_mode': args.fc6_mode,
                   'num_classes': args.num_classes}, f, indent=2)


if __name__ == '__main__':
    toolcheck.run(main, 'export_fast_rcnn')
