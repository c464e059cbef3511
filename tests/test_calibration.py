"""Data-dependent init and calibration on the debatchnormed network."""
import os
import subprocess
import sys

import numpy as np
import pytest

import caffe

from deepcontext.data import photos as dc_photos
from deepcontext.model import pycaffe
from deepcontext.transfer import calibration, debatchnorm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def folded(bn_snapshot, tmp_path_factory):
    """The debatchnormed snapshot: (no-BN definition, caffemodel)."""
    bn_def, no_bn_def, model = bn_snapshot
    src = caffe.Net(bn_def, model, caffe.TEST)
    dst = caffe.Net(no_bn_def, caffe.TEST)
    debatchnorm.debatchnorm(src, pycaffe.read_netparam(bn_def), dst,
                        log=lambda m: None)
    out = str(tmp_path_factory.mktemp('folded') / 'folded.caffemodel')
    dst.save(out)
    return no_bn_def, out


def test_zero_layers_get_unit_variance_on_real_images(folded):
    definition, weights = folded
    net = calibration.load_net(definition, weights)
    photos = dc_photos.test_photos()
    fit, held_out = (calibration.input_batches(net, photos, 16, 1, seed=s)[0]
                     for s in (0, 100))
    net.params['fc7'][0].data[...] = 0
    assert calibration.zero_layers(net) == ['fc7']
    calibration.init_layer(net, 'fc7', fit, 'gaussian')
    for batch, tol in ((fit, 1e-3), (held_out, 0.5)):
        pycaffe.set_blobs(net, batch)
        net.forward(end='fc7')
        mean, std = calibration.channel_stats(net.blobs['fc7'].data)
        assert abs(np.median(std) - 1) < tol
        assert abs(np.median(mean)) < max(tol, 0.3)


@pytest.mark.parametrize('method', ['pca', 'kmeans'])
def test_pca_and_kmeans_init(folded, method):
    definition, weights = folded
    net = calibration.load_net(definition, weights)
    batch = calibration.input_batches(net, dc_photos.test_photos(), 8, 1)[0]
    net.params['conv2'][0].data[...] = 0
    calibration.init_layer(net, 'conv2', batch, method)
    pycaffe.set_blobs(net, batch)
    net.forward(end='conv2')
    _, std = calibration.channel_stats(net.blobs['conv2'].data)
    assert np.isfinite(std).all() and abs(np.median(std) - 1) < 1e-2


def test_calibration_equalises_ratios_and_keeps_activations_finite(folded):
    definition, weights = folded
    net = calibration.load_net(definition, weights)
    batches = calibration.input_batches(net, dc_photos.test_photos(), 12, 1)
    before, after = calibration.calibrate(net, batches, log=lambda m: None)
    spread = lambda r: max(r.values()) / min(r.values()) - 1  # noqa: E731
    assert spread(before) > 0.5          # the folded net is badly scaled
    assert spread(after) < 0.05          # within a few % of each other
    pycaffe.set_blobs(net, batches[0])
    net.forward()
    for name in ('conv3', 'pool5', 'fc6', 'fc9'):
        assert np.isfinite(net.blobs[name].data).all()


def test_tool_end_to_end(folded, tmp_path):
    definition, weights = folded
    out = tmp_path / 'rescaled.caffemodel'
    r = subprocess.run(
        [sys.executable, os.path.join(ROOT, 'tools', 'rescale.py'),
         definition, '-l', weights, '-o', str(out), '--reinit', 'fc8',
         '--batch-size', '8', '--batches', '1',
         '--images'] + dc_photos.test_photos()[:4],
        capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert 'initialised fc8' in r.stdout and 'after:' in r.stdout
    spread = float(r.stdout.split('ratio spread: ')[1].split('%')[0])
    assert spread < 5
    assert out.is_file()
