"""Exit status that says how a run ended (README, Fault tolerance).

0 only for quit and max_iter; 1 for a stopped run (disk full: in
test_fault_tolerance.py; the loaders dead: here) and a refused config; 3
for a failed divergence check from a shell.  Real train.py runs on the CPU.
"""
import os
import signal
import subprocess
import sys
import time

from conftest import TRAIN, processes_with, run_train, write_config


def test_divergence_from_a_shell_exits_3(tmp_path):
    cfg = write_config(tmp_path, base_lr=1000.0, snapshot_every=1000,
                       max_iter=200)
    r = run_train(tmp_path, cfg)
    assert r.returncode == 3, r.stdout[-2000:] + r.stderr[-2000:]
    log = (tmp_path / 'out' / 'train_out' / 'out.log').read_text()
    assert 'look broken' in log and 'diverged at iteration' in log
    assert processes_with(cfg) == []


def test_quit_and_max_iter_exit_0(tmp_path):
    cfg = write_config(tmp_path, max_iter=2, snapshot_every=1000)
    r = run_train(tmp_path, cfg)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert 'max_iter at iteration 2' in \
        (tmp_path / 'out' / 'train_out' / 'out.log').read_text()


def test_dead_loader_group_stops_with_status_1(tmp_path):
    cfg = write_config(tmp_path, loader_restarts=0, snapshot_every=1000,
                       max_iter=10000)
    log = tmp_path / 'out' / 'train_out' / 'out.log'
    p = subprocess.Popen([sys.executable, TRAIN, '--config', cfg],
                         cwd=tmp_path, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True,
                         env=dict(os.environ, GLOG_minloglevel='1'))
    try:
        t0 = time.time()
        while not (log.exists() and 'Iteration 1, norm_loss' in
                   log.read_text()):
            assert time.time() - t0 < 300 and p.poll() is None
            time.sleep(0.2)
        # the loaders: forks of the trainer (not the tee's copier)
        for pid in processes_with(cfg):
            if pid != p.pid:
                os.kill(pid, signal.SIGKILL)
        _, err = p.communicate(timeout=300)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 1, err[-2000:]
    text = log.read_text()
    assert 'died with exit code' in text and 'stopped at iteration' in text
    assert 'Traceback' not in err
    assert processes_with(cfg) == []
