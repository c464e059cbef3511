"""The context-prediction network, generated with caffe.NetSpec.

Layer for layer the original ``gen_net()`` of cdoersch/deepcontext: a
CaffeNet stack without groups on 96x96 patches (conv1..conv5, pool5 is
3x3x256), fc6 per patch, then pairs of fc6 outputs are gathered with
BatchReindex (``select1``/``select2`` hold batch indices), concatenated,
and classified by fc7, fc8, fc9 into the 8 relative positions.

BatchNorm on conv3-5, fc6 and fc7 has no scale/shift layer after it:
a learned scale would let the network silence a layer's activations,
exactly what must not happen early in training (the original's comment).
Its three blobs (mean, variance, scale factor) are statistics, never
learned: lr_mult 0 on each.

Layer names are stable (convN, bnN, reluN, fcN): debatchnorm and the
exporters depend on them.

Run ``python -m deepcontext.model.nets OUTDIR`` to write network.prototxt and
network_no_bn.prototxt, the files training writes.
"""
import os
import sys

from caffe import layers as L, params as P, NetSpec

from deepcontext.data import sampling

XAVIER = dict(type='xavier')
# mean, variance and moving-average factor of BatchNorm are not learned.
BN_PARAMS = [dict(lr_mult=0), dict(lr_mult=0), dict(lr_mult=0)]
INPUT_SHAPE = sampling.PATCH_SHAPE


def _add(n, name, layer):
    setattr(n, name, layer)
    return getattr(n, name)


def conv_relu(n, bottom, name, ks, nout, stride=1, pad=0, batchnorm=False):
    """convN [+ bnN] + reluN, in place after the convolution."""
    conv = _add(n, 'conv' + name,
                L.Convolution(bottom, kernel_size=ks, stride=stride,
                              num_output=nout, pad=pad, group=1,
                              weight_filler=XAVIER))
    top = conv
    if batchnorm:
        top = _add(n, 'bn' + name, L.BatchNorm(conv, in_place=True,
                                               param=BN_PARAMS))
    _add(n, 'relu' + name, L.ReLU(top, in_place=True))
    return conv


def fc_relu(n, bottom, name, nout, batchnorm=False):
    """fcN [+ bnN] + reluN."""
    fc = _add(n, 'fc' + name, L.InnerProduct(bottom, num_output=nout,
                                             weight_filler=XAVIER))
    top = fc
    if batchnorm:
        top = _add(n, 'bn' + name, L.BatchNorm(fc, in_place=True,
                                               param=BN_PARAMS))
    _add(n, 'relu' + name, L.ReLU(top, in_place=True))
    return fc


def max_pool(bottom, ks, stride=1, pad=0):
    """Max pooling; ``pad`` is written only when non-zero, so definitions
    without it stay byte-identical to those written before it existed."""
    extra = dict(pad=pad) if pad else {}
    return L.Pooling(bottom, pool=P.Pooling.MAX, kernel_size=ks,
                     stride=stride, **extra)


def lrn(bottom):
    return L.LRN(bottom, local_size=5, alpha=1e-4, beta=0.75)


def conv_tower(n, data, use_bn=False, conv1_pad=5, pool_pad=0):
    """conv1 .. relu5 of CaffeNet without groups, on ``data``; returns relu5.

    The one definition of the convolutional stack, shared by the patch
    network (conv1 padded by 5 as the original, BatchNorm on conv3-5), the
    CaffeNet deploy net (conv1 without padding, as BVLC's CaffeNet) and the
    Fast R-CNN export (conv1 padded by 5 as trained, and pool1/pool2 padded
    by 1, ``pool_pad=1``, as Fast R-CNN's CaffeNet).  Pooling comes before
    LRN, as in CaffeNet.

    Where conv5 cell k sits: its centre is at pixel 16 k + 17 - conv1_pad
    - 12 pool_pad of the input (each layer's output j is centred at
    stride j - pad + (kernel - 1) / 2 of its input: pool1's pad moves it
    by 4 px, pool2's by 8).  With conv1_pad 5 and pool_pad 1 that is 16 k,
    what ROIPooling's spatial_scale 1/16 assumes; unpadded pools put it at
    16 k + 12.  Padding a max pool changes no weight (pooling has none),
    only where the grid sits.
    """
    conv_relu(n, data, '1', 11, 96, stride=4, pad=conv1_pad)
    n.pool1 = max_pool(n.relu1, 3, stride=2, pad=pool_pad)
    n.norm1 = lrn(n.pool1)
    conv_relu(n, n.norm1, '2', 5, 256, pad=2)
    n.pool2 = max_pool(n.relu2, 3, stride=2, pad=pool_pad)
    n.norm2 = lrn(n.pool2)
    conv_relu(n, n.norm2, '3', 3, 384, pad=1, batchnorm=use_bn)
    conv_relu(n, n.relu3, '4', 3, 384, pad=1, batchnorm=use_bn)
    conv_relu(n, n.relu4, '5', 3, 256, pad=1, batchnorm=use_bn)
    return n.relu5


def caffenet_stack(n, data, use_bn=True):
    """conv1 .. fc6 of the patch tower (shared by all patches)."""
    n.pool5 = max_pool(conv_tower(n, data, use_bn), 3, stride=2)
    fc_relu(n, n.pool5, '6', 4096, batchnorm=use_bn)


