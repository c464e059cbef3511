"""From a trained snapshot to Fast R-CNN's starting point, in one command.

    python tools/export_fast_rcnn.py DEFINITION WEIGHTS OUTDIR
        [--voc VOC2007 --image-set trainval --proposals FILE]
        [--num-classes 21] [--fc6-mode conv6|roi3x3] [--input-scale auto|X]
        [--head-init data|reference]

DEFINITION/WEIGHTS: the training's network.prototxt and a snapshot (BatchNorm
is folded and checked here), or a net already without BatchNorm.  The
recipe of the original README: fold BatchNorm, transfer into the detection
net (conv1 padded as trained, pool1/pool2 padded by 1 as Fast R-CNN's
CaffeNet, fc6 as conv6, drop6 and drop7, RGB->BGR, conv1 x input scale),
initialise fc7/cls_score/bbox_pred on real images with real RoIs, then
calibrate the net that will be fine-tuned (deepcontext/transfer/fast_rcnn.py,
calibration.py).  --head-init reference puts Fast R-CNN's own Gaussian
fillers (0.01, 0.001) into cls_score/bbox_pred after the calibration.  Calibration images: the VOC image set and its proposals
(--voc), else --images (default: the embedded photos) with random boxes.

Writes OUTDIR/train.prototxt (Fast R-CNN's RoIDataLayer), train_input.prototxt
(Input layers, for tools/train_detector.py), test.prototxt (old `input:`
form), solver.prototxt (absolute paths), init.caffemodel and export.json.
Exits 1, writing nothing, when the calibration does not converge.
"""
import argparse
import os
import sys

os.environ.setdefault('GLOG_minloglevel', '2')  # before caffe loads glog
import caffe  # noqa: E402

from deepcontext.data import photos, voc  # noqa: E402
from deepcontext.eval import toolcheck  # noqa: E402
from deepcontext.transfer import calibration, fast_rcnn  # noqa: E402


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('definition', help='network.prototxt (or a no-BN net)')
    p.add_argument('weights', help='its caffemodel')
    p.add_argument('outdir')
    p.add_argument('--voc', help='VOC root (VOCdevkit/VOC2007) to '
                                 'calibrate on, with --proposals')
    p.add_argument('--image-set', default='trainval')
    p.add_argument('--proposals', help='selective-search .mat or box file')
    p.add_argument('--images', nargs='+', default=None,
                   help='images without --voc (default: embedded photos)')
    p.add_argument('--num-classes', type=int, default=21,
                   help='classes including background (VOC: 21)')
    p.add_argument('--fc6-mode', default='conv6', choices=('conv6', 'roi3x3'))
    p.add_argument('--head-init', default='data',
                   choices=fast_rcnn.HEAD_INITS,
                   help="cls_score/bbox_pred: 'data' (default: initialised "
                        "on real RoIs and calibrated) or 'reference' "
                        "(Fast R-CNN's gaussian 0.01 / 0.001, zero bias)")
    p.add_argument('--input-scale', default='auto',
                   help="factor on conv1; 'auto' (default): 50 / RMS of "
                        "Fast R-CNN's input on the calibration images")
    p.add_argument('--batches', type=int, default=2,
                   help='calibration minibatches (2 images each)')
    p.add_argument('--scale', type=int, default=600,
                   help='shorter image side (Fast R-CNN: 600)')
    p.add_argument('--rois-per-image', type=int, default=64)
    p.add_argument('--tolerance', type=float, default=0.05)
    p.add_argument('--rounds', type=int, default=10)
    p.add_argument('--seed', type=int, default=0)
    return p.parse_args()


def main():
    args = parse_args()
    toolcheck.net_definition(args.definition)
    toolcheck.input_file(args.weights, 'weights')
    images = (toolcheck.image_files(args.images).paths if args.images
              else photos.test_photos())
    caffe.set_mode_cpu()
    caffe.set_random_seed(args.seed)
    try:
        records = (voc.load(args.voc, args.image_set, args.proposals)
                   if args.voc else None)
        if records and not any(len(r['proposals']) for r in records):
            sys.exit('export_fast_rcnn: --voc needs --proposals')
        scale = args.input_scale
        if scale != 'auto':
            scale = float(scale)
        report, ok = fast_rcnn.export(
            args.definition, args.weights, args.outdir,
            images, records,
            num_classes=args.num_classes, fc6_mode=args.fc6_mode,
            input_scale=scale, calib_batches=args.batches,
            scale=args.scale, rois_per_image=args.rois_per_image,
            tolerance=args.tolerance, rounds=args.rounds,
            head_init=args.head_init, seed=args.seed)
    except (voc.VocError, fast_rcnn.ExportError,
            calibration.CalibrationError, ValueError) as e:
        sys.exit('export_fast_rcnn: %s' % e)
    cal = report['calibration']
    print('input scale %.4g; calibration: ratio spread %.2f%% after %d '
          'rounds; function kept to %.2g (largest relative deviation); '
          'head output scales %s' % (
              report['input_scale'], 100 * cal['spread'], cal['rounds'],
              max(cal['function'].values()),
              ', '.join('%s %.3g' % kv for kv in cal['head_scales'].items())))
    if not ok:
        sys.exit('export_fast_rcnn: calibration NOT CONVERGED (spread %.1f%% '
                 '> %.1f%%); nothing written (more --batches or --rounds, or '
                 'a larger --tolerance)' % (100 * cal['spread'],
                                            100 * args.tolerance))


if __name__ == '__main__':
    toolcheck.run(main, 'export_fast_rcnn')
