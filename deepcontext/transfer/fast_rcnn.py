"""Export to Fast R-CNN (Girshick, ICCV 2015): definitions, solver, weights.

The paper fine-tuned the context-prediction network in Fast R-CNN on VOC 2007
(51.4% mAP).  This module writes what Fast R-CNN's CaffeNet recipe needs,
for a CaffeNet without groups carrying our weights:

    data, rois -> conv1..conv5 (ours) -> roi_pool5 (ROIPooling 6x6, 1/16)
      -> conv6 (our fc6 as a 3x3 convolution) -> pool6 (2x2 max) -> drop6
      -> fc7 (new) -> drop7 -> cls_score (num_classes)
                             + bbox_pred (4 num_classes)

Why conv6: our fc6 was trained on a 3x3 pool5 (96x96 patches), CaffeNet's
on 6x6.  fc6's weights, reshaped to (4096, 256, 3, 3), are a 3x3
convolution that computes, at every 3x3 window of the 6x6 ROI grid, exactly
the fc6 response our network learned for a patch; a 2x2 max pool then
summarises the four quadrants.  This is our reading of the paper's
"conv6" conversion; ``fc6_mode='roi3x3'`` instead pools each ROI to 3x3 and
keeps fc6 as it is.

conv1 keeps the padding of 5 it was trained with, and pool1/pool2 are
padded by 1 as in Fast R-CNN's CaffeNet: then conv5 cell k is centred at
pixel 16 k, where ROIPooling's spatial_scale 1/16 reads it (unpadded pools
put it at 16 k + 12, and every RoI read features 0.75 cell off; see
``nets.conv_tower``; exports written before have no pool pad, and
:func:`outdated` names them).  Dropout 0.5 after pool6 (or fc6) and fc7,
as the reference's drop6 and drop7; identity in the test net.
Learning-rate multipliers are Fast R-CNN's CaffeNet ones: conv1 frozen
(lr_mult 0), weights 1, biases 2 without weight decay.  The test net
declares its inputs in the old ``input:``/``input_shape`` form, which the
Fast R-CNN Caffe fork parses (it predates the Input layer).

Inputs: Fast R-CNN feeds BGR images minus its pixel means [102.98, 115.95,
122.77] in 0-255 units; our network saw RGB patches with each patch's mean
removed and scaled to RMS 50.  conv1's input channels are therefore
reversed (RGB -> BGR, exact), and its weights are multiplied by an
``input_scale``, by default 50 / the RMS of Fast R-CNN's input on the
calibration images (:func:`measure_input_scale`), so conv1 sees inputs of
the size it was trained on; the per-patch mean removal has no equivalent.

:func:`export` is the whole recipe: fold BatchNorm, transfer into the
detection net, initialise the fresh layers (fc7, cls_score, bbox_pred) on
real images with real RoIs, calibrate the net that will be fine-tuned
(deepcontext/transfer/calibration.py), and write the files.
"""
import json
import os

import numpy as np
from caffe import layers as L, NetSpec
from caffe.proto import caffe_pb2
from google.protobuf import text_format

from deepcontext.data import batches, decode, preprocess, sampling
from deepcontext.model import nets, pycaffe
from deepcontext.transfer import calibration, debatchnorm, detector

PIXEL_MEANS_BGR = np.array([102.9801, 115.9465, 122.7717])  # Fast R-CNN's
SPATIAL_SCALE = 1.0 / 16   # conv5 stride of CaffeNet-style nets
CONV1_PAD = 5   # as the patch network was trained
POOL_PAD = 1    # pool1/pool2, as Fast R-CNN's CaffeNet: cell k at 16 k px


def _gaussian(std):
    return dict(type='gaussian', std=std)


def set_lr_mults(proto):
    """Fast R-CNN's CaffeNet multipliers: conv1 frozen; weights lr 1 with
    decay, biases lr 2 without."""
    for layer in proto.layer:
        if layer.type in ('Convolution', 'InnerProduct'):
            del layer.param[:]
            frozen = layer.name == 'conv1'
            layer.param.add(lr_mult=0 if frozen else 1,
                            decay_mult=0 if frozen else 1)
            layer.param.add(lr_mult=0 if frozen else 2, decay_mult=0)
    return proto


