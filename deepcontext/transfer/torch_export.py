"""A trained snapshot as PyTorch (``model/torch_net.py``) and ONNX, checked.

:func:`export` reads a snapshot, folds BatchNorm with our debatchnorm (or
keeps it), copies every parameter into :class:`ContextNet` under its Caffe
layer name, and checks the result on real photos' patches: the patches go
through Caffe and through the PyTorch module, and every layer's output
(conv1 .. relu6, and fc7 .. fc9 on the patches' pairs) must agree to
``TOLERANCE`` relative (largest absolute difference / largest absolute
Caffe value).  The ONNX file holds the patch tower, one named output per
layer; onnxruntime's outputs are checked against PyTorch's.

Nothing is written when a check fails: :class:`ExportError`, one line.
"""
import json
import os
import shutil
import time
import warnings

import numpy as np
import torch

from deepcontext.data import batches, decode
from deepcontext.model import pycaffe, torch_net
from deepcontext.transfer import debatchnorm, fast_rcnn

TOLERANCE = 1e-4
ONNX_TOLERANCE = 1e-5
ONNX_OPSET = 17


class ExportError(RuntimeError):
    """The export cannot be made or does not match Caffe."""


def caffe_net(definition, weights, fold=True):
    """The Caffe net the export copies: BatchNorm folded (the no-BN patch
    network, through debatchnorm) or as it is (TEST phase, global stats)."""
    if fold:
        return fast_rcnn.patch_net(definition, weights, log=lambda m: None)
    return pycaffe.net_from_param(pycaffe.read_netparam(definition), 'test',
                                  weights)


def state_dict(net):
    """Caffe parameters as a state dict keyed by layer name (float32).

    Convolution and InnerProduct: ``NAME.weight``, ``NAME.bias`` (the same
    layouts in both frameworks).  BatchNorm: running mean and variance are
    Caffe's stored sums divided by its scale factor (0 counts as 0).
    """
    out = {}
    for name, blobs in net.params.items():
        kind = net.layer_dict[name].type
        if kind in ('Convolution', 'InnerProduct'):
            out[name + '.weight'] = torch.from_numpy(blobs[0].data.copy())
            out[name + '.bias'] = torch.from_numpy(blobs[1].data.copy())
        elif kind == 'BatchNorm':
            s = float(blobs[2].data.ravel()[0])
            f = 0.0 if s == 0 else 1.0 / s
            out[name + '.running_mean'] = torch.from_numpy(
                blobs[0].data * np.float32(f))
            out[name + '.running_var'] = torch.from_numpy(
                blobs[1].data * np.float32(f))
            out[name + '.num_batches_tracked'] = torch.tensor(0)
        else:
            raise ExportError('layer %s (%s) has parameters the PyTorch '
                              'module does not know' % (name, kind))
    return out


def torch_model(net, definition_eps, input_convention):
    """:class:`torch_net.ContextNet` holding ``net``'s parameters."""
    has_bn = any(l.type == 'BatchNorm' for l in net.layers)
    model = torch_net.ContextNet(batchnorm=has_bn,
                                 pair_head='fc9' in net.params,
                                 eps=definition_eps, input=input_convention)
    missing, unexpected = model.load_state_dict(state_dict(net), strict=False)
    if missing or unexpected:
        raise ExportError('the snapshot is not the context-prediction net: '
                          'missing %s, unexpected %s'
                          % (', '.join(missing) or '-',
                             ', '.join(unexpected) or '-'))
    return model.eval()


def caffe_layer_outputs(net, data, layers, pairs=None):
    """Each named layer's top right after it ran (in-place layers follow)."""
    if pairs is None:
        pycaffe.set_data(net, data)
    else:
        pycaffe.set_inputs(net, data, pairs, np.zeros(len(pairs)))
    order = list(net.layer_dict)
    out, start = {}, None
    for name in sorted(layers, key=order.index):
        net.forward(start=start, end=name)
        out[name] = np.array(net.blobs[net.top_names[name][0]].data,
                             dtype=np.float64)
        i = order.index(name) + 1
        start = order[i] if i < len(order) else None
    return out


