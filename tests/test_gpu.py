"""The GPU build on a GPU: our kernels against Caffe's CPU ones, and the feed.

Skipped unless pycaffe is a CUDA build and a GPU answers (CI has neither;
bench/gpu_session.sh runs this file on the lent GPU machine).  Photos come
from the embedded demo set, or from the folder in
DEEPCONTEXT_TEST_IMAGES where those packages are not installed.
"""
import glob
import os
import subprocess
import sys

import numpy as np
import pytest

os.environ.setdefault('GLOG_minloglevel', '2')
import caffe  # noqa: E402
from caffe import layers as L  # noqa: E402

from deepcontext.data import batches  # noqa: E402
from deepcontext.model import nets, pycaffe  # noqa: E402
from deepcontext.train import gpufeed, multigpu  # noqa: E402
from deepcontext.model.pycaffe import cpu_only as caffe_cpu_only  # noqa: E402


def _gpu_available():
    if caffe_cpu_only():
        return False
    rt = pycaffe.cudart()
    if rt is None:
        return False
    count, err = pycaffe.cuda_device_count(rt)
    return err == 0 and count > 0


pytestmark = pytest.mark.skipif(not _gpu_available(),
                                reason='needs the CUDA build of pycaffe and '
                                       'a GPU')


def photos():
    folder = os.environ.get('DEEPCONTEXT_TEST_IMAGES')
    if folder:
        return sorted(glob.glob(os.path.join(folder, '*.jpg')))[:12]
    from deepcontext.data import photos
    return photos.test_photos()


@pytest.fixture(scope='module')
def patches():
    return batches.real_patches(photos(), 64, seed=3)


def run_net(proto_text, inputs, mode, weights=None):
    """Forward + backward on one device; returns (net, tops, bottom diffs)."""
    import tempfile
    if mode == 'gpu':
        caffe.set_mode_gpu()
    else:
        caffe.set_mode_cpu()
    with tempfile.NamedTemporaryFile('w', suffix='.prototxt') as f:
        f.write(proto_text)
        f.flush()
        net = caffe.Net(f.name, caffe.TRAIN)
    if weights:
        for name, blobs in weights.items():
            for b, w in zip(net.params[name], blobs):
                b.data[...] = w
    for name, value in inputs.items():
        net.blobs[name].reshape(*value.shape)
        net.blobs[name].data[...] = value
    net.forward()
    top = {k: v.data.copy() for k, v in net.blobs.items()}
    for k, v in net.blobs.items():
        v.diff[...] = 0
    out = list(net.outputs)[0]
    rs = np.random.RandomState(5)
    net.blobs[out].diff[...] = rs.standard_normal(net.blobs[out].shape)
    net.backward()
    diffs = {k: v.diff.copy() for k, v in net.blobs.items()}
    return net, top, diffs


def rel(a, b):
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


@pytest.mark.parametrize('shape', [(64, 384, 6, 6), (300, 4096)])
def test_batchnorm_gpu_matches_cpu(shape):
    """Our fused BatchNorm kernels (conv and fc layouts) against Caffe's CPU
    code: outputs, gradients, and the moving statistics."""
    n = caffe.NetSpec()
    n.x = L.DummyData(shape=dict(dim=list(shape)))
    n.y = L.BatchNorm(n.x, param=nets.BN_PARAMS)
    n.z = L.ReLU(n.y)        # in place after BN, as in the patch network
    text = 'force_backward: true\n' + str(n.to_proto())
    x = (np.random.RandomState(1).standard_normal(shape) * 3 + 1)
    x = x.astype(np.float32)
    _, tc, dc = run_net(text, {'x': x}, 'cpu')
    net_g, tg, dg = run_net(text, {'x': x}, 'gpu')
    assert rel(tg['y'], tc['y']) < 1e-5
    assert rel(dg['x'], dc['x']) < 1e-5
    assert np.isfinite(dg['x']).all()
    net_c, _, _ = run_net(text, {'x': x}, 'cpu')
    for i in range(3):
        assert rel(net_g.params['y'][i].data, net_c.params['y'][i].data) \
            < 1e-5


