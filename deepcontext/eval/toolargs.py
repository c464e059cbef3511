"""Command-line pieces shared by the evaluation tools (tools/eval_*.py ...).

Every evaluation tool takes the same network options and measures the same
way one net or two: the snapshot given with ``--weights`` and, with
``--random`` (or when no weights are given), a randomly initialised net of
the same definition, for contrast.  Every tool that measures features
takes the same input options (:func:`add_input_arguments`).
"""
import json
import os
import time

from deepcontext.eval import features, toolcheck
from deepcontext.model import pycaffe


def add_net_arguments(parser):
    """Add --weights, --definition, --random, --bn-mode, --seed, --gpu."""
    parser.add_argument('--weights', help='a .caffemodel snapshot')
    parser.add_argument('--definition',
                        help='network prototxt of the snapshot (default: '
                             'the training net with BatchNorm, as '
                             'model.nets.gen_net; e.g. network_no_bn.prototxt '
                             'for a debatchnormed model)')
    parser.add_argument('--random', action='store_true',
                        help='also measure a randomly initialised net '
                             '(the only one when --weights is not given)')
    parser.add_argument('--bn-mode', choices=features.BN_MODES,
                        default='auto',
                        help='BatchNorm statistics: global (stored in the '
                             'snapshot), batch (of each batch, as in '
                             'training) or auto (global when the snapshot '
                             'has statistics; batch for a random net)')
    parser.add_argument('--seed', type=int, default=0,
                        help='seed of every sampling draw and of the random '
                             'initialisation')
    parser.add_argument('--gpu', type=int, default=None,
                        help='GPU device id (default: CPU)')


def add_input_arguments(parser):
    """Add --preprocess, --mean, --input-scale, --channel-order."""
    parser.add_argument('--preprocess', choices=features.PREPROCESS,
                        default='reference',
                        help='reference (default) and caffe-bgr, one '
                             'input: BGR 0-255 minus --mean, times '
                             '--input-scale, as the reference protocols and '
                             'other methods\' Caffe models take it; '
                             'deepcontext: our grey RMS-normalised input')
    parser.add_argument('--mean', default='imagenet',
                        help='subtracted with reference / caffe-bgr: '
                             'imagenet (104,117,123), none, or B,G,R')
    parser.add_argument('--input-scale', default='auto',
                        help='auto: 50 / the input RMS measured on the '
                             'images for our nets (as export_fast_rcnn.py), '
                             '1 for other nets; or a number')
    parser.add_argument('--channel-order', default='auto',
                        choices=('auto', 'rgb', 'bgr'),
                        help="conv1's channel order: auto is rgb for our "
                             'patch nets, bgr for other Caffe models')


def check_input_arguments(args):
    """ToolError for a bad --mean or --input-scale; return the scale
    ('auto' or a positive float)."""
    try:
        features.parse_mean(args.mean)
    except ValueError as e:
        raise toolcheck.ToolError(str(e))
    if args.input_scale == 'auto':
        return 'auto'
    try:
        scale = float(args.input_scale)
    except ValueError:
        scale = float('nan')
    if not scale > 0 or scale == float('inf'):
        raise toolcheck.ToolError('--input-scale must be auto or a positive '
                                  'number, not %r' % args.input_scale)
    return scale


def input_spec(args, net, sample=(), log=print):
    """The :class:`features.InputSpec` for ``net``, said in one line.

    ``sample``: RGB 0-255 images (or patches) as the tool will feed them,
    to measure an 'auto' input scale on (the first 64 are used), or a
    callable returning them (:func:`scale_sample`), called only when a
    scale is measured.
    """
    scale = check_input_arguments(args)
    if callable(sample):
        needs = (args.preprocess != 'deepcontext' and scale == 'auto'
                 and features.is_deepcontext_net(net))
        sample = sample() if needs else ()
    spec = features.input_spec(net, args.preprocess, args.mean, scale,
                               args.channel_order, list(sample)[:64])
    if spec.preprocess == 'deepcontext':
        log('input: deepcontext (grey, mean removed, RMS-normalised)')
    else:
        log('input: %s, BGR 0-255 minus %s, x %.4g%s, %s channel order '
            'for conv1' % (spec.preprocess, 'no mean' if spec.mean is None
                           else '(%g, %g, %g)' % spec.mean, spec.scale,
                           ' (measured)' if args.input_scale == 'auto' and
                           spec.scale != 1.0 else '', spec.channels))
    return spec


def scale_sample(paths, side, count=64):
    """A callable: ``count`` of ``paths``, evenly spaced, resized to side.

    Read once, on the first call (the nets of a run share it).
    """
    picked = list(paths)[::max(1, len(paths) // count)][:count]
    cache = []

    def sample():
        if not cache:
            cache.append([features.resized_image(p, side) for p in picked])
        return cache[0]
    return sample


def iter_nets(args, log=print, force_backward=False):
    """Yield (tag, net, bn_mode) for the nets the arguments name.

    Nets are built one at a time, so only one is in memory while the
    caller measures it.  Tags are 'trained' and 'random'.
    ``force_backward`` builds them for gradients w.r.t. the input.
    """
    if hasattr(args, 'preprocess'):   # refused before a net is built
        check_input_arguments(args)
    pycaffe.set_mode(args.gpu)
    specs = []
    if args.weights:
        specs.append(('trained', args.weights))
    if args.random or not args.weights:
        specs.append(('random', None))
    for tag, weights in specs:
        net, bn_mode = features.load_net(weights, args.definition,
                                         args.bn_mode, args.seed,
                                         force_backward)
        log('%s net (%s), BatchNorm statistics: %s'
            % (tag, weights or 'random initialisation, seed %d' % args.seed,
               bn_mode))
        yield tag, net, bn_mode
        del net


def write_json(out, name, result, log=print):
    """Write ``result`` as ``out/name`` (folder created); return the path."""
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, name)
    with open(path, 'w') as f:
        json.dump(result, f, indent=1)
    log('wrote %s' % path)
    return path


def eta_progress(label, report=print, every_s=20.0):
    """A ``progress(done, total)`` callable printing rate and ETA.

    One line at the first call, then at most one every ``every_s``
    seconds, and one at the end.
    """
    start, last = time.time(), [None]

    def progress(done, total):
        now = time.time()
        if done < total and last[0] is not None and now - last[0] < every_s:
            return
        last[0] = now
        elapsed = now - start
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (total - done) / rate if rate > 0 else float('nan')
        report('%s: %d/%d, %.1f/s, elapsed %.0f s, ETA %.0f s'
               % (label, done, total, rate, elapsed, eta))
    return progress


def save_figure(fig, out, name, log=print):
    """Write a matplotlib Figure as ``out/name`` (a PNG); return the path."""
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, name)
    fig.savefig(path, dpi=100, format='png')
    log('wrote %s' % path)
    return path
