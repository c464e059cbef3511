"""VOC07 classification by fine-tuning (Kraehenbuehl et al.'s protocol).

    python tools/voc_classify.py --weights model_iter_N.caffemodel --random \
        --voc VOCdevkit/VOC2007 [--train-from conv1] [--iters 80000] \
        [--batch-size 16] [--protocol reference|deepcontext] [--out DIR]

conv1 .. conv5 of the snapshot (and fc6 when its shape fits) start a
20-class multi-label classifier (sigmoid cross-entropy summed over
classes / batch, difficult labels ignored) trained on trainval; layers
before --train-from stay fixed, BatchNorm statistics included (conv1: all
layers, fc6: the head only).  --protocol reference (default) is
philkr/voc-classification's train_cls.py: 80,000 iterations of 16, lr
1e-3 halved every 10k, weight decay 1e-6, clip 10, random-scale crops;
test on 10 random crops, logits summed, sklearn's AP.  --protocol
deepcontext: ours (squash to --resize, fixed 10 crops, VOC07 11-point
AP).  --images instead of --voc takes a single-label set with one-hot
targets.  Writes voc_classify.json and voc_classify.png.
"""
import argparse
import os

os.environ.setdefault('GLOG_minloglevel', '2')  # before caffe loads glog
from deepcontext.eval import toolargs, toolcheck  # noqa: E402
from deepcontext.eval import transfer_sets, voc_classify  # noqa: E402


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    toolargs.add_net_arguments(p)
    toolargs.add_input_arguments(p)
    transfer_sets.add_set_arguments(p)
    p.add_argument('--train-from', default='conv1',
                   choices=voc_classify.TRAINABLE)
    p.add_argument('--protocol', choices=sorted(voc_classify.PROTOCOLS),
                   default='reference', help='reference: train_cls.py\'s '
                   'settings; deepcontext: ours (see the module doc)')
    p.add_argument('--iters', type=int, default=voc_classify.ITERS)
    p.add_argument('--batch-size', type=int, default=voc_classify.BATCH_SIZE)
    p.add_argument('--base-lr', type=float, default=voc_classify.BASE_LR)
    p.add_argument('--side', type=int, default=227, help='crop side')
    p.add_argument('--resize', type=int, default=256, help='deepcontext '
                   'protocol: images are resized to resize x resize first')
    p.add_argument('--fc-dims', type=int, nargs=2, default=[4096, 4096])
    p.add_argument('--out', required=True)
    return p.parse_args()


def main():
    args = parse_args()
    toolcheck.net_files(args)
    if not 0 < args.side <= args.resize:
        raise toolcheck.ToolError('need 0 < --side <= --resize')
    s = transfer_sets.multilabel_sets(args)
    print('%s: %d classes, %d train / %d test images'
          % (s['source'], len(s['class_names']), len(s['train']),
             len(s['test'])))
    crops = voc_classify.PROTOCOLS[args.protocol]['crops']
    train, test = (voc_classify.TrainingImages(
        s[part], crops, args.side, args.resize,
        progress=toolargs.eta_progress('resizing %s' % part))
        for part in ('train', 'test'))
    sample = toolargs.scale_sample(s['train'], args.side)
    results = {}
    for tag, net, bn_mode in toolargs.iter_nets(args):
        train.spec = test.spec = toolargs.input_spec(args, net, sample)
        r = voc_classify.fine_tune(
            net, train, s['train_labels'], test, s['test_labels'],
            os.path.join(args.out, tag), args.side, args.train_from,
            args.iters, args.batch_size, args.base_lr, args.fc_dims,
            args.seed, args.gpu is not None, args.protocol,
            progress=toolargs.eta_progress('%s fine-tuning' % tag))
        r['bn_mode'] = bn_mode
        r['input'] = train.spec.describe()
        results[tag] = r
        print('%s: mAP %.1f%% (loss %.3f -> %.3f, %.0f s training)'
              % (tag, 100 * r['map'], r['loss'][0], r['loss'][-1],
                 r['train_time']))
    print('random scores would give about %.1f%% mAP; the paper: %s'
          % (100 * transfer_sets.random_map(s['test_labels']),
             ', '.join('%s %.1f' % kv
                       for kv in voc_classify.PAPER_MAP.items())))
    toolcheck.finite_numbers(results, 'voc_classify.json')
    toolargs.write_json(args.out, 'voc_classify.json', dict(
        vars(args), source=s['source'], class_names=s['class_names'],
        random_scores_map=transfer_sets.random_map(s['test_labels']),
        paper_map=voc_classify.PAPER_MAP, results=results))
    toolargs.save_figure(voc_classify.figure(results, s['class_names']),
                         args.out, 'voc_classify.png')


if __name__ == '__main__':
    toolcheck.run(main, 'voc_classify')
