"""Visual checks of a layer's filters (DeepCluster): top images, ascent.

    python tools/visualize_filters.py --weights model_iter_N.caffemodel \
        --random --layer relu5 [--filters 0 1 2 ...] [--images ...] --out DIR

For each chosen filter: the 9 images (of --images; default the held-out
embedded photos) whose response to it, averaged over positions
(DeepCluster's ranking; --rank max: the strongest position), is the
largest, one row per filter in top9_NET.png; and an input found by regularised gradient ascent
on the filter's response at the map centre (Yosinski et al.), through
pycaffe's backward pass to the data blob, in ascent_NET.png.  Writes
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
    p.add_argument('--steps', type=int, default=100,
                   help='gradient-ascent steps (0: no ascent)')
    p.add_argument('--out', required=True, help='folder for the PNGs, JSON')
    return p.parse_args()


def main():
    args = parse_args()
    toolcheck.net_files(args)
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
        if args.steps:
            x, start, end, layer = visualize.gradient_ascent(
                net, args.layer, filters, steps=args.steps, seed=args.seed,
                progress=toolargs.eta_progress('%s ascent' % tag))
            shown = [visualize.to_display(xi) for xi in x]
            toolargs.save_figure(plots.montage_figure(
                [shown[i:i + 8] for i in range(0, len(shown), 8)],
                title='%s net: inputs maximising %s, filters %s'
                % (tag, layer, ' '.join(map(str, filters))),
                frame_first=False), args.out, 'ascent_%s.png' % tag)
            r.update(ascent_layer=layer, ascent_start=start.tolist(),
                     ascent_end=end.tolist())
            print('%s: %s centre response, median over filters, %.3g -> '
                  '%.3g after %d steps' % (tag, layer, np.median(start),
                                           np.median(end), args.steps))
        results[tag] = r
    toolcheck.finite_numbers(results, 'visualize.json')
    toolargs.write_json(args.out, 'visualize.json',
                        dict(vars(args), images=len(paths), results=results))


if __name__ == '__main__':
    toolcheck.run(main, 'visualize_filters')
