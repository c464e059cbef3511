"""The original workflow as typed, in the venv's own IPython.

``execfile('train.py')`` (deepcontext/train/ipython.py, loaded through the
venv's etc/ipython config), pause, ``%run -i train.py`` to continue, quit;
and a divergence that leaves the trainer live, as after a pause.
"""
import os
import subprocess
import sys
import time

import pytest

from conftest import TRAIN, processes_with, write_config

IPYTHON = os.path.join(os.path.dirname(sys.executable), 'ipython')


class Session:
    """A .venv/bin/ipython fed line by line, as a user types."""

    def __init__(self, folder):
        self.folder = folder
        self.out = open(folder / 'ipython.out', 'w+')
        self.p = subprocess.Popen(
            [IPYTHON, '--simple-prompt', '--no-banner', '--colors=NoColor'],
            cwd=folder, stdin=subprocess.PIPE, stdout=self.out,
            stderr=subprocess.STDOUT, text=True,
            env=dict(os.environ, IPYTHONDIR=str(folder / 'ipythondir'),
                     GLOG_minloglevel='1'))

    def type(self, line):
        self.p.stdin.write(line + '\n')
        self.p.stdin.flush()

    def wait_for(self, text, timeout=300):
        t0 = time.time()
        while True:
            with open(self.out.name) as f:
                if text in f.read():
                    return
            assert self.p.poll() is None and time.time() - t0 < timeout, \
                open(self.out.name).read()[-3000:]
            time.sleep(0.2)

    def output(self):
        with open(self.out.name) as f:
            return f.read()

    def close(self):
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait()
        self.out.close()


@pytest.fixture
def ipython(tmp_path):
    s = Session(tmp_path)
    yield s
    s.close()


def test_execfile_pause_run_again_quit(tmp_path, ipython):
    cfg = write_config(tmp_path, snapshot_every=1000)
    ipython.type('execfile(%r)' % TRAIN)
    ipython.wait_for('Iteration 1, norm_loss')
    (tmp_path / 'train_pause').touch()
    ipython.wait_for('paused at iteration')
    ipython.type("print('LIVE', trainer.state, solver.iter == trainer.iter,"
                 " all(p.is_alive() for p in trainer.loader.procs))")
    ipython.wait_for('LIVE paused True True')
    ipython.type('%%run -i %s' % TRAIN)           # continue where it stopped
    ipython.wait_for('Solving', timeout=30)
    out = ipython.output()
    paused_at = int(out.split('paused at iteration ')[1].split()[0])
    ipython.wait_for('Iteration %d, norm_loss' % (paused_at + 1))
    (tmp_path / 'train_quit').touch()
    assert ipython.p.wait(timeout=300) == 0, ipython.output()[-3000:]
    log = (tmp_path / 'out' / 'train_out' / 'out.log').read_text()
    assert log.count('] Solving ') == 2 and 'quit at iteration' in log
    assert processes_with(cfg) == []


def test_divergence_leaves_the_trainer_live(tmp_path, ipython):
    write_config(tmp_path, base_lr=1000.0, snapshot_every=1000, max_iter=200)
    ipython.type('execfile(%r)' % TRAIN)
    ipython.wait_for('diverged at iteration')
    ipython.type("print('ALIVE', trainer.state, trainer.closed, "
                 "solver.iter > 0)")
    ipython.wait_for('ALIVE diverged False True')
    ipython.type('trainer.close()')
    ipython.type('exit')
    assert ipython.p.wait(timeout=60) == 0
