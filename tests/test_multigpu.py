"""Multi-GPU data parallelism (deepcontext/train/multigpu.py) on the CPU.

The pure parts (rank plan, seeds, BatchNorm averaging) are checked against
hand computations.  The group's control (pause, quit, a rank's death,
BatchNorm averaging before a snapshot) runs real processes, each with a
real pycaffe SGD solver on a tiny net in CPU mode: the CPU STAND-IN for
an NCCL group.  These ranks do not exchange gradients (no NCCL in the CPU
build); what they share is what the launcher coordinates.
"""
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import caffe
from caffe import layers as L
from caffe.proto import caffe_pb2

from conftest import (PAUSED_RUN, TRAIN, processes_with, run_driver,
                      write_config)
from deepcontext import config as dc_config
from deepcontext.data.loader import child_pids
from deepcontext.model import pycaffe
from deepcontext.train import multigpu as mg
from deepcontext.train import snapshots, trainer


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


# ---- train.py with gpus = [0, 1]: the CPU stand-in group (no NCCL) ----
# DEEPCONTEXT_CPU_GROUP=1 (multigpu.CPU_STAND_IN) is a test-only switch:
# each rank is a real Trainer on the CPU, with its own loaders, but the
# ranks exchange no gradients.  What is tested is the group's plumbing.

STAND_IN = {mg.CPU_STAND_IN: '1', 'GLOG_minloglevel': '1'}


def group_config(tmp_path, **extra):
    settings = dict(gpus=[0, 1], snapshot_every=2, stats_every=2,
                    batch_size=32)
    settings.update(extra)
    return write_config(tmp_path, **settings)


def start_train(tmp_path, cfg, *args):
    return subprocess.Popen([sys.executable, TRAIN, '--config', cfg] +
                            list(args), cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env=dict(os.environ, **STAND_IN))


def wait_for_log(p, log, text, timeout=120):
    t0 = time.time()
    while not (log.exists() and text in log.read_text()):
        assert time.time() - t0 < timeout and p.poll() is None, \
            p.stderr.read() if p.poll() is not None else 'timeout'
        time.sleep(0.1)


def test_loader_seeds_of_each_rank(tmp_path):
    cfg = dc_config.resolve(dict(images='x', out_dir=str(tmp_path),
                                 loader_workers=3, seed=500))
    one_gpu = trainer.loader_seeds(cfg, str(tmp_path))
    assert one_gpu == [500, 501, 502]
    assert trainer.loader_seeds(cfg, str(tmp_path), 0) == one_gpu
    both = one_gpu + trainer.loader_seeds(cfg, str(tmp_path), 1)
    assert len(set(both)) == 6


def test_gpus_config_refusals(tmp_path):
    # no GPU for the last case: the CPU-only build refuses gpus; the CUDA
    # one finds no device under CUDA_VISIBLE_DEVICES='' (before any rank)
    no_gpu = ('CPU-only build' if pycaffe.cpu_only() else
              'gpus=[0, 1] requested, but GPU 0: no ')
    env = dict(os.environ, CUDA_VISIBLE_DEVICES='')
    for extra, says in ((dict(gpu=0, gpus=[0, 1]), "set 'gpu' or 'gpus'"),
                        (dict(gpus=[0, 0]), 'lists a device twice'),
                        (dict(gpus=[0, 1]), no_gpu)):
        cfg = write_config(tmp_path, **extra)
        r = subprocess.run([sys.executable, TRAIN, '--config', cfg],
                           cwd=tmp_path, capture_output=True, text=True,
                           timeout=120, env=env)
        assert r.returncode == 1, r.stderr[-2000:]
        assert r.stderr.count('\n') == 1 and says in r.stderr, r.stderr
        assert 'Traceback' not in r.stderr


def test_group_rank0_writes_the_outputs_and_resumes(tmp_path):
    cfg = group_config(tmp_path)
    p = start_train(tmp_path, cfg, '--max-iter', '2')
    _, err = p.communicate(timeout=120)
    assert p.returncode == 0, err[-2000:]
    outdir = tmp_path / 'out' / 'train_out'
    text = (outdir / 'out.log').read_text()
    # one line per iteration: rank 1 trained silently
    assert [int(i) for i in re.findall(r'Iteration (\d+), norm_loss',
                                       text)] == [0, 1]
    assert 'averaged over 2 ranks' in text and 'max_iter at iteration 2' \
        in text
    assert snapshots.complete(str(outdir)) == [2]
    assert sorted(os.listdir(outdir)) == sorted(
        ['config.json', 'intval.npy', 'network.prototxt',
         'network_no_bn.prototxt', 'nrm.npy', 'out.log', 'solver.prototxt',
         'stats.json', 'model_iter_2.caffemodel', 'model_iter_2.complete',
         'model_iter_2.solverstate'])
    assert not [f for f in os.listdir(tmp_path) if 'deepcontext-group' in f]
    # the group resumes, every rank from rank 0's newest pair
    p = start_train(tmp_path, cfg, '--max-iter', '4')
    _, err = p.communicate(timeout=120)
    assert p.returncode == 0, err[-2000:]
    text = (outdir / 'out.log').read_text()
    assert 'training from iteration 2' in text
    assert snapshots.complete(str(outdir)) == [2, 4]
    assert processes_with(cfg) == []


