"""The labelled sets of the transfer tools, and their input checks.

Multi-label sets (low-shot SVMs, VOC classification) come from a VOC
devkit folder (``data.voc_labels``: trainval to train, test to test) or
from a single-label set (``data.labelled_folder``: an ImageFolder tree or
a list file), whose classes become one-hot targets.  Every refusal is a
``toolcheck.ToolError`` of one line.
"""
import numpy as np

from deepcontext.data import labelled, labelled_folder, voc_labels
from deepcontext.eval import metrics
from deepcontext.eval.toolcheck import ToolError


def add_set_arguments(parser):
    """--voc, --voc-train, --voc-test, --images, --test-images, ..."""
    parser.add_argument('--voc', help='VOC devkit year folder '
                        '(VOCdevkit/VOC2007: Annotations, ImageSets/Main, '
                        'JPEGImages)')
    parser.add_argument('--voc-train', default='trainval')
    parser.add_argument('--voc-test', default='test')
    parser.add_argument('--images', help='instead of --voc: a single-label '
                        'set, CLASS/xxx.jpg folder or "PATH LABEL" list')
    parser.add_argument('--test-images', help='a separate test set for '
                        '--images (default: split --images)')
    parser.add_argument('--test-fraction', type=float, default=0.5)


def labelled_set(spec):
    """``labelled_folder.open_labelled`` with its refusals as ToolError."""
    try:
        return labelled_folder.open_labelled(spec)
    except ValueError as err:
        raise ToolError(str(err))


def single_label_sets(args):
    """(paths, labels, class_names, train, test) of --images [--test-images]."""
    paths, labels, names = labelled_set(args.images)
    per_class = getattr(args, 'per_class', None)
    if per_class:
        keep = labelled.stratified_subset(labels, per_class, args.seed)
        paths, labels = [paths[i] for i in keep], labels[keep]
    if not args.test_images:
        train, test = labelled.fixed_split(labels, args.test_fraction,
                                           args.seed)
        return paths, labels, names, train, test
    tpaths, tlabels, tnames = labelled_set(args.test_images)
    if tuple(tnames) != tuple(names):
        raise ToolError('--test-images has other classes than --images')
    n = len(paths)
    return (paths + tpaths, np.concatenate([labels, tlabels]), names,
            np.arange(n), np.arange(n, n + len(tpaths)))


def multilabel_sets(args):
    """Train and test images with (N, C) targets in {1, -1, 0}.

    Returns
    -------
    dict: ``source``, ``class_names``, ``train`` / ``test`` (paths),
    ``train_labels`` / ``test_labels``
    """
    if bool(args.voc) == bool(args.images):
        raise ToolError('give exactly one of --voc and --images')
    if args.voc:
        try:
            train, ytrain, names = voc_labels.classification_set(
                args.voc, args.voc_train)
            test, ytest, _ = voc_labels.classification_set(args.voc,
                                                           args.voc_test)
        except ValueError as err:
            raise ToolError(str(err))
        return dict(source='VOC %s' % args.voc, class_names=names,
                    train=train, test=test, train_labels=ytrain,
                    test_labels=ytest)
    paths, labels, names, train, test = single_label_sets(args)
    targets = metrics.one_hot_targets(labels, len(names))
    return dict(source=args.images, class_names=names,
                train=[paths[i] for i in train],
                test=[paths[i] for i in test],
                train_labels=targets[train], test_labels=targets[test])


def random_map(labels):
    """About the mAP of random scores: the mean share of positives.

    Over the classes with a positive, difficult items left out.
    """
    labels = np.asarray(labels)
    shares = [np.sum(col > 0) / float(np.sum(col != 0))
              for col in labels.T if np.any(col > 0)]
    return float(np.mean(shares)) if shares else float('nan')


def check_layers(net, names):
    """ToolError unless every name is a layer of ``net``."""
    unknown = [n for n in names if n not in net.layer_dict]
    if unknown:
        raise ToolError('unknown layer %s; the net has %s'
                        % (', '.join(unknown), ', '.join(net.layer_dict)))