def torch_layer_outputs(model, data, pairs=None):
    with torch.no_grad():
        x = torch.from_numpy(np.asarray(data, np.float32))
        out = dict(model.features(x, 'relu6'))
        if pairs is not None and model.pair_head:
            out.update(model.pairs(out['relu6'], torch.from_numpy(
                np.asarray(pairs, np.int64))))
    return {k: v.double().numpy() for k, v in out.items()}


def compare(reference, other):
    """layer -> (largest abs difference, that / largest |reference|)."""
    table = {}
    for name, want in reference.items():
        got = other[name]
        if got.shape != want.shape:
            raise ExportError('%s: Caffe gives %s, PyTorch %s'
                              % (name, want.shape, got.shape))
        diff = float(np.abs(got - want).max())
        table[name] = (diff, diff / max(float(np.abs(want).max()), 1e-30))
    return table


def check_against_caffe(net, model, data, pairs):
    """Per-layer comparison on ``data`` (and the pair head on ``pairs``)."""
    layers = model.layer_names()
    tower = [n for n in layers if n in model.tower]
    ref = caffe_layer_outputs(net, data, tower)
    if model.pair_head:
        ref.update({k: v for k, v in caffe_layer_outputs(
            net, data, layers, pairs).items() if k not in model.tower})
    return compare(ref, torch_layer_outputs(model, data, pairs))


