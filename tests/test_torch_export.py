"""The bridge out: tools/export_torch.py, transfer/torch_export.py and
model/torch_net.py against real Caffe, real torch and real onnxruntime, on
real photos' patches.

The Caffe/PyTorch traps each have a check: conv1's pad 5 and LRN (the
per-layer table, conv1 and norm1 rows), pooling's ceil rounding (a
hand-made size where floor and ceil differ), the pool5 -> fc6 flatten
order (a weight that reads one pool5 element per output).
"""
import json
import os
import subprocess
import sys

import caffe
import numpy as np
import pytest
from caffe import layers as L, params as P

torch = pytest.importorskip(
    'torch', reason='the bridge is not installed: make bridge')
pytest.importorskip('onnxruntime', reason='make bridge')

from conftest import ROOT, run_tool  # noqa: E402
from deepcontext.data import photos  # noqa: E402
from deepcontext.eval import features  # noqa: E402
from deepcontext.model import nets, pycaffe, torch_net  # noqa: E402
from deepcontext.transfer import torch_export  # noqa: E402

TOWER = ['conv1', 'relu1', 'pool1', 'norm1', 'conv2', 'relu2', 'pool2',
         'norm2', 'conv3', 'relu3', 'conv4', 'relu4', 'conv5', 'relu5',
         'pool5', 'fc6', 'relu6']
HEAD = ['fc7', 'relu7', 'fc8', 'relu8', 'fc9']


def bn_names(layers):
    return [l for l in layers if l.startswith('bn')]


@pytest.mark.parametrize('keep', [False, True])
def test_export_tool_round_trip_on_a_snapshot(bn_snapshot, tmp_path, keep):
    out = tmp_path / 'torch'
    args = ['--keep-batchnorm'] if keep else []
    log = run_tool('export_torch.py', bn_snapshot[0], bn_snapshot[2], out,
                   '--patches', '16', *args)
    r = json.loads((out / 'export.json').read_text())
    layers = r['check']['layers']
    want = TOWER + HEAD + (['bn3', 'bn4', 'bn5', 'bn6', 'bn7'] if keep
                           else [])
    assert sorted(layers) == sorted(want)
    assert all(v['relative'] <= 1e-4 for v in layers.values()), layers
    assert r['input']['batchnorm'] == ('kept' if keep else 'folded')
    assert r['check']['pairs'] > 0
    assert max(r['onnx']['relative'].values()) <= 1e-5
    assert sorted(r['onnx']['relative']) == sorted(
        [l for l in want if l not in HEAD + ['bn7']])
    for name in ('model.pt', 'torch_net.py', 'model.onnx'):
        assert (out / name).stat().st_size > 0
    assert 'PyTorch matches Caffe on 16 patches' in log
    # The copied module and model.pt need neither Caffe nor deepcontext.
    code = ('import sys; sys.modules["caffe"] = None; '
            'sys.modules["deepcontext"] = None; sys.path.insert(0, %r); '
            'import torch, torch_net; '
            'net = torch_net.ContextNet.load(%r); '
            'x = torch.zeros(2, 3, 96, 96); '
            'print(tuple(net.features(x, "pool5")["pool5"].shape), '
            '[k for k in net.state_dict() if k.startswith("conv1")])'
            % (str(out), str(out / 'model.pt')))
    r = subprocess.run([sys.executable, '-c', code], capture_output=True,
                       text=True, timeout=300, cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "(2, 256, 3, 3) ['conv1.weight', 'conv1.bias']" in r.stdout


def random_bn_net(tmp_path):
    """The training net with Caffe's random weights and random (positive
    variance) BatchNorm statistics, saved."""
    proto = nets.gen_net(batch_size=2)
    caffe.set_random_seed(3)
    net = pycaffe.net_from_param(proto, 'test')
    rs = np.random.RandomState(0)
    for name, layer in net.layer_dict.items():
        if layer.type == 'BatchNorm':
            mean, var, factor = net.params[name]
            factor.data[...] = 2.0
            mean.data[...] = rs.randn(*mean.data.shape) * 2.0
            var.data[...] = rs.uniform(0.5, 4.0, var.data.shape) * 2.0
    definition = tmp_path / 'network.prototxt'
    definition.write_text(str(proto))
    weights = str(tmp_path / 'random.caffemodel')
    net.save(weights)
    return str(definition), weights


@pytest.mark.parametrize('fold', [True, False])
def test_random_net_layer_by_layer(tmp_path, fold):
    definition, weights = random_bn_net(tmp_path)
    net = torch_export.caffe_net(definition, weights, fold)
    model = torch_export.torch_model(
        net, {}, dict(input_scale=1.0))
    assert model.batchnorm == (not fold)
    data, pairs = torch_export.check_inputs(photos.test_photos()[:4], 12)
    table = torch_export.check_against_caffe(net, model, data, pairs)
    assert set(TOWER + HEAD) <= set(table)
    assert (bn_names(table) != []) == (not fold)
    worst = max(rel for _, rel in table.values())
    assert worst <= 1e-4, table


def test_a_wrong_layer_is_caught(tmp_path):
    definition, weights = random_bn_net(tmp_path)
    net = torch_export.caffe_net(definition, weights, True)
    model = torch_export.torch_model(net, {}, {})
    model.norm1.alpha = 1e-3     # PyTorch's LRN with 10x Caffe's alpha
    data, pairs = torch_export.check_inputs(photos.test_photos()[:2], 6)
    table = torch_export.check_against_caffe(net, model, data, pairs)
    assert table['pool1'][1] <= 1e-4 and table['norm1'][1] > 1e-3


def test_pooling_rounds_up_as_caffe(tmp_path):
    # 8 wide, kernel 3, stride 2: floor gives 3, ceil (Caffe) 4.
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 2, 8, 7]))
    n.pool = L.Pooling(n.data, pool=P.Pooling.MAX, kernel_size=3, stride=2)
    path = tmp_path / 'pool.prototxt'
    path.write_text(str(n.to_proto()))
    net = caffe.Net(str(path), caffe.TEST)
    x = np.random.RandomState(0).randn(1, 2, 8, 7).astype(np.float32)
    net.blobs['data'].data[...] = x
    net.forward()
    want = net.blobs['pool'].data
    got = torch_net._pool()(torch.from_numpy(x)).numpy()
    floor = torch.nn.MaxPool2d(3, 2)(torch.from_numpy(x)).shape
    assert want.shape == got.shape == (1, 2, 4, 3) and floor[2] == 3
    assert np.array_equal(want, got)


