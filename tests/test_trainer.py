"""The training workflow end to end: real pycaffe, real photos, on the CPU.

Short runs with small batches: a snapshot, quit and resume with identical
weights, pause and continue in one interpreter, signals, and no process or
file left behind.
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

from conftest import (PAUSED_RUN, TRAIN, processes_with, run_driver,
                      run_train, write_config)
from deepcontext import config as dc_config
from deepcontext.train import snapshots, trainer


def norm_losses(outdir):
    with open(os.path.join(outdir, 'out.log')) as f:
        return [(int(m.group(1)), float(m.group(2))) for m in re.finditer(
            r'Iteration (\d+), norm_loss = (\S+),', f.read())]


def test_config_rewritten_in_the_same_second_is_read_anew(tmp_path,
                                                          monkeypatch):
    # Same length, same mtime second: the import system's bytecode cache
    # took this for the old file and ran it (found on Debian 13, where the
    # gpus refusal test read [0, 0] after writing [0, 1]).
    monkeypatch.setattr(sys, 'dont_write_bytecode', False)
    stamp = time.time()
    cfg = write_config(tmp_path, batch_size=48)
    os.utime(cfg, (stamp, stamp))
    assert dc_config.load(cfg).batch_size == 48
    cfg = write_config(tmp_path, batch_size=64)
    os.utime(cfg, (stamp, stamp))
    assert dc_config.load(cfg).batch_size == 64
    assert not (tmp_path / '__pycache__').exists()


def test_train_snapshot_quit_resume(tmp_path):
    cfg = write_config(tmp_path)
    r = run_train(tmp_path, cfg, '--max-iter', '20')
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    outdir = str(tmp_path / 'out' / 'train_out')
    for name in ('network.prototxt', 'network_no_bn.prototxt',
                 'solver.prototxt', 'config.json', 'out.log', 'nrm.npy',
                 'intval.npy', 'stats.json'):
        assert os.path.isfile(os.path.join(outdir, name)), name
    losses = norm_losses(outdir)
    assert [i for i, _ in losses] == list(range(20))
    assert all(np.isfinite(l) and 0 < l < 10 for _, l in losses)
    assert snapshots.complete(outdir) == [10, 20]
    nrm = np.load(os.path.join(outdir, 'nrm.npy'), allow_pickle=True).item()
    assert set(nrm) == {'conv1', 'conv2', 'conv3', 'conv4', 'conv5', 'fc6',
                        'fc7', 'fc8', 'fc9'}
    assert processes_with(cfg) == []
    assert not os.path.exists(tmp_path / 'train_quit')

    # Resume in-process: the solver continues from iteration 20 with the
    # snapshot's weights, bit for bit.
    saved = caffe.Net(os.path.join(outdir, 'network.prototxt'),
                      os.path.join(outdir, 'model_iter_20.caffemodel'),
                      caffe.TRAIN)
    t = trainer.Trainer(dc_config.load(cfg), 'train', str(tmp_path))
    try:
        assert t.solver.iter == 20
        for name, blobs in saved.params.items():
            for a, b in zip(blobs, t.solver.net.params[name]):
                assert np.array_equal(a.data, b.data), name
        assert t.run(max_steps=2) == trainer.PAUSED
        assert t.solver.iter == 22
    finally:
        t.close()
    assert processes_with(cfg) == []
    text = open(os.path.join(outdir, 'out.log')).read()
    assert 'restoring %s' % os.path.join(outdir, 'model_iter_20.solverstate') \
        in text


def test_resume_refused_without_a_terminal(tmp_path):
    cfg = write_config(tmp_path, resume='ask')
    out = tmp_path / 'out' / 'train_out'
    out.mkdir(parents=True)
    (out / 'model_iter_4.caffemodel').write_bytes(b'x')
    (out / 'model_iter_4.solverstate').write_bytes(b'x')
    snapshots.mark_complete(str(out), 4)
    r = run_train(tmp_path, cfg, '--max-iter', '5')
    assert r.returncode != 0
    assert 'snapshots up to iteration 4' in r.stderr
    assert 'resume' in r.stderr


PAUSE_DRIVER = PAUSED_RUN + '''
t1, it1 = ns['trainer'], ns['solver'].iter
pids = [p.pid for p in t1.loader.procs]
alive = all(p.is_alive() for p in t1.loader.procs)
print('PAUSED', it1, t1.state, alive, flush=True)
open('train_pause', 'w').close()
exec(code, ns)                                   # continue
print('CONTINUED', ns['solver'].iter, ns['trainer'] is t1,
      [p.pid for p in ns['trainer'].loader.procs] == pids, flush=True)
open('train_quit', 'w').close()
exec(code, ns)                                   # quit: exits
print('NOT REACHED', flush=True)
'''


def test_pause_continue_quit_in_one_interpreter(tmp_path):
    cfg = write_config(tmp_path, snapshot_every=1000)
    r = run_driver(tmp_path, PAUSE_DRIVER, cfg)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    paused = re.search(r'PAUSED (\d+) paused True', r.stdout)
    assert paused, r.stdout[-3000:]
    cont = re.search(r'CONTINUED (\d+) True True', r.stdout)
    assert cont and int(cont.group(1)) == int(paused.group(1)) + 1
    assert 'NOT REACHED' not in r.stdout
    assert processes_with(cfg) == []
    assert not os.path.exists(tmp_path / 'train_quit')
    assert not os.path.exists(tmp_path / 'train_pause')


@pytest.mark.parametrize('sig', [signal.SIGTERM, signal.SIGINT])
def test_signal_quits_cleanly(tmp_path, sig):
    shm = tmp_path / 'shm'
    cfg = write_config(tmp_path, tmp_dir=str(shm), snapshot_every=1000)
    p = subprocess.Popen([sys.executable, TRAIN, '--config', cfg],
                         cwd=tmp_path, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL,
                         env=dict(os.environ, GLOG_minloglevel='1'))
    log = tmp_path / 'out' / 'train_out' / 'out.log'
    deadline = time.time() + 300
    while time.time() < deadline:
        if log.exists() and 'norm_loss' in log.read_text():
            break
        time.sleep(0.2)
    assert len(processes_with(cfg)) == 4     # trainer, nursery, 2 loaders
    assert os.listdir(shm)                   # buffers in tmp_dir
    p.send_signal(sig)
    assert p.wait(timeout=120) == 128 + sig
    time.sleep(0.5)
    assert processes_with(cfg) == []
    assert os.listdir(shm) == []
    assert 'quit at iteration' in log.read_text()