def write_onnx(model, path, side=torch_net.PATCH_SIDE):
    """The patch tower (conv1 .. relu6) as ONNX, one output per layer."""
    names = list(model.tower)

    class Tower(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            return tuple(self.net.features(x, 'relu6').values())

    x = torch.zeros(1, 3, side, side)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        # A new wrapper is in training mode, and the exporter restores the
        # mode it found onto every submodule afterwards: eval, or the
        # model's BatchNorm would use batch statistics from then on.
        torch.onnx.export(Tower(model).eval(), (x,), path, dynamo=False,
                          opset_version=ONNX_OPSET, input_names=['data'],
                          output_names=names,
                          dynamic_axes={'data': {0: 'batch'}})
    return names


def check_onnx(path, model, data):
    """layer -> largest abs difference between onnxruntime and PyTorch."""
    import onnxruntime
    session = onnxruntime.InferenceSession(
        path, providers=['CPUExecutionProvider'])
    names = [o.name for o in session.get_outputs()]
    got = session.run(names, {'data': np.asarray(data, np.float32)})
    with torch.no_grad():
        want = model.features(torch.from_numpy(
            np.asarray(data, np.float32)), 'relu6')
    return {n: float(np.abs(g - want[n].numpy()).max()) /
            max(float(want[n].abs().max()), 1e-30)
            for n, g in zip(names, got)}


def export(definition, weights, out, images, fold=True, onnx=True,
           patches=32, input_scale=None, log=print):
    """Write OUT/model.pt, OUT/torch_net.py, OUT/model.onnx, export.json.

    ``images``: photos whose training-style patches (``batches.real_patches``)
    and pretext pairs make the check.  ``input_scale``: recorded in the
    model's input convention for :func:`torch_net.preprocess_reference`
    (None: measured on ``images`` as ``export_fast_rcnn.py`` does).
    Returns the report written to export.json.
    """
    t0 = time.time()
    net = caffe_net(definition, weights, fold)
    eps = debatchnorm.bn_eps(pycaffe.read_netparam(definition))
    if input_scale is None:
        input_scale = measure_input_scale(images[:16])
    convention = dict(
        channel_order='RGB', side=torch_net.PATCH_SIDE,
        training='per patch: mean removed, RMS 50, one colour channel kept '
                 '(colour dropping)',
        reference='preprocess_reference(images, input_scale): BGR 0-255 '
                  'minus the ImageNet mean, RGB order, times input_scale',
        deepcontext='preprocess_deepcontext(images): grey, RMS-normalised',
        input_scale=float(input_scale), batchnorm='kept' if not fold and any(
            l.type == 'BatchNorm' for l in net.layers) else 'folded')
    model = torch_model(net, eps, convention)
    data, pairs = check_inputs(images, patches)
    table = check_against_caffe(net, model, data, pairs)
    worst = max(table, key=lambda k: table[k][1])
    for name, (diff, rel) in table.items():
        log('check %-6s max abs diff %.3g, relative %.3g'
            % (name, diff, rel))
    if table[worst][1] > TOLERANCE:
        raise ExportError('PyTorch differs from Caffe at %s by %.3g '
                          'relative (tolerance %g): nothing written'
                          % (worst, table[worst][1], TOLERANCE))
    for p in model.parameters():
        if not torch.isfinite(p).all():
            raise ExportError('non-finite weights: nothing written')
    os.makedirs(out, exist_ok=True)
    files = {}
    files['model.pt'] = os.path.join(out, 'model.pt')
    model.save(files['model.pt'])
    files['torch_net.py'] = os.path.join(out, 'torch_net.py')
    shutil.copyfile(torch_net.__file__, files['torch_net.py'])
    onnx_table = None
    if onnx:
        files['model.onnx'] = os.path.join(out, 'model.onnx')
        write_onnx(model, files['model.onnx'])
        onnx_table = check_onnx(files['model.onnx'], model, data)
        bad = max(onnx_table, key=onnx_table.get)
        log('onnxruntime vs PyTorch: largest relative difference %.3g (%s)'
            % (onnx_table[bad], bad))
        if onnx_table[bad] > ONNX_TOLERANCE:
            os.remove(files['model.onnx'])
            raise ExportError('onnxruntime differs from PyTorch at %s by '
                              '%.3g relative: model.onnx removed'
                              % (bad, onnx_table[bad]))
    report = dict(
        definition=definition, weights=weights, input=convention,
        check=dict(patches=int(len(data)), pairs=int(len(pairs)),
                   tolerance=TOLERANCE, layers={
                       k: dict(max_abs=d, relative=r)
                       for k, (d, r) in table.items()},
                   worst_layer=worst, worst_relative=table[worst][1]),
        onnx=None if onnx_table is None else dict(
            opset=ONNX_OPSET, tolerance=ONNX_TOLERANCE, relative=onnx_table),
        files={k: dict(path=v, bytes=os.path.getsize(v))
               for k, v in files.items()},
        seconds=time.time() - t0)
    with open(os.path.join(out, 'export.json'), 'w') as f:
        json.dump(report, f, indent=1)
    return report


def measure_input_scale(images):
    """50 / RMS of BGR 0-255 minus the ImageNet mean over ``images``: the
    scale ``--preprocess reference`` (eval/features.py) measures."""
    sq = [np.mean(np.square(decode.load_rgb(p)[:, :, ::-1].astype(np.float64)
                            - np.asarray(torch_net.IMAGENET_BGR_MEAN)))
          for p in images]
    if not sq or not np.mean(sq) > 0:
        raise ExportError('cannot measure an input scale on these images')
    return float(torch_net.TARGET_RMS / np.sqrt(np.mean(sq)))


def check_inputs(images, count):
    """(patches, pairs): ``count`` training-style patches of ``images`` and
    the pretext pairs among them."""
    data, pairs = [], []
    for seed in range(count):
        for d, p, _, _ in batches.pretext_batches(
                images, seed, grids_per_image=1, report=lambda m: None):
            room = count - len(data)
            if room <= 0:
                break
            keep = min(room, len(d))
            pairs.extend(p[(p < keep).all(1)] + len(data))
            data.extend(d[:keep])
        if len(data) >= count:
            break
    if not data:
        raise ExportError('no usable image among %d' % len(images))
    return np.stack(data), np.asarray(pairs, np.int64).reshape(-1, 2)
