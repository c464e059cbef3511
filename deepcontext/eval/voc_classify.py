"""VOC07 classification by fine-tuning (Kraehenbuehl et al. 2016's protocol).

The pretrained conv1 .. conv5 (and fc6 when its shape fits) are copied
into a classifier: the patch net's conv tower on ``side`` x ``side`` crops,
pool5, fc6 and fc7 (ReLU, dropout 0.5) and fc8 with one output per class,
trained with a sigmoid cross-entropy per class (multi-label): targets 1
for present, 0 for absent, and difficult labels ignored (Caffe's
``ignore_label``).  The loss is the sum over classes and images divided by
the batch size (``normalization: BATCH_SIZE``), as both references do
(philkr/voc-classification's Python loss layer; DeepCluster's
``BCEWithLogitsLoss`` summed per image).  Layers before ``train_from``
keep their weights (``lr_mult`` 0) and their BatchNorm statistics
(``use_global_stats``): ``conv1`` fine-tunes everything, ``fc6`` only the
head.  A net without BatchNorm statistics (a random one) gets them first
from ``BN_WARMUP`` training batches.

Two protocols (``PROTOCOLS``), the reference the default:

* ``'reference'``: philkr/voc-classification ``src/train_cls.py``, the code
  behind Kraehenbuehl et al.'s table: SGD momentum 0.9, lr 1e-3 halved
  every 10,000 iterations, weight decay 1e-6, gradients clipped to L2
  norm 10, biases at twice the learning rate, fc8 drawn from N(0, 0.01)
  with bias 0.1; 80,000 iterations of 16 images.  Training crops: from
  the image as it is, a square window of ``side * s`` pixels, s uniform
  in [0.5, min(2, short side / side)], at a random place, resized to
  ``side`` and mirrored with probability 1/2.  Test: 10 such random crops
  per image, fc8 logits summed; AP as scikit-learn's (``metrics``'
  ``'sklearn'``) on scores minus 1e-5 times the label, difficult removed.
* ``'deepcontext'`` (ours, earlier): weight decay 5e-4, lr / 10 at two
  thirds, xavier fc8; images squashed to ``resize`` x ``resize`` (kept in
  memory), random ``side`` crops and flips; test on the 4 corner and
  centre crops and their mirrors, sigmoids averaged; VOC07 11-point AP.

Inputs: ``TrainingImages.spec``, a ``features.InputSpec`` (the tools'
``--preprocess``; ``features.to_input``): the references' BGR 0-255
minus the ImageNet mean by default, or the toolkit's grey input.

BatchNorm of trained layers follows Caffe's default: batch statistics
while training (which also updates the stored ones), stored statistics at
test.
"""
import os
import time

import caffe
import numpy as np
from caffe import layers as L, params as P, NetSpec
from caffe.proto import caffe_pb2
from google.protobuf import text_format

from deepcontext.data import decode, preprocess
from deepcontext.eval import features, layer_probe, metrics
from deepcontext.model import nets, pycaffe

TRAINABLE = ('conv1', 'conv2', 'conv3', 'conv4', 'conv5', 'fc6', 'fc7',
             'fc8')
# mAP (%) of context prediction on VOC07 classification (Kraehenbuehl et
# al. 2016, Table 5): fine-tuning all layers, without and with their
# data-dependent rescaling.
PAPER_MAP = {'all, as released': 55.3, 'all, rescaled': 65.3}
PROTOCOLS = {
    'reference': dict(weight_decay=1e-6, lr_policy='halve', clip=10.0,
                      bias_lr=2, fc8='gaussian', crops='scale',
                      test='random', ap='sklearn'),
    'deepcontext': dict(weight_decay=5e-4, lr_policy='two_thirds', clip=None,
                        bias_lr=1, fc8='xavier', crops='squash',
                        test='fixed', ap='voc07'),
}
# train_cls.py: -nit 80000, -bs 16, -lr 0.001; min / max scale 0.5 / 2.
ITERS, BATCH_SIZE, BASE_LR = 80000, 16, 1e-3
SCALES = (0.5, 2.0)
BN_WARMUP = 20   # batches that give a random net's frozen BatchNorm stats