GROUP_PAUSE_DRIVER = PAUSED_RUN + '''
g = ns['trainer'].group
it1 = list(g.state.done)
print('PAUSED', it1, ns['solver'], all(p.is_alive() for p in g.procs),
      flush=True)
open('train_pause', 'w').close()
exec(code, ns)                                   # continue
print('CONTINUED', list(g.state.done), ns['trainer'].group is g, flush=True)
open('train_quit', 'w').close()
exec(code, ns)                                   # quit: exits
print('NOT REACHED', flush=True)
'''


def test_group_pause_continue_quit_in_one_interpreter(tmp_path):
    cfg = group_config(tmp_path, snapshot_every=1000)
    r = run_driver(tmp_path, GROUP_PAUSE_DRIVER, cfg, timeout=300,
                   **STAND_IN)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    paused = re.search(r'PAUSED \[(\d+), (\d+)\] None True', r.stdout)
    assert paused and paused.group(1) == paused.group(2), r.stdout[-3000:]
    cont = re.search(r'CONTINUED \[(\d+), (\d+)\] True', r.stdout)
    assert cont and cont.group(1) == cont.group(2)
    assert int(cont.group(1)) > int(paused.group(1))
    assert 'NOT REACHED' not in r.stdout
    log = (tmp_path / 'out' / 'train_out' / 'out.log').read_text()
    assert 'paused at iteration' in log and 'quit at iteration' in log
    assert processes_with(cfg) == []
    assert not os.path.exists(tmp_path / 'train_quit')


def run_and_interrupt(tmp_path, cfg, interrupt):
    """train.py with the group; interrupt(p) once rank 0 logged a step.
    Returns (exit status, stderr, out.log's text)."""
    p = start_train(tmp_path, cfg)
    log = tmp_path / 'out' / 'train_out' / 'out.log'
    try:
        wait_for_log(p, log, 'Iteration 0, norm_loss')
        interrupt(p)
        _, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    return p.returncode, err, log.read_text()


def test_group_sigterm_quits_every_rank(tmp_path):
    cfg = group_config(tmp_path, snapshot_every=1000)
    code, err, log = run_and_interrupt(
        tmp_path, cfg, lambda p: p.send_signal(signal.SIGTERM))
    assert code == 128 + signal.SIGTERM, err[-2000:]
    assert re.search(r'quit at iteration \d+', log)
    assert processes_with(cfg) == []


def children(pid, marker):
    """Live processes mentioning marker whose parent is pid, oldest first."""
    return [c for c in child_pids(pid) if c in processes_with(marker)]


def kill_rank1(p):
    ranks = children(p.pid, p.args[3])     # the launcher's, forked in order
    assert len(ranks) == 2, ranks
    os.kill(ranks[1], signal.SIGKILL)


def kill_rank1_loaders(p):
    ranks = children(p.pid, p.args[3])
    assert len(ranks) == 2, ranks
    for pid in children(ranks[1], p.args[3]):
        os.kill(pid, signal.SIGKILL)


def test_group_a_dead_rank_stops_train_py(tmp_path):
    cfg = group_config(tmp_path, snapshot_every=1000)
    code, err, _ = run_and_interrupt(tmp_path, cfg, kill_rank1)
    assert code == 1, err[-2000:]
    assert re.search(r'rank 1 \(GPU 1\) ended with signal 9 at iteration '
                     r'\d+: stopped the group', err), err[-2000:]
    assert 'Traceback' not in err
    assert processes_with(cfg) == []


def test_group_dead_loaders_of_one_rank_stop_the_group(tmp_path):
    cfg = group_config(tmp_path, snapshot_every=1000, loader_restarts=0)
    code, err, log = run_and_interrupt(tmp_path, cfg, kill_rank1_loaders)
    assert code == 1, err[-2000:]
    assert 'rank 1: stopped at iteration' in err
    assert re.search(r'stopped at iteration \d+', log)
    assert 'Traceback' not in err
    assert processes_with(cfg) == []


def test_group_divergence_from_a_shell_exits_3(tmp_path):
    cfg = group_config(tmp_path, base_lr=1000.0, snapshot_every=1000,
                       max_iter=200, stats_every=5)
    p = start_train(tmp_path, cfg)
    _, err = p.communicate(timeout=300)
    assert p.returncode == 3, err[-2000:]
    log = (tmp_path / 'out' / 'train_out' / 'out.log').read_text()
    assert 'look broken' in log and 'diverged at iteration' in log
    assert processes_with(cfg) == []
