"""Detect on a VOC image set and score it: VOC07 11-point AP per class, mAP.

    python tools/test_detector.py WEIGHTS --def EXPORT/test.prototxt
        --voc VOC2007 --proposals FILE [--image-set test] [--out DIR] [--gpu ID]
        [--protocol fast-rcnn|py-faster-rcnn]

WEIGHTS: a snapshot of tools/train_detector.py.  Detection and scoring:
deepcontext/transfer/detector.py and deepcontext/eval/detection.py (the
VOC2007 devkit's rule, difficult boxes ignored).  --protocol fast-rcnn (the
default, fast-rcnn's test_net): per class an adaptive threshold that keeps
40 detections per image over the set, at most 100 per class and image, then
NMS 0.3; py-faster-rcnn: score > 0.05, NMS 0.3, at most 100 per image over
all classes.  Prints the results table; writes OUT/detection.json (APs, mAP,
the protocol and its settings) and OUT/pr_curves.png.  No MATLAB.
"""
import argparse
import json
import os
import sys

os.environ.setdefault('GLOG_minloglevel', '2')  # before caffe loads glog
import numpy as np  # noqa: E402

from deepcontext.data import voc  # noqa: E402
from deepcontext.eval import detection, plots  # noqa: E402
from deepcontext.model import pycaffe  # noqa: E402
from deepcontext.transfer import detector, fast_rcnn  # noqa: E402


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('weights', help='detector caffemodel')
    p.add_argument('--def', dest='definition', required=True,
                   help='test.prototxt written by export_fast_rcnn.py')
    p.add_argument('--voc', required=True, help='VOC root (VOC2007 folder)')
    p.add_argument('--image-set', default='test')
    p.add_argument('--proposals', required=True,
                   help="selective-search .mat (Fast R-CNN's) or box file")
    p.add_argument('--out', default='.', help='folder for the results')
    p.add_argument('--scale', type=int, default=detector.SCALE)
    p.add_argument('--protocol', default='fast-rcnn',
                   choices=detector.PROTOCOLS,
                   help='test-time pruning (default fast-rcnn)')
    p.add_argument('--gpu', type=int, default=None)
    return p.parse_args()


def main():
    args = parse_args()
    for path in (args.weights, args.definition):
        if not os.path.isfile(path):
            sys.exit('test_detector: no such file %s' % path)
    try:
        records = voc.load(args.voc, args.image_set, args.proposals)
    except voc.VocError as e:
        sys.exit('test_detector: %s' % e)
    try:
        pycaffe.set_mode(args.gpu)
    except pycaffe.NoGPU as e:
        sys.exit('test_detector: %s' % e)
    netdef = pycaffe.read_netparam(args.definition)
    old = fast_rcnn.outdated(netdef)
    if old:
        print('test_detector: note: %s is an export from before the RoI '
              'alignment (no %s): it tests the detector it trained, not '
              "today's recipe" % (args.definition, old))
    net = pycaffe.net_from_param(netdef, 'test', args.weights)
    found, prune = detector.detect(net, records, len(voc.CLASSES),
                                   args.protocol, scale=args.scale)
    results = detection.evaluate(found, records)
    print('\n'.join(detection.table(results)))
    os.makedirs(args.out, exist_ok=True)
    nan = lambda x: None if np.isnan(x) else float(x)  # noqa: E731
    summary = {k: (nan(v) if k == 'mAP' else dict(ap=nan(v['ap']),
                                                  boxes=v['npos']))
               for k, v in results.items()}
    summary['detections'] = int(sum(len(d) for c in found[1:] for d in c))
    summary['protocol'] = prune.settings(voc.CLASSES)
    summary['definition_lacks'] = old
    with open(os.path.join(args.out, 'detection.json'), 'w') as f:
        json.dump(summary, f, indent=2)
    png = plots.save(detection.pr_figure(results),
                     os.path.join(args.out, 'pr_curves.png'))
    print('wrote %s and %s' % (os.path.join(args.out, 'detection.json'), png))


if __name__ == '__main__':
    main()
