"""VOC07 classification by fine-tuning (Kraehenbuehl et al. 2016's protocol).

The pretrained conv1 .. conv5 (and fc6 when its shape fits) are copied
into a classifier: the patch net's conv tower on ``side`` x ``side`` crops,
pool5, fc6 and fc7 (ReLU, dropout 0.5) and fc8 with one output per class,
trained with a sigmoid cross-entropy per class (multi-label): targets 1
for present, 0 for absent, and difficult labels ignored (Caffe's
``ignore_label``).  Layers before ``train_from`` keep their weights
(``lr_mult`` 0): ``conv1`` fine-tunes everything, ``fc6`` only the head.

Training inputs: each image resized to ``resize`` x ``resize`` (aspect not
kept), a random ``side`` x ``side`` crop, a random horizontal flip, then the
toolkit's deterministic normalisation (``features.prep_eval``).  Test: the
10 crops (4 corners and the centre, each also flipped), sigmoid scores
averaged; per-class AP (VOC07 11-point, difficult ignored) and mAP.

BatchNorm (bn3 .. bn5 of a snapshot with BatchNorm) follows Caffe's
default: batch statistics while training (which also updates the stored
ones), stored statistics at test.  The resized images are kept in memory
(``resize``^2 * 3 bytes each: 196 KB at 256, about 1 GB for VOC07
trainval).
"""
import os
import time

import caffe
import numpy as np
from caffe import layers as L, params as P, NetSpec
from caffe.proto import caffe_pb2
from google.protobuf import text_format

from deepcontext.data import decode, preprocess
from deepcontext.eval import features, metrics
from deepcontext.model import nets, pycaffe

TRAINABLE = ('conv1', 'conv2', 'conv3', 'conv4', 'conv5', 'fc6', 'fc7',
             'fc8')
# mAP (%) of context prediction on VOC07 classification (Kraehenbuehl et
# al. 2016, Table 5): fine-tuning all layers, without and with their
# data-dependent rescaling.
PAPER_MAP = {'all, as released': 55.3, 'all, rescaled': 65.3}


def classifier_net(batch_size, side, num_classes, fc_dims=(4096, 4096),
                   train_from='conv1', use_bn=True):
    """The fine-tuning definition as a NetParameter (TRAIN and TEST alike).

    Inputs ``data`` (B, 3, side, side) and ``label`` (B, num_classes) with
    values 1, 0 or -1 (ignored).
    """
    if train_from not in TRAINABLE:
        raise ValueError('--train-from must be one of %s, not %r'
                         % (', '.join(TRAINABLE), train_from))
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[batch_size, 3, side, side]))
    n.label = L.Input(shape=dict(dim=[batch_size, num_classes]))
    n.pool5 = nets.max_pool(nets.conv_tower(n, n.data, use_bn), 3, stride=2)
    nets.fc_relu(n, n.pool5, '6', fc_dims[0])
    n.drop6 = L.Dropout(n.relu6, in_place=True, dropout_ratio=0.5)
    nets.fc_relu(n, n.drop6, '7', fc_dims[1])
    n.drop7 = L.Dropout(n.relu7, in_place=True, dropout_ratio=0.5)
    n.fc8 = L.InnerProduct(n.drop7, num_output=num_classes,
                           weight_filler=nets.XAVIER)
    n.loss = L.SigmoidCrossEntropyLoss(
        n.fc8, n.label, loss_param=dict(ignore_label=-1,
                                        normalization=P.Loss.VALID))
    proto = n.to_proto()
    frozen = TRAINABLE[:TRAINABLE.index(train_from)]
    for layer in proto.layer:
        if layer.name in frozen:
            for _ in range(2):
                layer.param.add(lr_mult=0, decay_mult=0)
        elif layer.type == 'BatchNorm':
            # Caffe's default: batch statistics in TRAIN, stored in TEST.
            layer.batch_norm_param.ClearField('use_global_stats')
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


