"""Tests for deepcontext/train/monitor.py: norms and the divergence checks."""
import json
import math

import caffe
import numpy as np
from caffe import layers as L, NetSpec

from deepcontext.model import pycaffe
from deepcontext.train import monitor


def test_quiet_history_raises_nothing():
    norms = {'conv1': [1.0, 1.1, 1.2], 'fc6': [0.5, 0.4]}
    assert monitor.check_divergence(norms, 500, 3.0, 0.1) == []


def test_tenfold_update_is_judged_only_after_100_steps():
    norms = {'conv3': [1.0, 10.5]}
    assert monitor.check_divergence(norms, 100, 0.0, 0.0) == []
    problems = monitor.check_divergence(norms, 101, 0.0, 0.0)
    assert len(problems) == 1 and 'conv3' in problems[0]
    # exactly ten times is not "more than ten times"
    assert monitor.check_divergence({'conv3': [1.0, 10.0]}, 101, 0, 0) == []


def test_nan_is_caught_from_the_first_point():
    """A NaN update norm stops the run even on its first record."""
    problems = monitor.check_divergence({'fc7': [math.nan]}, 0, 0.0, 0.0)
    assert len(problems) == 1 and 'fc7' in problems[0]


def test_fc8_and_pool1_limits():
    assert monitor.check_divergence({}, 0, 1e10, 1e8) == []
    assert len(monitor.check_divergence({}, 0, 1.1e10, 0.0)) == 1
    assert len(monitor.check_divergence({}, 0, math.nan, 0.0)) == 1
    assert len(monitor.check_divergence({}, 0, 0.0, 1.1e8)) == 1
    assert len(monitor.check_divergence({}, 0, 0.0, math.nan)) == 1


def _tiny_net():
    n = NetSpec()
    n.data = L.DummyData(shape=dict(dim=[2, 3]))
    n.fc6 = L.InnerProduct(n.data, num_output=4,
                           weight_filler=dict(type='xavier'))
    n.bn6 = L.BatchNorm(n.fc6)
    caffe.set_mode_cpu()
    return pycaffe.net_from_param(n.to_proto(), 'train')


def test_param_stats_record_norms_against_numpy(tmp_path):
    net = _tiny_net()
    assert monitor.tracked_params(net) == ['fc6']
    stats = monitor.ParamStats(monitor.tracked_params(net))
    w0 = net.params['fc6'][0].data.astype(np.float64).copy()
    stats.update(net, 0)
    net.params['fc6'][0].data[...] += 0.5
    stats.update(net, 100)
    assert np.isclose(stats.param_norms['fc6'][0], np.linalg.norm(w0))
    assert np.isclose(stats.param_norms['fc6'][1], np.linalg.norm(w0 + 0.5))
    assert np.isclose(stats.update_norms['fc6'][0], 0.5 * math.sqrt(w0.size))
    stats.save(str(tmp_path))
    saved = json.loads((tmp_path / 'stats.json').read_text())
    assert saved['iter'] == [0, 100]
    assert saved['intval']['fc6'] == stats.update_norms['fc6']
    old = np.load(str(tmp_path / 'nrm.npy'), allow_pickle=True).item()
    assert old == stats.param_norms