def old_style_inputs(proto):
    """Input layers turned into ``input:``/``input_shape`` declarations."""
    inputs = [l for l in proto.layer if l.type == 'Input']
    for layer in inputs:
        proto.input.append(layer.top[0])
        proto.input_shape.add().CopyFrom(layer.input_param.shape[0])
    kept = [l for l in proto.layer if l.type != 'Input']
    del proto.layer[:]
    proto.layer.extend(kept)
    return proto


def gen_net(num_classes=21, train=True, fc6_mode='conv6',
            data_layer='python', conv1_pad=CONV1_PAD, pool_pad=POOL_PAD):
    """Fast R-CNN CaffeNet (no groups) with our layer names.

    Parameters
    ----------
    num_classes : int, including background (21 for VOC)
    train : bool, the training net (losses) or the test net (probabilities)
    fc6_mode : 'conv6' (the paper's conversion) or 'roi3x3'
    data_layer : 'python' -- Fast R-CNN's roi_data_layer.layer.RoIDataLayer,
        so the file runs in Fast R-CNN's own tools -- or 'input' (Input
        layers, for feeding from pycaffe)
    conv1_pad : 5, as the patch network was trained
    pool_pad : 1 on pool1 and pool2, so conv5 cell k is centred at 16 k px
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
    relu5 = nets.conv_tower(n, n.data, conv1_pad=conv1_pad,
                            pool_pad=pool_pad)
    if fc6_mode == 'conv6':
        n.roi_pool5 = L.ROIPooling(relu5, n.rois, roi_pooling_param=dict(
            pooled_w=6, pooled_h=6, spatial_scale=SPATIAL_SCALE))
        nets.conv_relu(n, n.roi_pool5, '6', 3, 4096)
        n.pool6 = nets.max_pool(n.relu6, 2, stride=2)
        n.drop6 = L.Dropout(n.pool6, in_place=True, dropout_ratio=0.5)
        top = n.drop6
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
    proto = set_lr_mults(n.to_proto())
    proto.name = 'CaffeNet_nogroups_deepcontext'
    return proto if train else old_style_inputs(proto)


def outdated(netdef):
    """What an exported definition lacks of today's export, or None.

    Exports written before the RoI alignment (issue 24) have unpadded
    pool1/pool2 (conv5 cell k at 16 k + 12 px while the RoIs are read at
    16 k) and no drop6 after pool6.  Their weights are the same, but the
    definitions are not the recipe; re-exporting writes the new ones.
    """
    layers = {l.name: l for l in netdef.layer}
    missing = ['%s pad %d' % (name, POOL_PAD) for name in ('pool1', 'pool2')
               if name in layers and
               layers[name].pooling_param.pad != POOL_PAD]
    if 'pool6' in layers and 'drop6' not in layers:
        missing.append('drop6')
    return ', '.join(missing) or None


def gen_solver(train_net, snapshot_prefix):
    """Fast R-CNN's CaffeNet solver settings (train_net made absolute)."""
    s = caffe_pb2.SolverParameter()
    s.train_net = os.path.abspath(train_net)
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


# Fresh layers and the output std they start with on real RoIs: fc7 unit
# variance (magic_init), the heads small, as Fast R-CNN's 0.01 / 0.001
# fillers make them, so the 21-way loss starts at chance and the first
# steps send small gradients into the trunk.  Calibration keeps these
# output scales (the heads' scales multiply to ~1).
FRESH = (('fc7', 1.0), ('cls_score', 0.1), ('bbox_pred', 0.1))
# --head-init reference: Fast R-CNN's own fillers for the heads (CaffeNet
# train.prototxt), zero biases, put in after the calibration.
REFERENCE_HEADS = (('cls_score', 0.01), ('bbox_pred', 0.001))
HEAD_INITS = ('data', 'reference')
FOLD_TOLERANCE = 1e-4


