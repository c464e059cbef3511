"""Shared test helpers: a real BatchNorm snapshot, and running train.py."""
import os
import subprocess
import sys

import numpy as np
import pytest

os.environ.setdefault('GLOG_minloglevel', '2')
import caffe  # noqa: E402

from deepcontext.data import batches, photos  # noqa: E402
from deepcontext.eval import features, neighbours  # noqa: E402
from deepcontext.model import nets, pycaffe, solver  # noqa: E402


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
    data = batches.real_patches(photos.test_photos(), 24, seed=1)
    rs = np.random.RandomState(0)
    pairs = np.stack([np.arange(23), np.arange(1, 24)], 1)
    for _ in range(4):
        pycaffe.set_inputs(s.net, data, pairs, rs.randint(0, 8, 23))
        s.step(1)
    model = os.path.join(out, 'model.caffemodel')
    s.net.save(model)
    return (os.path.join(out, 'network.prototxt'),
            os.path.join(out, 'network_no_bn.prototxt'), model)


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(ROOT, 'train.py')


def write_config(tmp_path, **extra):
    (tmp_path / 'out').mkdir(exist_ok=True)
    settings = dict(out_dir=str(tmp_path / 'out'), batch_size=48,
                    loader_workers=2, queue_size=1, snapshot_every=10,
                    stats_every=5, resume='yes')
    settings.update(extra)
    lines = ['from deepcontext.data import photos as _d',
             'images = _d.test_photos()']
    lines += ['%s = %r' % kv for kv in settings.items()]
    path = tmp_path / 'deepcontext_config.py'
    path.write_text('\n'.join(lines) + '\n')
    return str(path)


def processes_with(marker):
    """PIDs of live processes whose command line mentions marker."""
    found = []
    for pid in os.listdir('/proc'):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            with open('/proc/%s/cmdline' % pid, 'rb') as f:
                cmd = f.read().decode(errors='replace')
            with open('/proc/%s/stat' % pid) as f:
                zombie = f.read().split(') ')[1].startswith('Z')
        except OSError:
            continue
        if marker in cmd and not zombie:
            found.append(int(pid))
    return found


def run_train(tmp_path, cfg, *args, timeout=600):
    env = dict(os.environ, GLOG_minloglevel='1')
    return subprocess.run([sys.executable, TRAIN, '--config', cfg] +
                          list(args), cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=timeout)


# ---- evaluation: a trained snapshot, held-out photos, the tools
BN_EPS = 1e-5   # Caffe's BatchNorm default, as in gen_net


def held_out(n):
    """Test photos the bn_snapshot fixture never trained on."""
    return photos.test_photos()[4:4 + n]


@pytest.fixture(scope='module')
def trained(bn_snapshot):
    return features.load_net(bn_snapshot[2])


@pytest.fixture(scope='module')
def patches():
    return neighbours.sample_patches(held_out(3), per_image=4, seed=0)


def run_tool(name, *args):
    r = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', name)]
                       + [str(a) for a in args], capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout
