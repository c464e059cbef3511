"""Linear probe: logistic regression on frozen conv features, fixed split.

    python tools/linear_probe.py --weights model_iter_N.caffemodel --random \
        [--task defect] [--per-class 200] [--layer relu5] [--out DIR]

The labelled set is elpv-dataset (solar-cell images, installed with the
requirements; see deepcontext/data/labelled.py): ``--task defect``
(functional / defective) or ``--task type`` (mono / poly).  Each net sees
the same images and the same stratified split; the report gives test
accuracy, balanced accuracy and the majority-class baseline for each, and
the trained-minus-random difference.
"""
import argparse
import os

os.environ.setdefault('GLOG_minloglevel', '2')  # before caffe loads glog
from deepcontext.data import labelled  # noqa: E402
from deepcontext.eval import probe, toolargs, toolcheck  # noqa: E402


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    toolargs.add_net_arguments(p)
    toolargs.add_input_arguments(p)
    p.add_argument('--task', choices=sorted(labelled.TASKS),
                   default='defect')
    p.add_argument('--per-class', type=int, default=None,
                   help='use at most N images per class (default: all)')
    p.add_argument('--test-fraction', type=float, default=0.5)
    p.add_argument('--layer', default='relu5',
                   help='conv layer to probe (conv1 .. pool5, relu5, ...)')
    p.add_argument('--side', type=int, default=224,
                   help='images are resized to side x side')
    p.add_argument('--grid', type=int, default=2,
                   help='max-pool the feature map over grid x grid cells')
    p.add_argument('--out', help='folder for probe.json')
    return p.parse_args()


def main():
    args = parse_args()
    toolcheck.net_files(args)
    paths, labels, names = labelled.elpv(args.task)
    if args.per_class:
        keep = labelled.stratified_subset(labels, args.per_class,
                                          args.seed)
        paths, labels = [paths[i] for i in keep], labels[keep]
    train, test = labelled.fixed_split(labels, args.test_fraction,
                                       args.seed)
    print('elpv %s (%s): %d images, %d train / %d test'
          % (args.task, ' / '.join(names), len(paths), len(train), len(test)))
    results = {}
    sample = toolargs.scale_sample(paths, args.side)
    for tag, net, bn_mode in toolargs.iter_nets(args):
        spec = toolargs.input_spec(args, net, sample)
        r = probe.probe_images(net, paths, labels, train, test,
                               args.layer, args.side, args.grid,
                               args.seed, spec=spec)
        r['bn_mode'] = bn_mode
        r['input'] = spec.describe()
        results[tag] = r
        print('%s: test accuracy %.4f, balanced %.4f (majority baseline '
              '%.4f), %d-dim %s features, l2 %g, BatchNorm %s, %.0f s'
              % (tag, r['accuracy'], r['balanced_accuracy'],
                 r['majority_baseline'], r['dim'], args.layer, r['l2'],
                 bn_mode, r['feature_time']))
    if len(results) == 2:
        diff = results['trained']['accuracy'] - results['random']['accuracy']
        results['trained_minus_random'] = diff
        print('trained - random: %+.4f test accuracy' % diff)
    toolcheck.finite_numbers(results, 'probe.json')
    if args.out:
        toolargs.write_json(args.out, 'probe.json', dict(
            vars(args), images=len(paths), class_names=names,
            results=results))


if __name__ == '__main__':
    toolcheck.run(main, 'linear_probe')
