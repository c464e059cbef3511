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
    _, net = calibration.load_net(definition, weights)
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
    _, net = calibration.load_net(definition, weights)
    batch = calibration.input_batches(net, dc_photos.test_photos(), 8, 1)[0]
    net.params['conv2'][0].data[...] = 0
    calibration.init_layer(net, 'conv2', batch, method)
    pycaffe.set_blobs(net, batch)
    net.forward(end='conv2')
    _, std = calibration.channel_stats(net.blobs['conv2'].data)
    assert np.isfinite(std).all() and abs(np.median(std) - 1) < 1e-2


def test_calibration_equalises_ratios_and_keeps_the_function(folded):
    definition, weights = folded
    netdef, net = calibration.load_net(definition, weights)
    batches = calibration.input_batches(net, dc_photos.test_photos(), 24, 1)
    held_out = calibration.input_batches(net, dc_photos.test_photos(), 24, 1,
                                         seed=50)[0]
    before = calibration.record(net, held_out)
    net, report = calibration.calibrate(net, netdef, batches, tolerance=0.1,
                                        draws=8, check_draws=24,
                                        log=lambda m: None)
    assert calibration.spread(report['before']) > 0.5   # badly scaled
    # an independent measurement (fresh seed) agrees within 10%
    assert report['converged'] and report['spread'] < 0.1, report['spread']
    # LRN changed: its alpha follows the square of its input's scale
    alphas = {n: p.alpha for n, p in calibration.lrn_params(netdef).items()}
    scales, _, lrn_in = calibration.propagate_scales(net, report['factors'])
    for name in ('norm1', 'norm2'):
        assert abs(lrn_in[name] - 1) > 0.01
        assert np.isclose(alphas[name] * lrn_in[name] ** 2, 1e-4, rtol=1e-5)
    # every blob, on held-out patches, is the original times its scale
    for blob, (s, dev) in calibration.check_function(
            net, held_out, before, report['factors']).items():
        assert dev < 1e-4, (blob, s, dev)
    assert report['head_scales']['fc9'] == pytest.approx(1, rel=1e-6)


def test_nan_weights_are_refused(folded):
    definition, weights = folded
    netdef, net = calibration.load_net(definition, weights)
    net.params['conv4'][0].data[0, 0, 0, 0] = np.nan
    batches = calibration.input_batches(net, dc_photos.test_photos(), 8, 1)
    with pytest.raises(calibration.CalibrationError, match='conv4'):
        calibration.calibrate(net, netdef, batches, log=lambda m: None)


def run_tool(definition, weights, out, *extra):
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, 'tools', 'rescale.py'),
         definition, '-l', weights, '-o', str(out), '--batch-size', '24',
         '--batches', '1', '--images'] + dc_photos.test_photos()[:6] +
        list(extra), capture_output=True, text=True, timeout=600)


def test_tool_end_to_end(folded, tmp_path):
    definition, weights = folded
    out = tmp_path / 'rescaled.caffemodel'
    r = run_tool(definition, weights, out, '--reinit', 'fc8')
    assert r.returncode == 0, r.stdout + r.stderr
    assert 'initialised fc8' in r.stdout and 'relative deviation' in r.stdout
    assert out.is_file() and (tmp_path / 'rescaled.prototxt').is_file()
    # the written pair loads and matches the table's ratios
    net = caffe.Net(str(tmp_path / 'rescaled.prototxt'), str(out), caffe.TEST)
    assert np.isfinite(net.params['conv3'][0].data).all()


def test_tool_refuses_to_write_when_not_converged(folded, tmp_path):
    definition, weights = folded
    out = tmp_path / 'rescaled.caffemodel'
    r = run_tool(definition, weights, out, '--rounds', '0')
    assert r.returncode == 1
    assert 'NOT CONVERGED' in r.stderr and 'Traceback' not in r.stderr
    assert not out.exists()
