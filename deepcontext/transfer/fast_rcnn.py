"""Export to Fast R-CNN (Girshick, ICCV 2015): definitions, solver, weights.

The paper fine-tuned the context-prediction network in Fast R-CNN on VOC 2007
(51.4% mAP).  This module writes what Fast R-CNN's CaffeNet recipe needs,
for a CaffeNet without groups carrying our weights:

    data, rois -> conv1..conv5 (ours) -> roi_pool5 (ROIPooling 6x6, 1/16)
      -> conv6 (our fc6 as a 3x3 convolution) -> pool6 (2x2 max)
      -> fc7 (new) -> cls_score (num_classes) + bbox_pred (4 num_classes)

Why conv6: our fc6 was trained on a 3x3 pool5 (96x96 patches), CaffeNet's
on 6x6.  fc6's weights, reshaped to (4096, 256, 3, 3), are a 3x3
convolution that computes, at every 3x3 window of the 6x6 ROI grid, exactly
the fc6 response our network learned for a patch; a 2x2 max pool then
summarises the four quadrants.  This is our reading of the paper's
"conv6" conversion; ``fc6_mode='roi3x3'`` instead pools each ROI to 3x3 and
keeps fc6 as it is.

Inputs: Fast R-CNN feeds BGR images minus its pixel means [102.98, 115.95,
122.77] in 0-255 units; our network saw RGB patches with each patch's mean
removed and scaled to RMS 50.  conv1's input channels are therefore
reversed (RGB -> BGR, exact), and its weights can be multiplied by an
``input_scale`` (50 / the RMS of Fast R-CNN's input on real images, see
:func:`measure_input_scale`; 1 keeps them bit-identical).
"""
import numpy as np

from caffe import layers as L, NetSpec
from caffe.proto import caffe_pb2

from deepcontext.data import preprocess, sampling
from deepcontext.model import nets

PIXEL_MEANS_BGR = np.array([102.9801, 115.9465, 122.7717])  # Fast R-CNN's
SPATIAL_SCALE = 1.0 / 16   # conv5 stride of CaffeNet-style nets


def _gaussian(std):
    return dict(type='gaussian', std=std)


def gen_net(num_classes=21, train=True, fc6_mode='conv6',
            data_layer='python'):
    """Fast R-CNN CaffeNet (no groups) with our layer names.

    Parameters
    ----------
    num_classes : int, including background (21 for VOC)
    train : bool, the training net (losses) or the test net (probabilities)
    fc6_mode : 'conv6' (the paper's conversion) or 'roi3x3'
    data_layer : 'python' -- Fast R-CNN's roi_data_layer.layer.RoIDataLayer,
        so the file runs in Fast R-CNN's own tools -- or 'input' (Input
        layers, for feeding from pycaffe)
    """
    n = NetSpec()
    if not train:
        n.data = L.Input(shape=dict(dim=[1, 3, 227, 227]))
        n.rois = L.Input(shape=dict(dim=[1, 5]))
    elif data_layer == 'python':
        n.data, n.rois, n.labels, n.bbox_targets, n.bbox_loss_weights = \
            L.Python(ntop=5, python_param=dict(
                module='roi_data_layer.layer', layer='RoIDataLayer',
                param_str="'num_classes': %d" % num_classes))
    else:
        n.data = L.Input(shape=dict(dim=[1, 3, 227, 227]))
        n.rois = L.Input(shape=dict(dim=[1, 5]))
        n.labels = L.Input(shape=dict(dim=[1]))
        n.bbox_targets = L.Input(shape=dict(dim=[1, 4 * num_classes]))
        n.bbox_loss_weights = L.Input(shape=dict(dim=[1, 4 * num_classes]))
    relu5 = nets.conv_tower(n, n.data, conv1_pad=0)
    if fc6_mode == 'conv6':
        n.roi_pool5 = L.ROIPooling(relu5, n.rois, roi_pooling_param=dict(
            pooled_w=6, pooled_h=6, spatial_scale=SPATIAL_SCALE))
        nets.conv_relu(n, n.roi_pool5, '6', 3, 4096)
        n.pool6 = nets.max_pool(n.relu6, 2, stride=2)
        top = n.pool6
    elif fc6_mode == 'roi3x3':
        n.roi_pool5 = L.ROIPooling(relu5, n.rois, roi_pooling_param=dict(
            pooled_w=3, pooled_h=3, spatial_scale=SPATIAL_SCALE))
        nets.fc_relu(n, n.roi_pool5, '6', 4096)
        n.drop6 = L.Dropout(n.relu6, in_place=True, dropout_ratio=0.5)
        top = n.drop6
    else:
        raise ValueError("fc6_mode must be 'conv6' or 'roi3x3'")
    nets.fc_relu(n, top, '7', 4096)
    n.drop7 = L.Dropout(n.relu7, in_place=True, dropout_ratio=0.5)
    n.cls_score = L.InnerProduct(n.drop7, num_output=num_classes,
                                 weight_filler=_gaussian(0.01),
                                 bias_filler=dict(type='constant'))
    n.bbox_pred = L.InnerProduct(n.drop7, num_output=4 * num_classes,
                                 weight_filler=_gaussian(0.001),
                                 bias_filler=dict(type='constant'))
    if train:
        n.loss_cls = L.SoftmaxWithLoss(n.cls_score, n.labels)
        n.loss_bbox = L.SmoothL1Loss(n.bbox_pred, n.bbox_targets,
                                     n.bbox_loss_weights, loss_weight=1)
    else:
        n.cls_prob = L.Softmax(n.cls_score)
    proto = n.to_proto()
    proto.name = 'CaffeNet_nogroups_deepcontext'
    return proto


