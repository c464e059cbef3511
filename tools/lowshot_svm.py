"""Low-shot linear SVMs on frozen features (the benchmark's VOC07 table).

    python tools/lowshot_svm.py --weights model_iter_N.caffemodel --random \
        --voc VOCdevkit/VOC2007 [--ks 1 2 4 8 16 32 64 96] \
        [--selection test|cv] [--out DIR]
    python tools/lowshot_svm.py ... --images LABELLED_SET [--test-images ..]

Features: each layer's output average-pooled (as tools/probe_layers.py),
streamed to .npy files.  For each k, 5 draws of k positives and
(C - 1) * k negatives per class; one-vs-rest linear SVMs; mean mAP (area
under the monotone PR curve, difficult ignored) per k.  --selection test
(default, the benchmark's): the one cost per k of 26 with the best mean
TEST mAP, as the published tables pick it; cv: per class, cross-validated
on the training sample (ours, honest).  The published tables are
ResNet-50 only.
--voc trains on trainval and tests on test; a single-label --images set
is split (or tested on --test-images) with one-hot targets.  Writes
lowshot.json and lowshot.png.
"""
import argparse
import os
import tempfile

import numpy as np

os.environ.setdefault('GLOG_minloglevel', '2')  # before caffe loads glog
from deepcontext.eval import layer_probe, lowshot, toolargs  # noqa: E402
from deepcontext.eval import toolcheck, transfer_sets  # noqa: E402


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    toolargs.add_net_arguments(p)
    toolargs.add_input_arguments(p)
    transfer_sets.add_set_arguments(p)
    p.add_argument('--layers', nargs='+', default=['relu5'])
    p.add_argument('--ks', nargs='+', type=int,
                   default=list(lowshot.K_VALUES))
    p.add_argument('--draws', type=int, default=5,
                   help='independent samples per k')
    p.add_argument('--selection', choices=lowshot.SELECTIONS,
                   default='test', help='cost rule: test (the benchmark: '
                   'picked on the test set) or cv (ours: cross-validated)')
    p.add_argument('--costs', nargs='+', type=float, default=None,
                   help='cost grid (default: the benchmark\'s 26 for test, '
                   '0.01 .. 100 for cv)')
    p.add_argument('--pooling', choices=layer_probe.POOLINGS,
                   default=layer_probe.POOLINGS[0],
                   help='as tools/probe_layers.py')
    p.add_argument('--side', type=int, default=224,
                   help='images are resized to side x side')
    p.add_argument('--batch-size', type=int, default=16)
    p.add_argument('--out', help='folder for lowshot.json and .png')
    return p.parse_args()


def main():
    args = parse_args()
    toolcheck.net_files(args)
    s = transfer_sets.multilabel_sets(args)
    print('%s: %d classes, %d train / %d test images'
          % (s['source'], len(s['class_names']), len(s['train']),
             len(s['test'])))
    paths = s['train'] + s['test']
    n = len(s['train'])
    results = {}
    sample = toolargs.scale_sample(s['train'], args.side)
    for tag, net, bn_mode in toolargs.iter_nets(args):
        transfer_sets.check_layers(net, args.layers)
        spec = toolargs.input_spec(args, net, sample)
        results[tag] = {'bn_mode': bn_mode, 'input': spec.describe()}
        with tempfile.TemporaryDirectory(prefix='lowshot_') as tmp:
            files = layer_probe.extract_layers(
                net, paths, tmp, args.layers, args.side, args.batch_size,
                args.seed, toolargs.eta_progress('%s features' % tag),
                args.pooling, spec)
            for layer, path in files.items():
                x = np.load(path)
                print('%s %s (%d-dim):' % (tag, layer, x.shape[1]))
                results[tag][layer] = lowshot.lowshot_svm(
                    x[:n], s['train_labels'], x[n:], s['test_labels'],
                    args.ks, args.draws, args.seed, args.costs,
                    args.selection)
    chance = transfer_sets.random_map(s['test_labels'])
    for layer in args.layers:
        print('mAP (%%) of %s; random scores about %.1f' % (layer,
                                                            100 * chance))
        for line in lowshot.table({t: r[layer] for t, r in results.items()},
                                  args.ks):
            print(line)
    toolcheck.finite_numbers(results, 'lowshot.json')
    if args.out:
        toolargs.write_json(args.out, 'lowshot.json', dict(
            vars(args), source=s['source'], class_names=s['class_names'],
            train=n, test=len(s['test']), random_scores_map=chance,
            results=results))
        layer = args.layers[-1]
        toolargs.save_figure(lowshot.figure(
            {t: r[layer] for t, r in results.items()}, args.ks, chance,
            'low-shot linear SVMs on %s' % layer), args.out, 'lowshot.png')


if __name__ == '__main__':
    toolcheck.run(main, 'lowshot_svm')
