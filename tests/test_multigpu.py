"""Multi-GPU data parallelism (deepcontext/train/multigpu.py) on the CPU.

The pure parts (rank plan, seeds, BatchNorm averaging) are checked against
hand computations.  The group's control (pause, quit, a rank's death,
BatchNorm averaging before a snapshot) runs real processes, each with a
real pycaffe SGD solver on a tiny net in CPU mode: the CPU STAND-IN for
an NCCL group.  These ranks do not exchange gradients (no NCCL in the CPU
build); what they share is what the launcher coordinates.
"""
import os
import signal
import time

import numpy as np
import pytest

import caffe
from caffe import layers as L
from caffe.proto import caffe_pb2

from deepcontext.train import multigpu as mg


def test_plan_ranks_node_major():
    ranks = mg.plan_ranks([2, 3], node=1, nodes=3)
    assert [(r.rank, r.local_rank, r.gpu, r.world_size) for r in ranks] == \
        [(2, 0, 2, 6), (3, 1, 3, 6)]
    assert mg.plan_ranks([0])[0] == mg.Rank(0, 0, 0, 1, 0)
    for bad in ([], [0, 0], [-1], [True], ['0']):
        with pytest.raises(ValueError):
            mg.plan_ranks(bad)
    with pytest.raises(ValueError):
        mg.plan_ranks([0], node=2, nodes=2)


def test_rank_seeds_distinct_and_rank0_as_one_gpu():
    seeds = [mg.rank_seeds(1000, r, 3) for r in range(8)]
    assert seeds[0] == [1000, 1001, 1002]     # trainer.loader_seeds
    flat = [s for rank in seeds for s in rank]
    assert len(set(flat)) == len(flat) == 24


def test_average_bn_stats_by_hand():
    # rank 0: means (1, 2), variances (4, 6), factor 2 -> sums (2, 4), (8, 12)
    # rank 1: means (3, 6), variances (2, 2), factor 1
    r0 = {'bn1': [np.array([2., 4.], np.float32),
                  np.array([8., 12.], np.float32), np.array([2.], np.float32)]}
    r1 = {'bn1': [np.array([3., 6.], np.float32),
                  np.array([2., 2.], np.float32), np.array([1.], np.float32)]}
    # averages: means (2, 4), variances (3, 4); stored with rank 0's factor 2
    out = mg.average_bn_stats([r0, r1])['bn1']
    np.testing.assert_array_equal(out[0], [4., 8.])
    np.testing.assert_array_equal(out[1], [6., 8.])
    np.testing.assert_array_equal(out[2], [2.])
    assert out[0].dtype == np.float32
    # a rank without a step (factor 0) has no statistics: left out
    r2 = {'bn1': [np.zeros(2, np.float32), np.zeros(2, np.float32),
                  np.zeros(1, np.float32)]}
    out = mg.average_bn_stats([r0, r1, r2])['bn1']
    np.testing.assert_array_equal(out[0], [4., 8.])


# ---- the CPU stand-in group: tiny real solvers in forked processes ----

def tiny_solver(tmp_path, rank):
    """A real SGD solver on a tiny net with a BatchNorm layer; inputs from
    DummyData (gaussian, seeded per rank), so each rank sees other data."""
    n = caffe.NetSpec()
    n.data = L.DummyData(shape=dict(dim=[4, 2, 3, 3]),
                         data_filler=dict(type='gaussian', std=1.0 + rank))
    n.label = L.DummyData(shape=dict(dim=[4]),
                          data_filler=dict(type='constant', value=1))
    n.conv = L.Convolution(n.data, num_output=3, kernel_size=2,
                           weight_filler=dict(type='xavier'))
    n.bn = L.BatchNorm(n.conv)
    n.fc = L.InnerProduct(n.bn, num_output=2,
                          weight_filler=dict(type='xavier'))
    n.loss = L.SoftmaxWithLoss(n.fc, n.label)
    net_path = tmp_path / ('net-%d.prototxt' % rank)
    net_path.write_text(str(n.to_proto()))
    s = caffe_pb2.SolverParameter()
    s.net = str(net_path)
    s.type = 'SGD'
    s.base_lr = 0.01
    s.lr_policy = 'fixed'
    s.max_iter = 100000
    s.snapshot_prefix = str(tmp_path / 'snap')
    s.solver_mode = s.CPU
    path = tmp_path / ('solver-%d.prototxt' % rank)
    path.write_text(str(s))
    caffe.set_mode_cpu()
    caffe.set_random_seed(17 + rank)
    return caffe.get_solver(str(path))