def test_batch_reindex_gpu_matches_cpu():
    """BatchReindex backward (with its kept inverse index), twice with
    different permutations, against the CPU."""
    rs = np.random.RandomState(2)
    x = rs.standard_normal((40, 100)).astype(np.float32)
    n = caffe.NetSpec()
    n.x = L.DummyData(shape=dict(dim=[40, 100]))
    n.p = L.DummyData(shape=dict(dim=[2]))
    # a learned scale in front and a loss weight behind, so gradients reach
    # x1 and never the index (force_backward would force them into the
    # index, which Caffe refuses)
    n.x1 = L.Scale(n.x, scale_param=dict(filler=dict(value=1)))
    n.y = L.BatchReindex(n.x1, n.p, loss_weight=1)
    text = str(n.to_proto())
    for size in (150, 90):
        perm = rs.randint(0, 40, size).astype(np.float32)
        _, tc, dc = run_net(text, {'x': x, 'p': perm}, 'cpu')
        _, tg, dg = run_net(text, {'x': x, 'p': perm}, 'gpu')
        np.testing.assert_array_equal(tg['y'], tc['y'])
        assert np.abs(dc['x1']).max() > 0
        assert rel(dg['x1'], dc['x1']) < 1e-6


class FakeLoader:
    """BatchLoader's get/release over fixed batches, in plain numpy buffers
    (GpuFeed page-locks whatever memory it is given; the real loader's is
    shared memory)."""

    class Batch:
        def __init__(self, data, pairs, labels, worker, slot):
            self.data, self.pairs, self.labels = data, pairs, labels
            self.worker, self.slot, self.queued = worker, slot, 0

    def __init__(self, batches):
        self.buffers = [[np.zeros((64, 3, 96, 96), np.float32)
                         for _ in batches]]
        self.batches = batches
        self.i = 0
        self.released = []

    def get(self, timeout=None):
        slot = self.i % len(self.batches)
        data, pairs, labels = self.batches[slot]
        buf = self.buffers[0][slot]
        buf[:len(data)] = data
        self.i += 1
        return self.Batch(buf[:len(data)], pairs, labels, 0, slot)

    def release(self, batch):
        self.released.append(batch.slot)


def test_feed_delivers_the_loader_bytes(tmp_path, patches):
    """GpuFeed: the net sees exactly the bytes the loader wrote, batch after
    batch of different sizes, and each buffer goes back to the loader."""
    caffe.set_mode_gpu()
    nets.write_nets(str(tmp_path), batch_size=64)
    net = caffe.Net(str(tmp_path / 'network.prototxt'), caffe.TRAIN)
    rs = np.random.RandomState(0)
    fed = []
    for n in (60, 48, 63):
        pairs = np.stack([np.arange(n - 1), np.arange(1, n)], 1)
        fed.append((patches[:n] * rs.uniform(.5, 2), pairs,
                    rs.randint(0, 8, n - 1)))
    loader = FakeLoader(fed)
    feed = gpufeed.GpuFeed(net, loader, 64)
    try:
        for k in range(5):
            feed.next()
            data, pairs, labels = fed[k % 3]
            got = net.blobs['data'].data      # device -> host copy
            assert got.shape == data.shape
            np.testing.assert_array_equal(got, data)
            np.testing.assert_array_equal(net.blobs['select2'].data,
                                          pairs[:, 1])
            np.testing.assert_array_equal(net.blobs['label'].data, labels)
            net.forward()
            assert np.isfinite(pycaffe.loss(net))
        assert loader.released == [0, 1, 2, 0, 1]
    finally:
        feed.close()
    assert loader.released == [0, 1, 2, 0, 1, 2]
    assert feed.registered == set()


def test_gpu_pass_matches_cpu(tmp_path, patches):
    """The patch network's forward and backward pass on the GPU (cuDNN, our
    BatchNorm and BatchReindex kernels, fp32) against the CPU, same weights.

    Activations agree to fp32 rounding (~1e-5 after 30 layers).  Gradients
    agree to ~3e-3 only: a ReLU whose input is within rounding of 0 passes
    the gradient on one device and blocks it on the other, and those flips
    add up; fc9's gradient, before any ReLU, agrees to ~1e-5.
    """
    os.environ['CAFFE_TF32'] = '0'
    path = nets.write_nets(str(tmp_path), batch_size=64, debug_info=False)[0]
    rs = np.random.RandomState(4)
    pairs = np.stack([np.arange(63), np.arange(1, 64)], 1)
    labels = rs.randint(0, 8, 63)
    (data_c, _, grad_c), (data_g, _, grad_g) = pycaffe.pass_on_devices(
        path, patches, pairs, labels)
    for k in data_c:
        assert rel(data_g[k], data_c[k]) < 1e-4, (k, rel(data_g[k],
                                                         data_c[k]))
    assert rel(grad_g['fc9'], grad_c['fc9']) < 1e-4
    for k in grad_c:
        if k.startswith('bn'):        # statistics, not learned
            continue
        assert np.abs(grad_c[k]).max() > 0, k
        assert rel(grad_g[k], grad_c[k]) < 2e-2, (k, rel(grad_g[k],
                                                         grad_c[k]))


