"""Shared fixtures: a real BatchNorm snapshot of the patch network."""
import os

import numpy as np
import pytest

os.environ.setdefault('GLOG_minloglevel', '2')
import caffe  # noqa: E402

from deepcontext import demo_data, nets, netio, solver, surgery  # noqa: E402


@pytest.fixture(scope='session')
def bn_snapshot(tmp_path_factory):
    """(network.prototxt, network_no_bn.prototxt, caffemodel) after 4 SGD
    steps on real patches, so the BatchNorm statistics are real."""
    out = str(tmp_path_factory.mktemp('bn_snapshot'))
    nets.write_nets(out, batch_size=24)
    path = solver.write_solver(os.path.join(out, 'solver.prototxt'),
                               solver.gen_solver(out, base_lr=1e-3))
    caffe.set_mode_cpu()
    caffe.set_random_seed(0)   # the same fillers, so the same snapshot
    s = caffe.get_solver(path)
    data = surgery.real_patches(demo_data.test_photos(), 24, seed=1)
    rs = np.random.RandomState(0)
    pairs = np.stack([np.arange(23), np.arange(1, 24)], 1)
    for _ in range(4):
        netio.set_inputs(s.net, data, pairs, rs.randint(0, 8, 23))
        s.step(1)
    model = os.path.join(out, 'model.caffemodel')
    s.net.save(model)
    return (os.path.join(out, 'network.prototxt'),
            os.path.join(out, 'network_no_bn.prototxt'), model)
