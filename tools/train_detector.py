"""Fast R-CNN fine-tuning on VOC, on our Caffe (CPU or GPU).

    python tools/train_detector.py EXPORT_DIR --voc VOC2007 --proposals FILE
        [--image-set trainval] [--iters 40000] [--out DIR] [--gpu ID]

EXPORT_DIR: what tools/export_fast_rcnn.py wrote (train_input.prototxt,
solver.prototxt, init.caffemodel); an export written before pool1/pool2 had
pad 1 and drop6 (issue 24) is refused with the command that re-exports.  Trains with Fast R-CNN's CaffeNet
recipe (deepcontext/transfer/detector.py: 2 images x 64 RoIs, 25%
foreground, flips, lr 0.001 divided by 10 after 30000 iterations) and prints
one progress line every --display iterations.  Writes OUT/fast_rcnn_iter_N
.caffemodel (un-normalised bbox_pred) every --snapshot-every iterations and
at the end, and OUT/train_log.json.  Stops with exit status 3 when a loss is
NaN or infinite.
"""
import argparse
import json
import os
import sys

os.environ.setdefault('GLOG_minloglevel', '2')  # before caffe loads glog
import caffe  # noqa: E402
import numpy as np  # noqa: E402
from caffe.proto import caffe_pb2  # noqa: E402
from google.protobuf import text_format  # noqa: E402

from deepcontext.data import voc  # noqa: E402
from deepcontext.model import pycaffe, solver as dc_solver  # noqa: E402
from deepcontext.transfer import detector, fast_rcnn  # noqa: E402


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('export', help='folder written by export_fast_rcnn.py')
    p.add_argument('--voc', required=True, help='VOC root (VOC2007 folder)')
    p.add_argument('--image-set', default='trainval')
    p.add_argument('--proposals', required=True,
                   help="selective-search .mat (Fast R-CNN's) or box file")
    p.add_argument('--iters', type=int, default=40000)
    p.add_argument('--out', help='output folder (default EXPORT/train)')
    p.add_argument('--snapshot-every', type=int, default=10000)
    p.add_argument('--display', type=int, default=20)
    p.add_argument('--scale', type=int, default=detector.SCALE)
    p.add_argument('--rois-per-image', type=int,
                   default=detector.ROIS_PER_IMAGE)
    p.add_argument('--gpu', type=int, default=None)
    p.add_argument('--seed', type=int, default=3)
    return p.parse_args()


def main():
    args = parse_args()
    out = os.path.abspath(args.out or os.path.join(args.export, 'train'))
    files = {n: os.path.join(args.export, n) for n in
             ('train_input.prototxt', 'solver.prototxt', 'init.caffemodel')}
    missing = [p for p in files.values() if not os.path.isfile(p)]
    if missing:
        sys.exit('train_detector: %s missing: run tools/export_fast_rcnn.py '
                 'first' % missing[0])
    old = fast_rcnn.outdated(pycaffe.read_netparam(
        files['train_input.prototxt']))
    if old:
        sys.exit('train_detector: %s is an export from before the RoI '
                 'alignment (no %s): export again with '
                 'tools/export_fast_rcnn.py DEFINITION WEIGHTS %s'
                 % (args.export, old, args.export))
    try:
        records = voc.load(args.voc, args.image_set, args.proposals)
    except voc.VocError as e:
        sys.exit('train_detector: %s' % e)
    try:
        pycaffe.set_mode(args.gpu)
    except pycaffe.NoGPU as e:
        sys.exit('train_detector: %s' % e)
    os.makedirs(out, exist_ok=True)
    caffe.set_random_seed(args.seed)
    s = caffe_pb2.SolverParameter()
    with open(files['solver.prototxt']) as f:
        text_format.Merge(f.read(), s)
    s.train_net = os.path.abspath(files['train_input.prototxt'])
    s.snapshot_prefix = os.path.join(out, 'fast_rcnn')
    s.max_iter = args.iters
    s.random_seed = args.seed
    num_classes = len(voc.CLASSES)
    entries = detector.roidb(records, flip=True)
    trainer = detector.DetectorTrainer(
        dc_solver.write_solver(os.path.join(out, 'solver.prototxt'), s),
        files['init.caffemodel'], entries, num_classes, seed=args.seed,
        scale=args.scale, rois_per_image=args.rois_per_image)
    print('training on %d images (%d with flips), %d iterations'
          % (len(records), len(entries), args.iters))
    window, status = [], 0
    while trainer.solver.iter < args.iters:
        row = trainer.step()
        window.append(row)
        if not (np.isfinite(row['loss_cls']) and
                np.isfinite(row['loss_bbox'])):
            print('Iteration %d: loss is NaN or infinite (loss_cls %g, '
                  'loss_bbox %g): diverged' % (row['iter'], row['loss_cls'],
                                               row['loss_bbox']))
            status = 3
            break
        if row['iter'] % args.display == 0 or row['iter'] == 1:
            print('Iteration %d, loss_cls = %.4f, loss_bbox = %.4f, fg = %d/%d, '
                  '%.2f s/iter' % (row['iter'], np.mean([r['loss_cls'] for r in window]),
                                   np.mean([r['loss_bbox'] for r in window]),
                                   row['fg'], row['rois'],
                                   np.mean([r['time'] for r in window])),
                  flush=True)
            window = []
        if row['iter'] % args.snapshot_every == 0 or \
                row['iter'] == args.iters:
            path = trainer.snapshot('%s_iter_%d.caffemodel'
                                    % (s.snapshot_prefix, row['iter']))
            print('wrote %s' % path)
    with open(os.path.join(out, 'train_log.json'), 'w') as f:
        json.dump(trainer.history, f)
    sys.exit(status)


if __name__ == '__main__':
    main()