def classifier_net(batch_size, side, num_classes, fc_dims=(4096, 4096),
                   train_from='conv1', use_bn=True, protocol='reference'):
    """The fine-tuning definition as a NetParameter (TRAIN and TEST alike).

    Inputs ``data`` (B, 3, side, side) and ``label`` (B, num_classes) with
    values 1, 0 or -1 (ignored).
    """
    if train_from not in TRAINABLE:
        raise ValueError('--train-from must be one of %s, not %r'
                         % (', '.join(TRAINABLE), train_from))
    proto_set = PROTOCOLS[protocol]
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[batch_size, 3, side, side]))
    n.label = L.Input(shape=dict(dim=[batch_size, num_classes]))
    n.pool5 = nets.max_pool(nets.conv_tower(n, n.data, use_bn), 3, stride=2)
    nets.fc_relu(n, n.pool5, '6', fc_dims[0])
    n.drop6 = L.Dropout(n.relu6, in_place=True, dropout_ratio=0.5)
    nets.fc_relu(n, n.drop6, '7', fc_dims[1])
    n.drop7 = L.Dropout(n.relu7, in_place=True, dropout_ratio=0.5)
    if proto_set['fc8'] == 'gaussian':
        n.fc8 = L.InnerProduct(
            n.drop7, num_output=num_classes,
            weight_filler=dict(type='gaussian', std=0.01),
            bias_filler=dict(type='constant', value=0.1))
    else:
        n.fc8 = L.InnerProduct(n.drop7, num_output=num_classes,
                               weight_filler=nets.XAVIER)
    # Sum over classes and images / batch size, as both references.
    n.loss = L.SigmoidCrossEntropyLoss(
        n.fc8, n.label, loss_param=dict(ignore_label=-1,
                                        normalization=P.Loss.BATCH_SIZE))
    proto = n.to_proto()
    frozen = TRAINABLE[:TRAINABLE.index(train_from)]
    for layer in proto.layer:
        if layer.name in frozen:
            for _ in range(2):
                layer.param.add(lr_mult=0, decay_mult=0)
        elif layer.type == 'BatchNorm':
            if 'conv' + layer.name[2:] in frozen:
                # Frozen layers keep their statistics too.
                layer.batch_norm_param.use_global_stats = True
            else:
                # Caffe's default: batch statistics in TRAIN, stored in TEST.
                layer.batch_norm_param.ClearField('use_global_stats')
        elif layer.name in TRAINABLE and proto_set['bias_lr'] != 1:
            layer.param.add(lr_mult=1, decay_mult=1)
            layer.param.add(lr_mult=proto_set['bias_lr'], decay_mult=1)
    return proto


def copy_pretrained(source, target):
    """Copy every parameter blob whose layer and shape match; return names."""
    copied = []
    for name, blobs in source.params.items():
        if name not in target.params:
            continue
        dst = target.params[name]
        if len(dst) != len(blobs) or any(
                a.data.shape != b.data.shape for a, b in zip(blobs, dst)):
            continue
        for a, b in zip(blobs, dst):
            b.data[...] = a.data
        copied.append(name)
    return copied