class ExportError(RuntimeError):
    """The export cannot be made (a failed fold check, no images)."""


def patch_net(definition, weights, check_patches=None, log=print):
    """Our trained net without BatchNorm, as a Net with weights.

    A definition with BatchNorm (the training's network.prototxt) is folded
    into the no-BN patch network (transfer/debatchnorm.py) and checked on
    ``check_patches``: every blob up to fc6 must agree to 1e-4 relative.
    """
    src_def = pycaffe.read_netparam(definition)
    src = pycaffe.net_from_param(src_def, 'test', weights)
    if not any(l.type == 'BatchNorm' for l in src_def.layer):
        return src
    dst_def = nets.gen_net(batch_size=2, use_bn=False)
    if debatchnorm.tower_signature(src_def) != \
            debatchnorm.tower_signature(dst_def):
        raise ExportError('%s is not the patch network: fold it with '
                          'tools/debatchnorm.py first' % definition)
    dst = pycaffe.net_from_param(dst_def, 'test')
    debatchnorm.debatchnorm(src, src_def, dst, log=lambda m: None)
    if check_patches is not None:
        shared = ['conv1', 'norm1', 'conv2', 'norm2', 'conv3', 'conv4',
                  'conv5', 'pool5', 'fc6']
        worst = max(rel for _, rel in debatchnorm.compare_activations(
            src, dst, shared, check_patches, end='relu6').values())
        if worst > FOLD_TOLERANCE:
            raise ExportError('BatchNorm fold check failed: relative '
                              'difference %.3g' % worst)
        log('debatchnorm: folded bn3-bn7, checked on real patches (largest '
            'relative difference %.2g)' % worst)
    return dst


def random_rois(height, width, count, rng):
    """``count`` boxes of random position and size (sides 1/8 to 1 of the
    image), 0-based inclusive: RoIs for images without proposals."""
    w = np.exp(rng.uniform(np.log(width / 8.0), np.log(width), count))
    h = np.exp(rng.uniform(np.log(height / 8.0), np.log(height), count))
    x1 = rng.uniform(0, width - w)
    y1 = rng.uniform(0, height - h)
    return np.stack([x1, y1, x1 + w - 1, y1 + h - 1], 1).astype(np.float32)


def calibration_batches(images, count, rng, records=None, scale=600,
                        max_size=1000, rois_per_image=64):
    """``count`` inputs of 2 images each: data and rois (the proposals of
    VOC records when given, else random boxes on ``images``)."""
    out = []
    for b in range(count):
        ims, rois = [], []
        for n in range(detector.IMS_PER_BATCH):
            k = (b * detector.IMS_PER_BATCH + n)
            if records:
                rec = records[k % len(records)]
                im = decode.load_rgb(rec['image'])
                boxes = rec['proposals']
                if len(boxes) > rois_per_image:
                    boxes = boxes[rng.choice(len(boxes), rois_per_image,
                                             replace=False)]
            else:
                im = decode.load_rgb(images[k % len(images)])
                boxes = random_rois(im.shape[0], im.shape[1],
                                    rois_per_image, rng)
            data, f = detector.prep_image(im, scale, max_size)
            ims.append(data)
            rois.append(np.hstack([np.full((len(boxes), 1), n), boxes * f]))
        out.append(dict(data=detector.stack_images(ims),
                        rois=np.concatenate(rois).astype(np.float32)))
    return out


def reference_heads(net, rng, log=print):
    """cls_score and bbox_pred filled as Fast R-CNN fills them: Gaussian
    weights of std 0.01 and 0.001, zero biases."""
    for name, std in REFERENCE_HEADS:
        w, b = net.params[name][0].data, net.params[name][1].data
        w[...] = rng.normal(0, std, w.shape).astype(np.float32)
        b[...] = 0
        log('%-9s reference fill: gaussian std %g, bias 0' % (name, std))