def test_fc6_reads_pool5_channel_major(tmp_path):
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 256, 3, 3]))
    n.fc6 = L.InnerProduct(n.data, num_output=4096)
    path = tmp_path / 'fc6.prototxt'
    path.write_text(str(n.to_proto()))
    net = caffe.Net(str(path), caffe.TEST)
    # Output j reads pool5 element j (of 2304) alone: any other flatten
    # order sends it another element.
    w = np.zeros((4096, 2304), np.float32)
    w[np.arange(2304), np.arange(2304)] = 1
    net.params['fc6'][0].data[...] = w
    net.params['fc6'][1].data[...] = 0
    x = np.random.RandomState(1).randn(1, 256, 3, 3).astype(np.float32)
    net.blobs['data'].data[...] = x
    net.forward()
    model = torch_net.ContextNet(pair_head=False).eval()
    model.fc6.weight.data[...] = torch.from_numpy(w)
    model.fc6.bias.data.zero_()
    with torch.no_grad():
        got = model.fc6(torch.flatten(torch.from_numpy(x), 1)).numpy()
    assert np.array_equal(got, net.blobs['fc6'].data)
    assert np.array_equal(got[0, :2304], x.ravel())


def test_preprocessing_functions_match_the_tools(trained, patches):
    images = patches[0][:4].astype(np.float64)
    got = torch_net.preprocess_deepcontext(images).numpy()
    want = np.stack([features.prep_eval(im) for im in images])
    assert np.allclose(got, want, atol=1e-4)
    spec = features.input_spec(trained[0], 'reference', sample=list(images))
    got = torch_net.preprocess_reference(images, spec.scale).numpy()
    want = np.stack([features.to_input(im, spec) for im in images])
    assert np.allclose(got, want, atol=1e-4)


def test_export_refuses_bad_input_in_one_line(tmp_path):
    cmd = [sys.executable, os.path.join(ROOT, 'tools', 'export_torch.py'),
           'nope.prototxt', 'nope.caffemodel', str(tmp_path / 'o')]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1
    assert 'nope.prototxt' in r.stderr and not (tmp_path / 'o').exists()