def stand_in_target(tmp_path, snapshot_every=None, max_iter=None,
                    step_sleep=0.0, die_at=None):
    def target(me, group):
        solver = tiny_solver(tmp_path, me.rank)

        def feed():
            time.sleep(step_sleep)
            if die_at is not None and me.rank == 1 and \
                    solver.iter >= die_at:
                os.kill(os.getpid(), signal.SIGKILL)
        snapshot = None
        if me.rank == 0:        # rank 0 alone writes snapshots
            def snapshot(it):
                solver.snapshot()
        code = mg.rank_loop(solver, feed, group, me, snapshot=snapshot,
                            snapshot_every=snapshot_every,
                            max_iter=max_iter)
        np.savez(str(tmp_path / ('end-%d.npz' % me.rank)),
                 iter=solver.iter, **{'bn%d' % i: b.data for i, b in
                                      enumerate(solver.net.params['bn'])})
        return code
    return target


def group_of(tmp_path, target, world=2):
    return mg.Group(target, mg.plan_ranks(list(range(world))), 0,
                    folder=str(tmp_path), workdir=str(tmp_path),
                    grace=5).start()


def ends(tmp_path, world=2):
    return [np.load(str(tmp_path / ('end-%d.npz' % r))) for r in range(world)]


def wait_for(cond, timeout=60):
    t0 = time.time()
    while not cond():
        assert time.time() - t0 < timeout
        time.sleep(0.05)


def test_group_pause_resume_quit_stop_every_rank_at_one_iteration(tmp_path):
    g = group_of(tmp_path, stand_in_target(tmp_path, step_sleep=0.01))
    wait_for(lambda: min(g.state.done) >= 3)
    (tmp_path / 'train_pause').touch()
    assert g.run() == 'paused'
    paused_at = list(g.state.done)
    assert paused_at[0] == paused_at[1] >= 4
    assert all(p.is_alive() for p in g.procs)      # ranks wait, live
    time.sleep(0.3)
    assert list(g.state.done) == paused_at          # and take no step
    (tmp_path / 'train_quit').touch()
    assert g.run() == 'quit'                        # resumed, then quit
    a, b = ends(tmp_path)
    assert int(a['iter']) == int(b['iter']) > paused_at[0]
    assert all(p.exitcode == 0 for p in g.procs)
    assert not (tmp_path / 'train_quit').exists()


def test_bn_statistics_averaged_before_each_snapshot(tmp_path):
    g = group_of(tmp_path, stand_in_target(tmp_path, snapshot_every=3,
                                           max_iter=6))
    assert g.run() == 'max_iter'
    a, b = ends(tmp_path)
    assert int(a['iter']) == int(b['iter']) == 6
    for i in range(3):          # the same statistics on every rank
        np.testing.assert_array_equal(a['bn%d' % i], b['bn%d' % i])
    # rank 0 alone wrote the snapshots, with the averaged statistics
    assert sorted(f for f in os.listdir(tmp_path)
                  if f.endswith('.caffemodel')) == [
        'snap_iter_3.caffemodel', 'snap_iter_6.caffemodel']
    net = caffe.Net(str(tmp_path / 'net-0.prototxt'),
                    str(tmp_path / 'snap_iter_6.caffemodel'), caffe.TEST)
    np.testing.assert_array_equal(net.params['bn'][0].data, a['bn0'])
    assert not [f for f in os.listdir(tmp_path) if f.startswith('bn-')]


def test_without_averaging_the_ranks_statistics_drift(tmp_path):
    """What BVLC's group does (issue 5927): each rank's own statistics."""
    g = group_of(tmp_path, stand_in_target(tmp_path, max_iter=6))
    assert g.run() == 'max_iter'
    a, b = ends(tmp_path)
    assert not np.array_equal(a['bn1'], b['bn1'])


def test_a_rank_that_dies_stops_the_group(tmp_path):
    g = group_of(tmp_path, stand_in_target(tmp_path, step_sleep=0.01,
                                           die_at=3), world=3)
    with pytest.raises(mg.GroupError, match=r'rank 1 \(GPU 1\) ended with '
                       r'signal 9 at iteration 3: stopped the group'):
        g.run()
    assert all(p.exitcode is not None for p in g.procs)   # no orphans
    for p in g.procs:
        with pytest.raises(ProcessLookupError):
            os.kill(p.pid, 0)