def export(definition, weights, outdir, images, records=None,
           num_classes=21, fc6_mode='conv6', input_scale='auto',
           calib_batches=2, scale=600, max_size=1000, rois_per_image=64,
           tolerance=0.05, rounds=10, draws=4, head_init='data', seed=0,
           log=print):
    """The recipe: fold, transfer, initialise, calibrate, write.

    ``head_init='data'`` (the default, the original README's advice) keeps
    the heads as initialised on real RoIs and calibrated with the rest;
    ``'reference'`` replaces them after the calibration with Fast R-CNN's
    Gaussian fillers (:func:`reference_heads`); the trunk and fc7 are
    calibrated either way.

    Returns (report dict, converged).  Nothing is written unless the
    calibration converged with finite weights (CalibrationError or
    ExportError otherwise).
    """
    if head_init not in HEAD_INITS:
        raise ValueError('head_init must be one of %s, not %r'
                         % ('|'.join(HEAD_INITS), head_init))
    rng = np.random.RandomState(seed)
    paths = [r['image'] for r in records] if records else list(images)
    if not paths:
        raise ExportError('no images to calibrate on')
    src = patch_net(definition, weights, batches.real_patches(
        paths + list(images), 32, seed=seed), log=log)
    if input_scale == 'auto':
        input_scale = measure_input_scale(
            [decode.load_rgb(p) for p in paths[:20]])
    train_def = gen_net(num_classes, True, fc6_mode, 'python')
    test_def = gen_net(num_classes, False, fc6_mode)
    netdef, net = calibration.load_net(detector.input_twin(train_def))
    layers = transfer(src, net, fc6_mode, float(input_scale), log=log)
    data = calibration_batches(paths, calib_batches, rng, records, scale,
                               max_size, rois_per_image)
    for name, out_std in FRESH:
        calibration.init_layer(net, name, data[0], 'gaussian', rng)
        for blob in net.params[name]:
            blob.data[...] *= np.float32(out_std)
        log('%-9s initialised on real RoIs to output std %g' % (name, out_std))
    net, cal = calibration.calibrate(net, netdef, data, rounds=rounds,
                                     tolerance=tolerance, draws=draws,
                                     seed=seed, log=log)
    calibration.check_finite(net, 'calibrated export')
    if head_init == 'reference':
        reference_heads(net, rng, log)
    report = dict(layers=layers, input_scale=float(input_scale),
                  fc6_mode=fc6_mode, num_classes=num_classes,
                  head_init=head_init, pool_pad=POOL_PAD,
                  calibration=dict(
                      spread=cal['spread'], converged=cal['converged'],
                      rounds=cal['rounds'], tolerance=tolerance,
                      ratios_before=cal['before'],
                      ratios_after=cal['independent'],
                      factors=cal['factors'], head_scales=cal['head_scales'],
                      function={k: v[1] for k, v in cal['function'].items()},
                      lrn_alpha={n: p.alpha for n, p in
                                 calibration.lrn_params(netdef).items()}))
    if not cal['converged']:
        return report, False
    os.makedirs(outdir, exist_ok=True)
    out = lambda name: os.path.abspath(os.path.join(outdir, name))  # noqa
    for name, proto in (('train.prototxt', train_def),
                        ('train_input.prototxt',
                         detector.input_twin(train_def)),
                        ('test.prototxt', test_def)):
        write_proto(out(name), calibration.copy_lrn(netdef, proto), log)
    write_proto(out('solver.prototxt'), gen_solver(
        out('train.prototxt'), out('deepcontext_fast_rcnn')), log)
    net.save(out('init.caffemodel'))
    log('wrote %s' % out('init.caffemodel'))
    with open(out('export.json'), 'w') as f:
        json.dump(report, f, indent=2)
    log('wrote %s' % out('export.json'))
    return report, True


def write_proto(path, proto, log=print):
    with open(path, 'w') as f:
        f.write(text_format.MessageToString(proto))
    log('wrote %s' % path)