def solver_param(net_path, base_lr, iters, protocol='reference',
                 momentum=0.9, gpu=False):
    """SGD as the protocol sets it (see the module doc)."""
    p = PROTOCOLS[protocol]
    s = caffe_pb2.SolverParameter()
    s.train_net = net_path
    s.type = 'SGD'
    s.base_lr = base_lr
    s.lr_policy = 'step'
    if p['lr_policy'] == 'halve':
        s.gamma, s.stepsize = 0.5, 10000
    else:
        s.gamma, s.stepsize = 0.1, max(1, (2 * iters) // 3)
    if p['clip'] is not None:
        s.clip_gradients = p['clip']
    s.momentum = momentum
    s.weight_decay = p['weight_decay']
    s.max_iter = iters
    s.display = 0
    s.snapshot_after_train = False
    s.solver_mode = (caffe_pb2.SolverParameter.GPU if gpu
                     else caffe_pb2.SolverParameter.CPU)
    return s


def caffe_targets(labels):
    """VOC labels (1, -1, 0) as loss targets (1, 0, -1 ignored)."""
    labels = np.asarray(labels)
    return np.where(labels > 0, 1, np.where(labels < 0, 0, -1)).astype(
        np.float32)


def resized_images(paths, resize, progress=None):
    """(N, resize, resize, 3) uint8: every image resized once."""
    out = np.empty((len(paths), resize, resize, 3), dtype=np.uint8)
    for i, path in enumerate(paths):
        im = preprocess.resize_bilinear(decode.load_rgb(path),
                                        (resize, resize))
        out[i] = np.clip(np.round(im * 255.0), 0, 255)
        if progress is not None:
            progress(i + 1, len(paths))
    return out


def scale_crop(image, side, rng, scales=SCALES):
    """train_cls.py's augmentation of one image as it is (H, W, 3).

    A square window of ``side * s`` pixels, s uniform in
    [scales[0], min(scales[1], short side / side)] (the short side when
    that is below scales[0]), placed uniformly, resized to ``side`` x
    ``side`` (values 0-255) and mirrored with probability 1/2.
    """
    h, w = image.shape[:2]
    top = min(scales[1], min(h, w) / float(side))
    s = rng.uniform(scales[0], top) if top > scales[0] else top
    win = max(1, min(h, w, int(round(side * s))))
    y, x = rng.randint(0, h - win + 1), rng.randint(0, w - win + 1)
    # Bilinear with the edges repeated, as OpenCV's resize in Caffe's
    # transformers (the 2015 resize would fade the border to zero).
    window = image[y:y + win, x:x + win].transpose(2, 0, 1)[None]
    crop = layer_probe.bilinear_resize(window, side)[0].transpose(1, 2, 0)
    return crop[:, ::-1] if rng.rand() < 0.5 else crop


def random_crops(images, idx, side, rng):
    """Random side x side crops of squashed images, each flipped or not."""
    size = images.shape[1]
    out = []
    for i in idx:
        y, x = rng.randint(0, size - side + 1, size=2)
        crop = images[i, y:y + side, x:x + side]
        if rng.rand() < 0.5:
            crop = crop[:, ::-1]
        out.append(crop)
    return out


def ten_crops(image, side):
    """The 4 corner crops and the centre crop, then the same flipped."""
    size = image.shape[0]
    c = (size - side) // 2
    corners = [(0, 0), (0, size - side), (size - side, 0),
               (size - side, size - side), (c, c)]
    crops = [image[y:y + side, x:x + side] for y, x in corners]
    return crops + [crop[:, ::-1] for crop in crops]


class TrainingImages:
    """Where training and test crops come from, as a protocol sets it.

    ``'squash'`` holds every image resized to ``resize`` x ``resize``
    (``resize``^2 * 3 bytes each: about 1 GB for VOC07 trainval at 256);
    ``'scale'`` decodes each image from its file when a crop is drawn
    (memory independent of the set size).
    """

    def __init__(self, paths, crops, side, resize=256,
                 spec=features.DEEPCONTEXT_INPUT, progress=None):
        self.paths, self.crops, self.side = list(paths), crops, side
        self.spec = spec   # set per net by the tool
        self.squashed = (resized_images(paths, resize, progress)
                         if crops == 'squash' else None)

    def __len__(self):
        return len(self.paths)

    def _inputs(self, crops):
        return np.stack([features.to_input(c, self.spec) for c in crops])

    def train_batch(self, idx, rng):
        """(B, 3, side, side) inputs of the images ``idx``."""
        if self.crops == 'squash':
            return self._inputs(random_crops(self.squashed, idx, self.side,
                                             rng))
        return self._inputs([scale_crop(decode.load_rgb(self.paths[i]),
                                        self.side, rng) for i in idx])

    def test_crops(self, i, rng):
        """(10, 3, side, side): fixed ten crops, or ten random ones."""
        if self.crops == 'squash':
            return self._inputs(ten_crops(self.squashed[i], self.side))
        image = decode.load_rgb(self.paths[i])
        return self._inputs([scale_crop(image, self.side, rng)
                             for _ in range(10)])


def test_scores(net, images, protocol='reference', seed=0, progress=None):
    """(N, C) test scores: summed logits of 10 random crops (reference) or
    sigmoids averaged over the fixed 10 crops (deepcontext)."""
    rng = np.random.RandomState(seed + 1)
    scores = []
    for i in range(len(images)):
        pycaffe.set_data(net, images.test_crops(i, rng))
        net.forward(end='fc8')
        logits = np.asarray(net.blobs['fc8'].data, dtype=np.float64)
        if PROTOCOLS[protocol]['test'] == 'random':
            scores.append(logits.sum(axis=0))
        else:
            scores.append((1.0 / (1.0 + np.exp(-logits))).mean(axis=0))
        if progress is not None:
            progress(i + 1, len(images))
    return np.array(scores)


def class_aps(scores, labels, protocol='reference'):
    """Per-class AP and mAP as the protocol computes them."""
    scores, labels = np.asarray(scores, float), np.asarray(labels)
    mode = PROTOCOLS[protocol]['ap']
    if mode == 'sklearn':
        # train_cls.py: 'Subtract eps from score to make AP work for tied
        # scores' -- an exact tie ranks the negative first.
        scores = scores - 1e-5 * (labels > 0)
    return metrics.mean_ap(scores, labels, mode)


def fill_bn_statistics(pretrained, proto, images, batches, rng):
    """Stored BatchNorm statistics for a net that has none (a random one).

    ``proto`` (every BatchNorm in batch mode) runs ``batches`` training
    batches forward in TRAIN phase with ``pretrained``'s weights; Caffe
    accumulates the statistics, which are written back into
    ``pretrained``.
    """
    net = pycaffe.net_from_param(proto, 'train')
    copy_pretrained(pretrained, net)
    b = net.blobs['data'].data.shape[0]
    for _ in range(batches):
        idx = rng.choice(len(images), b)
        pycaffe.set_data(net, images.train_batch(idx, rng))
        net.forward(end='relu5')
    for name, layer in net.layer_dict.items():
        if layer.type == 'BatchNorm' and name in pretrained.params:
            for src, dst in zip(net.params[name], pretrained.params[name]):
                dst.data[...] = src.data


def fine_tune(pretrained, train_images, train_labels, test_images,
              test_labels, folder, side=227, train_from='conv1',
              iters=ITERS, batch_size=BATCH_SIZE, base_lr=BASE_LR,
              fc_dims=(4096, 4096), seed=0, gpu=False, protocol='reference',
              report=print, progress=None):
    """Fine-tune a classifier from ``pretrained`` and test it.

    Parameters
    ----------
    pretrained : caffe.Net whose conv1 .. conv5 (fc6 if it fits) to copy
    train_images, test_images : TrainingImages
    train_labels, test_labels : (N, C) VOC labels (1, -1, 0)
    folder : str, where the definition and solver are written
    protocol : 'reference' or 'deepcontext' (see PROTOCOLS)

    Returns
    -------
    dict ``ap`` (per class, None without a test positive), ``map``,
    ``loss`` (per iteration), ``copied`` (layers taken from
    ``pretrained``), ``bn_warmup`` (batches that gave frozen BatchNorm
    layers their statistics), ``train_time``, ``test_time``
    """
    if protocol not in PROTOCOLS:
        raise ValueError('protocol must be one of %s, not %r'
                         % (', '.join(PROTOCOLS), protocol))
    num_classes = train_labels.shape[1]
    use_bn = any(layer.type == 'BatchNorm' for layer in pretrained.layers)
    rng = np.random.RandomState(seed)
    warmup = 0
    frozen_bn = [l.name for l in classifier_net(
        batch_size, side, num_classes, fc_dims, train_from, use_bn,
        protocol).layer if l.batch_norm_param.use_global_stats]
    if frozen_bn and not features.has_bn_statistics(pretrained):
        warmup = BN_WARMUP
        fill_bn_statistics(pretrained, classifier_net(
            batch_size, side, num_classes, fc_dims, 'conv1', use_bn,
            protocol), train_images, warmup, rng)
        report('frozen %s: statistics from %d training batches (the net '
               'had none)' % (', '.join(frozen_bn), warmup))
    os.makedirs(folder, exist_ok=True)
    net_path = os.path.join(folder, 'voc_train.prototxt')
    with open(net_path, 'w') as f:
        f.write(str(classifier_net(batch_size, side, num_classes, fc_dims,
                                   train_from, use_bn, protocol)))
    solver_path = os.path.join(folder, 'voc_solver.prototxt')
    with open(solver_path, 'w') as f:
        f.write(text_format.MessageToString(
            solver_param(net_path, base_lr, iters, protocol, gpu=gpu)))
    caffe.set_random_seed(int(seed))
    solver = caffe.get_solver(solver_path)
    copied = copy_pretrained(pretrained, solver.net)
    report('copied from the pretrained net: %s; training from %s'
           % (', '.join(copied) or 'nothing', train_from))
    targets = caffe_targets(train_labels)
    order, pos, losses = rng.permutation(len(train_images)), 0, []
    t0 = time.time()
    for it in range(iters):
        if pos + batch_size > len(order):
            order, pos = rng.permutation(len(train_images)), 0
        idx = order[pos:pos + batch_size]
        if len(idx) < batch_size:   # a set smaller than a batch
            idx = rng.choice(len(train_images), batch_size)
        pos += batch_size
        pycaffe.set_blobs(solver.net, {
            'data': train_images.train_batch(idx, rng),
            'label': targets[idx]})
        solver.step(1)
        losses.append(float(solver.net.blobs['loss'].data))
        if progress is not None:
            progress(it + 1, iters)
    train_time = time.time() - t0
    test_net = pycaffe.net_from_param(
        classifier_net(10, side, num_classes, fc_dims, train_from, use_bn,
                       protocol))
    test_net.share_with(solver.net)
    t0 = time.time()
    scores = test_scores(test_net, test_images, protocol, seed)
    aps, m = class_aps(scores, test_labels, protocol)
    return {'ap': [None if np.isnan(a) else a for a in aps], 'map': m,
            'loss': losses, 'copied': copied, 'bn_warmup': warmup,
            'train_time': train_time, 'test_time': time.time() - t0}


def figure(results, class_names, title=''):
    """Per-class AP bars, one colour per net, mAP in the legend.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.figure import Figure
    fig = Figure(figsize=(10, 4))
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(class_names))
    width = 0.8 / max(1, len(results))
    for i, (tag, res) in enumerate(results.items()):
        ax.bar(x + i * width, [100 * (a or 0) for a in res['ap']], width,
               label='%s (mAP %.1f)' % (tag, 100 * res['map']))
    ax.set_xticks(x + 0.4 - width / 2)
    ax.set_xticklabels(class_names, rotation=60, ha='right',
                       fontsize='small')
    ax.set_ylabel('AP (%)')
    ax.set_title(title or 'VOC07 classification by fine-tuning')
    ax.grid(alpha=.3, axis='y')
    ax.legend(loc='best', fontsize='small')
    fig.tight_layout()
    return fig
