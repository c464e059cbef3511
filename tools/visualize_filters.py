"""Visual checks of a layer's filters (DeepCluster): top images, ascent.

    python tools/visualize_filters.py --weights model_iter_N.caffemodel \
        --random --layer relu5 [--filters 0 1 2 ...] [--images ...] --out DIR

For each chosen filter: the 9 images (of --images; default the held-out
embedded photos) whose response to it, averaged over positions
(DeepCluster's ranking; --rank max: the strongest position), is the
largest, one row per filter in top9_NET.png; and an input found by gradient
ascent through pycaffe's backward pass, in ascent_NET.png: --ascent
reference (default) is DeepCluster's visu/gradient_ascent.py (pixels from
N(128, 20) noise through --preprocess, the filter's channel mean against
the layer's others by cross-entropy, 1000 steps); --ascent deepcontext is
ours (the centre unit, Yosinski et al.'s regularisers, 96 px).  Writes
visualize.json (top images, responses before and after the ascent).
"""
import argparse
import os

os.environ.setdefault('GLOG_minloglevel', '2')  # before caffe loads glog
import numpy as np  # noqa: E402

from deepcontext.data import photos  # noqa: E402
from deepcontext.eval import plots, toolargs, toolcheck  # noqa: E402
from deepcontext.eval import transfer_sets, visualize  # noqa: E402


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    toolargs.add_net_arguments(p)
    toolargs.add_input_arguments(p)
    p.add_argument('--layer', default='relu5')
    p.add_argument('--filters', nargs='+', type=int, default=None,
                   help='filter indices (default: the first --num-filters)')
    p.add_argument('--num-filters', type=int, default=8)
    p.add_argument('--top', type=int, default=9)
    p.add_argument('--rank', choices=visualize.RANKINGS, default='mean',
                   help='top images by the mean response over positions '
                   '(DeepCluster) or the max')
    p.add_argument('--images', nargs='+', default=None,
                   help='images for the top images (folders, lists, files; '
                        'default: the held-out embedded photos)')
    p.add_argument('--side', type=int, default=224,
                   help='images are resized to side x side')
    p.add_argument('--ascent', choices=visualize.ASCENTS,
                   default='reference',
                   help="reference: DeepCluster's visu/gradient_ascent.py "
                   '(224 px N(128, 20) pixels, cross-entropy of the channel '
                   'means, L2-normalised steps of 3, decay 1e-5, blur 0.3 '
                   'every 5 steps); deepcontext: ours (96 px, the centre '
                   "unit, Yosinski et al.'s regularisers)")
    p.add_argument('--steps', type=int, default=None,
                   help='gradient-ascent steps (0: no ascent; default 1000 '
                   'for reference, 100 for deepcontext)')
    p.add_argument('--ascent-side', type=int, default=None,
                   help='side of the ascent input (default 224 reference, '
                   '96 deepcontext)')
    p.add_argument('--out', required=True, help='folder for the PNGs, JSON')
    return p.parse_args()


def main():
    args = parse_args()
    toolcheck.net_files(args)
    ref = args.ascent == 'reference'
    if args.steps is None:
        args.steps = visualize.REFERENCE_ASCENT['steps'] if ref else 100
    if args.ascent_side is None:
        args.ascent_side = (visualize.REFERENCE_ASCENT['side'] if ref
                            else visualize.features.INPUT_SIDE)
    if ref and args.steps and args.preprocess == 'deepcontext':
        raise toolcheck.ToolError(
            '--ascent reference works on pixels through --preprocess '
            'reference or caffe-bgr; with --preprocess deepcontext use '
            '--ascent deepcontext')
    paths = (toolcheck.image_files(args.images).paths if args.images
             else photos.held_out_photos())
    filters = args.filters or list(range(args.num_filters))
    results = {}
    sample = toolargs.scale_sample(paths, args.side)
    for tag, net, bn_mode in toolargs.iter_nets(args, force_backward=True):
        transfer_sets.check_layers(net, [args.layer])
        spec = toolargs.input_spec(args, net, sample)
        channels = net.blobs[net.top_names[args.layer][0]].data.shape[1]
        if max(filters) >= channels or min(filters) < 0:
            raise toolcheck.ToolError('%s has filters 0..%d only'
                                      % (args.layer, channels - 1))
        resp = visualize.max_responses(
            net, paths, args.layer, args.side, seed=args.seed,
            progress=toolargs.eta_progress('%s responses' % tag),
            op=args.rank, spec=spec)
        top = visualize.top_images(resp, filters, args.top)
        rows = [[visualize.thumbnail(paths[i]) for i in row] for row in top]
        toolargs.save_figure(plots.montage_figure(
            rows, title='%s net, %s: top %d of %d images per filter'
            % (tag, args.layer, top.shape[1], len(paths)),
            row_labels=['filter %d' % f for f in filters],
            frame_first=False), args.out, 'top9_%s.png' % tag)
        r = {'bn_mode': bn_mode, 'input': spec.describe(), 'filters': filters,
             'top_images': [[paths[i] for i in row] for row in top],
             'top_responses': [[float(resp[i, f]) for i in row]
                               for f, row in zip(filters, top)]}
        if args.steps and ref:
            x, start, end, used = visualize.gradient_ascent_reference(
                net, args.layer, filters, spec, side=args.ascent_side,
                steps=args.steps, seed=args.seed,
                progress=toolargs.eta_progress('%s ascent' % tag))
            shown = [visualize.to_display_reference(xi) for xi in x]
            layer = args.layer if set(used) == {args.layer} else \
                '/'.join(sorted(set(used)))
            what = 'mean response'
        elif args.steps:
            x, start, end, layer = visualize.gradient_ascent(
                net, args.layer, filters, side=args.ascent_side,
                steps=args.steps, seed=args.seed,
                progress=toolargs.eta_progress('%s ascent' % tag))
            shown = [visualize.to_display(xi) for xi in x]
            what = 'centre response'
        if args.steps:
            toolargs.save_figure(plots.montage_figure(
                [shown[i:i + 8] for i in range(0, len(shown), 8)],
                title='%s net: inputs maximising %s, filters %s'
                % (tag, layer, ' '.join(map(str, filters))),
                frame_first=False), args.out, 'ascent_%s.png' % tag)
            r.update(ascent_layer=layer, ascent_start=start.tolist(),
                     ascent_end=end.tolist())
            print('%s: %s %s, median over filters, %.3g -> %.3g after %d '
                  'steps (%s ascent)' % (tag, layer, what, np.median(start),
                                         np.median(end), args.steps,
                                         args.ascent))
        results[tag] = r
    toolcheck.finite_numbers(results, 'visualize.json')
    toolargs.write_json(args.out, 'visualize.json',
                        dict(vars(args), images=len(paths), results=results))


if __name__ == '__main__':
    toolcheck.run(main, 'visualize_filters')
