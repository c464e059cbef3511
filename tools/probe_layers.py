"""Linear probes on frozen conv1 .. conv5 (Zhang et al. 2017's protocol).

    python tools/probe_layers.py --weights model_iter_N.caffemodel --random \
        --images TRAIN_SET [--test-images VAL_SET] [--out DIR]

--images is a labelled set: a folder in ImageFolder layout (CLASS/xxx.jpg,
as ImageNet's and Places' train/) or a list file of "PATH LABEL" lines.
Without --test-images, a fixed stratified split of it is the test set.
Each layer's output is pooled (--pooling deepcluster: DeepCluster's
AvgPool settings, the default; zhang: Zhang et al.'s bilinear resize to
10/6/5/5/6; grid: ours) and streamed to .npy files; a multinomial
logistic regression is trained per layer.  Writes probe_layers.json and
probe_layers.png (top-1 per layer).
"""
import argparse
import os

os.environ.setdefault('GLOG_minloglevel', '2')  # before caffe loads glog
from deepcontext.eval import layer_probe, toolargs, toolcheck  # noqa: E402
from deepcontext.eval import transfer_sets  # noqa: E402


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    toolargs.add_net_arguments(p)
    toolargs.add_input_arguments(p)
    p.add_argument('--images', required=True,
                   help='labelled set: CLASS/xxx.jpg folder or list file')
    p.add_argument('--test-images', help='a separate labelled test set '
                   '(same classes); default: split --images')
    p.add_argument('--test-fraction', type=float, default=0.5)
    p.add_argument('--per-class', type=int, default=None,
                   help='use at most N images per class (before the split)')
    p.add_argument('--layers', nargs='+', default=list(layer_probe.LAYERS))
    p.add_argument('--pooling', choices=layer_probe.POOLINGS,
                   default=layer_probe.POOLINGS[0],
                   help='deepcluster (AvgPool 6/6/3, 4/4, 3/3/1, 3/3/1, '
                   '2/2), zhang (bilinear to 10/6/5/5/6) or grid (ours)')
    p.add_argument('--classifier', choices=layer_probe.CLASSIFIERS,
                   default='lbfgs', help='lbfgs: in memory, small sets; '
                   'sgd: streamed from the feature files (DeepCluster\'s '
                   'SGD), memory independent of the set size')
    p.add_argument('--side', type=int, default=224,
                   help='images are resized to side x side')
    p.add_argument('--batch-size', type=int, default=16)
    p.add_argument('--keep-features', action='store_true',
                   help='keep the .npy features under OUT/features/NET/')
    p.add_argument('--out', help='folder for probe_layers.json and .png')
    return p.parse_args()


def main():
    args = parse_args()
    toolcheck.net_files(args)
    if args.keep_features and not args.out:
        raise toolcheck.ToolError('--keep-features needs --out')
    paths, labels, names, train, test = transfer_sets.single_label_sets(args)
    print('%d classes, %d train / %d test images'
          % (len(names), len(train), len(test)))
    results = {}
    sample = toolargs.scale_sample([paths[i] for i in train], args.side)
    for tag, net, bn_mode in toolargs.iter_nets(args):
        transfer_sets.check_layers(net, args.layers)
        spec = toolargs.input_spec(args, net, sample)
        folder = (os.path.join(args.out, 'features', tag)
                  if args.keep_features else None)
        r = layer_probe.probe_layers(
            net, paths, labels, train, test, args.layers, args.side,
            args.batch_size, args.seed, folder,
            progress=toolargs.eta_progress('%s features' % tag),
            pooling=args.pooling, classifier=args.classifier, spec=spec)
        r['bn_mode'] = bn_mode
        r['input'] = spec.describe()
        results[tag] = r
    majority = results[tag][args.layers[0]]['majority_baseline']
    for line in layer_probe.table(results, args.layers):
        print(line)
    print('chance %.1f%%, majority class %.1f%%'
          % (100.0 / len(names), 100 * majority))
    toolcheck.finite_numbers(results, 'probe_layers.json')
    if args.out:
        toolargs.write_json(args.out, 'probe_layers.json', dict(
            vars(args), class_names=names, train=len(train), test=len(test),
            chance=1.0 / len(names), majority_baseline=majority,
            paper_imagenet=layer_probe.PAPER_IMAGENET,
            paper_places=layer_probe.PAPER_PLACES, results=results))
        toolargs.save_figure(layer_probe.figure(
            results, 1.0 / len(names), majority, args.layers),
            args.out, 'probe_layers.png')


if __name__ == '__main__':
    toolcheck.run(main, 'probe_layers')