def solver_param(net_path, base_lr, iters, momentum=0.9,
                 weight_decay=5e-4, gpu=False):
    """SGD, learning rate divided by 10 at two thirds of the iterations."""
    s = caffe_pb2.SolverParameter()
    s.train_net = net_path
    s.type = 'SGD'
    s.base_lr = base_lr
    s.lr_policy = 'step'
    s.gamma = 0.1
    s.stepsize = max(1, (2 * iters) // 3)
    s.momentum = momentum
    s.weight_decay = weight_decay
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


def random_crops(images, idx, side, rng):
    """Random side x side crops, each flipped with probability 1/2."""
    size = images.shape[1]
    out = []
    for i in idx:
        y, x = rng.randint(0, size - side + 1, size=2)
        crop = images[i, y:y + side, x:x + side]
        if rng.rand() < 0.5:
            crop = crop[:, ::-1]
        out.append(features.prep_eval(crop))
    return np.stack(out)


def ten_crops(image, side):
    """The 4 corner crops and the centre crop, then the same flipped."""
    size = image.shape[0]
    c = (size - side) // 2
    corners = [(0, 0), (0, size - side), (size - side, 0),
               (size - side, size - side), (c, c)]
    crops = [image[y:y + side, x:x + side] for y, x in corners]
    crops += [crop[:, ::-1] for crop in crops]
    return np.stack([features.prep_eval(crop) for crop in crops])


def test_scores(net, images, side, progress=None):
    """(N, C) sigmoid scores averaged over each image's 10 crops."""
    scores = []
    for i in range(len(images)):
        pycaffe.set_data(net, ten_crops(images[i], side))
        net.forward(end='fc8')
        logits = np.asarray(net.blobs['fc8'].data, dtype=np.float64)
        scores.append((1.0 / (1.0 + np.exp(-logits))).mean(axis=0))
        if progress is not None:
            progress(i + 1, len(images))
    return np.array(scores)


def fine_tune(pretrained, train_images, train_labels, test_images,
              test_labels, folder, side=227, train_from='conv1', iters=1000,
              batch_size=10, base_lr=1e-3, fc_dims=(4096, 4096), seed=0,
              gpu=False, report=print, progress=None):
    """Fine-tune a classifier from ``pretrained`` and test it.

    Parameters
    ----------
    pretrained : caffe.Net whose conv1 .. conv5 (fc6 if it fits) to copy
    train_images, test_images : (N, R, R, 3) uint8 from resized_images
    train_labels, test_labels : (N, C) VOC labels (1, -1, 0)
    folder : str, where the definition and solver are written

    Returns
    -------
    dict ``ap`` (per class, None without a test positive), ``map``,
    ``loss`` (per iteration), ``copied`` (layers taken from
    ``pretrained``), ``train_time``, ``test_time``
    """
    num_classes = train_labels.shape[1]
    use_bn = any(layer.type == 'BatchNorm' for layer in pretrained.layers)
    os.makedirs(folder, exist_ok=True)
    net_path = os.path.join(folder, 'voc_train.prototxt')
    with open(net_path, 'w') as f:
        f.write(str(classifier_net(batch_size, side, num_classes, fc_dims,
                                   train_from, use_bn)))
    solver_path = os.path.join(folder, 'voc_solver.prototxt')
    with open(solver_path, 'w') as f:
        f.write(text_format.MessageToString(
            solver_param(net_path, base_lr, iters, gpu=gpu)))
    caffe.set_random_seed(int(seed))
    solver = caffe.get_solver(solver_path)
    copied = copy_pretrained(pretrained, solver.net)
    report('copied from the pretrained net: %s; training from %s'
           % (', '.join(copied) or 'nothing', train_from))
    targets = caffe_targets(train_labels)
    rng = np.random.RandomState(seed)
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
            'data': random_crops(train_images, idx, side, rng),
            'label': targets[idx]})
        solver.step(1)
        losses.append(float(solver.net.blobs['loss'].data))
        if progress is not None:
            progress(it + 1, iters)
    train_time = time.time() - t0
    test_net = pycaffe.net_from_param(
        classifier_net(10, side, num_classes, fc_dims, train_from, use_bn))
    test_net.share_with(solver.net)
    t0 = time.time()
    scores = test_scores(test_net, test_images, side)
    aps, m = metrics.mean_ap(scores, test_labels, 'voc07')
    return {'ap': [None if np.isnan(a) else a for a in aps], 'map': m,
            'loss': losses, 'copied': copied, 'train_time': train_time,
            'test_time': time.time() - t0}


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
