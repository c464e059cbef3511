"""Visual checks of filters (deepcontext/eval/visualize.py,
tools/visualize_filters.py).

The backward pass to the data blob is checked where the answer is known by
construction: the gradient of one conv1 response with respect to the input
is that filter's kernel, placed at its receptive field, and zero elsewhere.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, held_out, run_tool
from deepcontext.eval import features, visualize


@pytest.fixture(scope='module')
def net(bn_snapshot):
    return features.load_net(bn_snapshot[2], force_backward=True)[0]


def test_conv1_gradient_is_the_kernel(net):
    x = np.random.RandomState(0).randn(2, 3, 96, 96).astype(np.float32)
    filters = np.array([3, 17])
    _, grad = visualize.unit_gradient(net, x, 'conv1', filters)
    side = net.blobs['conv1'].data.shape[2]   # 24: (96 + 2*5 - 11)/4 + 1
    c = side // 2
    y0 = 4 * c - 5                            # stride 4, pad 5
    for i, f in enumerate(filters):
        kernel = net.params['conv1'][0].data[f]
        window = grad[i][:, y0:y0 + 11, y0:y0 + 11]
        assert np.allclose(window, kernel, atol=1e-6)
        assert np.abs(grad[i]).sum() == pytest.approx(np.abs(kernel).sum(),
                                                      rel=1e-5)


def test_top_images_by_hand():
    resp = np.array([[1., 5.], [3., 5.], [2., 0.], [9., 1.]])
    # filter 0: 9 (image 3), 3 (1), 2 (2); filter 1: 5, 5 (tie: 0 before
    # 1), 1 (image 3).
    assert visualize.top_images(resp, [0, 1], 3).tolist() == \
        [[3, 1, 2], [0, 1, 3]]
    assert visualize.top_images(resp, [1], 9).shape == (1, 4)


def test_gradient_ascent_raises_the_response(net):
    x, start, end, layer = visualize.gradient_ascent(net, 'relu3', [0, 1, 2],
                                                     steps=12)
    assert layer == 'conv3' and x.shape == (3, 3, 96, 96)
    assert np.all(end > start)
    assert visualize.to_display(x[0]).dtype == np.uint8


def test_reference_ascent_gradient_is_the_objectives(net):
    """The pixel gradient of DeepCluster's objective (log softmax of the
    channel means at the filter), through our BGR input with the channels
    put back in RGB order, against a finite difference (conv1: linear)."""
    spec = features.InputSpec('reference', features.IMAGENET_BGR_MEAN, 0.8,
                              'rgb')
    jac = visualize.pixel_jacobian(spec)
    rs = np.random.RandomState(2)
    px = rs.uniform(0, 255, (1, 48, 48, 3))
    direction = rs.randn(*px.shape)

    def objective(pixels):
        data = np.stack([features.to_input(p, spec) for p in pixels])
        features.pycaffe.set_data(net, data)
        net.forward(end='conv1')
        diff, _ = visualize.channel_mean_objective(net, 'conv1', [5])
        means = net.blobs['conv1'].data.mean(axis=(2, 3)).astype(np.float64)
        logp = means[0] - np.log(np.exp(means[0] - means[0].max()).sum()) \
            - means[0].max()
        return logp[5], diff
    value, diff = objective(px)
    grad = features.pycaffe.input_gradient(net, 'conv1', diff)
    pixel_grad = np.einsum('ij,nihw->nhwj', jac, grad)
    eps = 1e-2
    numeric = (objective(px + eps * direction)[0]
               - objective(px - eps * direction)[0]) / (2 * eps)
    assert numeric == pytest.approx((pixel_grad * direction).sum(), rel=2e-2)
    assert jac.tolist() == (np.eye(3) * 0.8).tolist()
    bgr = visualize.pixel_jacobian(spec._replace(channels='bgr', scale=1.0))
    assert bgr.tolist() == np.eye(3)[[2, 1, 0]].tolist()
    with pytest.raises(ValueError, match='--ascent deepcontext'):
        visualize.pixel_jacobian(features.DEEPCONTEXT_INPUT)


def test_reference_ascent_raises_the_filters_mean(net):
    spec = features.InputSpec('reference', features.IMAGENET_BGR_MEAN, 0.9,
                              'rgb')
    x, start, end, used = visualize.gradient_ascent_reference(
        net, 'relu2', [0, 1, 2], spec, side=64, steps=12)
    assert x.shape == (3, 64, 64, 3) and set(used) <= {'relu2', 'conv2'}
    assert np.all(end > start)
    shown = visualize.to_display_reference(x[0])
    assert shown.dtype == np.uint8 and 100 < shown.mean() < 155


def test_visualize_tool(bn_snapshot, tmp_path):
    run_tool('visualize_filters.py', '--weights', bn_snapshot[2], '--random',
             '--layer', 'relu2', '--num-filters', '3', '--top', '3',
             '--steps', '4', '--side', '96', '--images', *held_out(4),
             '--out', tmp_path)
    res = json.loads((tmp_path / 'visualize.json').read_text())
    for tag in ('trained', 'random'):
        assert (tmp_path / ('top9_%s.png' % tag)).stat().st_size > 1000
        assert (tmp_path / ('ascent_%s.png' % tag)).stat().st_size > 1000
        r = res['results'][tag]
        assert len(r['top_images']) == 3 and len(r['top_images'][0]) == 3
        assert all(a >= b for row in r['top_responses']
                   for a, b in zip(row, row[1:]))


@pytest.mark.parametrize('args, message', [
    (['--layer', 'relu9'], 'unknown layer relu9'),
    (['--filters', '999'], 'filters 0..'),
    (['--preprocess', 'deepcontext'], 'use --ascent deepcontext'),
])
def test_visualize_tool_refuses(tmp_path, args, message):
    r = subprocess.run([sys.executable, os.path.join(
        ROOT, 'tools', 'visualize_filters.py'), '--out', str(tmp_path),
        '--images', held_out(1)[0]] + args, capture_output=True, text=True,
        timeout=300)
    assert r.returncode != 0 and 'Traceback' not in r.stderr
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_top_images_rank_by_the_mean_response(net):
    # DeepCluster's activ-retrieval ranks by the spatial mean after ReLU.
    paths = held_out(3)
    mean = visualize.max_responses(net, paths, 'relu1', 96)
    peak = visualize.max_responses(net, paths, 'relu1', 96, op='max')
    maps = features.extract(net, np.stack(
        [features.image_input(p, 96) for p in paths]), ['relu1'])['relu1']
    assert np.allclose(mean, maps.mean(axis=(2, 3)), rtol=1e-4, atol=1e-5)
    assert np.allclose(peak, maps.max(axis=(2, 3)), rtol=1e-4, atol=1e-5)