_TRAIN_20 = r'''
import os, sys
import numpy as np
import caffe
from deepcontext.data import batches
from deepcontext.model import nets, pycaffe, solver
from deepcontext.train import multigpu
out, mode, init = sys.argv[1], sys.argv[2], sys.argv[3]
photo_list = sys.argv[4:]
os.environ['CAFFE_TF32'] = '0'
data = batches.real_patches(photo_list, 64, seed=3)
rs = np.random.RandomState(0)
pairs = np.stack([np.arange(63), np.arange(1, 64)], 1)
labels = [rs.randint(0, 8, 63) for _ in range(20)]
def params(net):
    return {'%s/%d' % (n, i): b.data for n, blobs in net.params.items()
            for i, b in enumerate(blobs)}
nets.write_nets(out, batch_size=64, debug_info=False)
path = solver.write_solver(os.path.join(out, 'solver.prototxt'),
                           solver.gen_solver(out, base_lr=1e-4, momentum=0.9,
                                             gpu=True))
if mode == 'nccl':
    me = multigpu.plan_ranks([0])[0]
    multigpu.set_rank_device(me)
else:
    pycaffe.set_mode(0)
s = caffe.get_solver(path)
if os.path.exists(init):
    saved = np.load(init)
    for name, blobs in s.net.params.items():
        for i, b in enumerate(blobs):
            b.data[...] = saved['%s/%d' % (name, i)]
else:
    np.savez(init, **params(s.net))
if mode == 'nccl':
    multigpu.join_nccl(s, me, caffe.NCCL.new_uid())
for step in range(20):
    pycaffe.set_inputs(s.net, data, pairs, labels[step])
    s.step(1)
np.savez(os.path.join(out, 'after.npz'), **params(s.net))
'''


@pytest.mark.skipif(not multigpu.has_nccl(),
                    reason='pycaffe built without NCCL')
def test_one_nccl_rank_trains_as_the_plain_gpu_solver(tmp_path):
    """Issue 15: the NCCL path with one rank (set_rank_device, bcast, the
    gradient callback) gives the weights of the plain GPU solver after 20
    SGD steps.  cuDNN's backward algorithms may add in any order, so two
    plain runs differ slightly too; the NCCL run may differ from the plain
    one by no more than ten times that (or 1e-6 relative)."""
    init = str(tmp_path / 'init.npz')
    after = {}
    for run, mode in (('plain', 'plain'), ('plain2', 'plain'),
                      ('nccl', 'nccl')):
        folder = tmp_path / run
        folder.mkdir()
        subprocess.run([sys.executable, '-c', _TRAIN_20, str(folder), mode,
                        init] + photos(), check=True, timeout=600)
        after[run] = np.load(str(folder / 'after.npz'))
    names = sorted(after['plain'].files)
    moved = rel(after['plain']['conv1/0'], np.load(init)['conv1/0'])
    assert moved > 1e-4, 'the 20 steps did not move the weights'
    noise = max(rel(after['plain2'][k], after['plain'][k]) for k in names)
    diff = max(rel(after['nccl'][k], after['plain'][k]) for k in names)
    print('20 steps: weights moved %.3g; plain vs plain %.3g; nccl vs plain '
          '%.3g (max relative, over blobs)' % (moved, noise, diff))
    assert diff <= max(10 * noise, 1e-6), (diff, noise)


def test_a_gpu_id_past_the_last_is_one_line(tmp_path):
    """gpu = N on a machine showing N devices: one line and status 1 from
    train.py, where Caffe would abort ('invalid device ordinal')."""
    from conftest import TRAIN
    n, _ = pycaffe.cuda_device_count()
    cfg = tmp_path / 'config.py'    # photos(): the bundle has no skimage
    cfg.write_text('out_dir = %r\nimages = %r\ngpu = %d\n'
                   % (str(tmp_path), photos(), n))
    r = subprocess.run([sys.executable, TRAIN, '--config', str(cfg)],
                       cwd=tmp_path, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 1, r.stderr
    assert r.stderr.strip().startswith(
        'deepcontext: gpu=%d requested, but this machine shows %d CUDA '
        'device' % (n, n)), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