def gen_solver(train_net, snapshot_prefix):
    """Fast R-CNN's CaffeNet solver settings."""
    s = caffe_pb2.SolverParameter()
    s.train_net = train_net
    s.base_lr = 0.001
    s.lr_policy = 'step'
    s.gamma = 0.1
    s.stepsize = 30000
    s.display = 20
    s.average_loss = 100
    s.momentum = 0.9
    s.weight_decay = 0.0005
    s.snapshot = 0   # Fast R-CNN's tools snapshot themselves
    s.snapshot_prefix = snapshot_prefix
    return s


def transfer(src, dst, fc6_mode='conv6', input_scale=1.0, log=print):
    """Copy our weights into an exported net; return what happened per layer.

    conv2-conv5 are copied bit for bit; conv1 has its input channels
    reversed (RGB -> BGR) and is multiplied by ``input_scale``; fc6 becomes
    conv6 (a reshape) or stays fc6; fc7 and the heads keep their fresh
    initialisation.
    """
    report = {}
    for name in ('conv1', 'conv2', 'conv3', 'conv4', 'conv5'):
        w, b = src.params[name][0].data, src.params[name][1].data
        if name == 'conv1':
            w = w[:, ::-1]
            if input_scale != 1.0:
                w = w * np.float32(input_scale)
            report[name] = ('transferred (RGB->BGR%s)' % (
                '' if input_scale == 1.0 else ', x%.4g' % input_scale))
        else:
            report[name] = 'transferred'
        dst.params[name][0].data[...] = w
        dst.params[name][1].data[...] = b
    six = 'conv6' if fc6_mode == 'conv6' else 'fc6'
    dst.params[six][0].data[...] = src.params['fc6'][0].data.reshape(
        dst.params[six][0].data.shape)
    dst.params[six][1].data[...] = src.params['fc6'][1].data
    report[six] = ('reshaped from fc6 (4096x2304 -> 4096x256x3x3)'
                   if six == 'conv6' else 'transferred')
    for name in dst.params:
        if name not in report:
            report[name] = 'freshly initialised'
    for name, what in report.items():
        log('%-9s %s' % (name, what))
    return report


def measure_input_scale(image_arrays, size=sampling.PATCH_SIZE):
    """50 / RMS of Fast R-CNN's input (BGR minus pixel means) over crops."""
    values = []
    for im in image_arrays:
        h, w = im.shape[:2]
        for y in range(0, h - size + 1, size):
            for x in range(0, w - size + 1, size):
                crop = im[y:y + size, x:x + size, ::-1].astype(np.float64)
                values.append(np.mean((crop - PIXEL_MEANS_BGR) ** 2))
    return float(preprocess.TARGET_RMS / np.sqrt(np.mean(values)))