def gen_net(batch_size=512, use_bn=True):
    """The training network as a NetParameter.

    Parameters
    ----------
    batch_size : int
        Patches in the initial ``data`` shape; the trainer reshapes the
        inputs for every batch.
    use_bn : bool
        False gives the twin without BatchNorm (bn3..bn7 removed), the
        definition debatchnorm folds into.

    Returns
    -------
    caffe_pb2.NetParameter
    """
    n = NetSpec()
    n.data = L.DummyData(shape=dict(dim=[batch_size] + list(INPUT_SHAPE)))
    n.select1 = L.DummyData(shape=dict(dim=[2]))
    n.select2 = L.DummyData(shape=dict(dim=[2]))
    n.label = L.DummyData(shape=dict(dim=[2]))
    caffenet_stack(n, n.data, use_bn)
    n.first = L.BatchReindex(n.relu6, n.select1)
    n.second = L.BatchReindex(n.relu6, n.select2)
    n.fc6_concat = L.Concat(n.first, n.second)
    fc_relu(n, n.fc6_concat, '7', 4096, batchnorm=use_bn)
    fc_relu(n, n.relu7, '8', 4096)
    n.fc9 = L.InnerProduct(n.relu8, num_output=sampling.NUM_LABELS,
                           weight_filler=XAVIER)
    n.loss = L.SoftmaxWithLoss(n.fc9, n.label,
                               loss_param=dict(normalization=P.Loss.NONE))
    proto = n.to_proto()
    proto.debug_info = True
    return proto


def gen_caffenet_deploy(batch_size=10, num_classes=1000):
    """CaffeNet's deploy definition with the groups removed.

    What the original README asked users to bring as the target of
    debatchnorm before fine-tuning: BVLC's CaffeNet (227x227 input, conv1
    without padding, pool before LRN) with group 1 in conv2, conv4 and conv5,
    so that our conv1-conv5 weights fit it exactly.  fc6 sees a 6x6 pool5
    here (3x3 in the patch network), so its weights do not transfer as they
    are; see tools/export_fast_rcnn.py for the conversion the paper used.
    """
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[batch_size, 3, 227, 227]))
    n.pool5 = max_pool(conv_tower(n, n.data, conv1_pad=0), 3, stride=2)
    fc_relu(n, n.pool5, '6', 4096)
    n.drop6 = L.Dropout(n.relu6, in_place=True, dropout_ratio=0.5)
    fc_relu(n, n.drop6, '7', 4096)
    n.drop7 = L.Dropout(n.relu7, in_place=True, dropout_ratio=0.5)
    n.fc8 = L.InnerProduct(n.drop7, num_output=num_classes,
                           weight_filler=XAVIER)
    n.prob = L.Softmax(n.fc8)
    return n.to_proto()


# Layers whose parameters choose an engine (DEFAULT: cuDNN when built in).
_ENGINE_PARAMS = {'Convolution': 'convolution_param', 'Pooling':
                  'pooling_param', 'ReLU': 'relu_param', 'LRN': 'lrn_param',
                  'SoftmaxWithLoss': 'softmax_param'}


def set_engine(proto, engine):
    """Set ``engine`` ('CAFFE' or 'CUDNN') on every layer that has one."""
    for layer in proto.layer:
        field = _ENGINE_PARAMS.get(layer.type)
        if field is not None:
            param = getattr(layer, field)
            param.engine = type(param).Engine.Value(engine)
    return proto


def write_nets(outdir, batch_size=512, engine=None, debug_info=True):
    """Write network.prototxt and network_no_bn.prototxt; return paths.

    ``engine='CAFFE'`` writes them with Caffe's own kernels on every layer
    (config ``cudnn=False``); None leaves Caffe's default (cuDNN if built).
    ``debug_info=False`` turns off the per-layer log of the original.
    """
    os.makedirs(outdir, exist_ok=True)
    paths = []
    for name, use_bn in (('network.prototxt', True),
                         ('network_no_bn.prototxt', False)):
        path = os.path.join(outdir, name)
        proto = gen_net(batch_size, use_bn)
        if engine is not None:
            set_engine(proto, engine)
        proto.debug_info = debug_info
        with open(path, 'w') as f:
            f.write(str(proto))
        paths.append(path)
    return paths


def write_shipped(folder):
    """Write the definitions shipped in prototxt/ (regenerate with --ship)."""
    paths = []
    for name, proto in (
            ('patch_network.prototxt', gen_net()),
            ('patch_network_no_bn.prototxt', gen_net(use_bn=False)),
            ('caffenet_nogroups_deploy.prototxt', gen_caffenet_deploy())):
        path = os.path.join(folder, name)
        with open(path, 'w') as f:
            f.write(str(proto))
        paths.append(path)
    return paths


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 2 and argv[0] == '--ship':
        paths = write_shipped(argv[1])
    elif len(argv) == 1:
        paths = write_nets(argv[0])
    else:
        print('usage: python -m deepcontext.model.nets OUTDIR\n'
              '       python -m deepcontext.model.nets --ship prototxt/',
              file=sys.stderr)
        return 2
    for path in paths:
        print('wrote ' + path)
    return 0


if __name__ == '__main__':
    sys.exit(main())
