"""Faults a multi-week run meets: kill -9 mid-snapshot, a full disk."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from deepcontext.train import snapshots
from conftest import TRAIN, processes_with, run_train, write_config


def test_marker_requires_both_files_at_their_sizes(tmp_path):
    for ext in ('caffemodel', 'solverstate'):
        (tmp_path / ('model_iter_7.' + ext)).write_bytes(b'1234')
    (tmp_path / 'model_iter_9.caffemodel').write_bytes(b'12')
    assert snapshots.complete(str(tmp_path)) == []
    assert snapshots.incomplete(str(tmp_path)) == [7, 9]
    snapshots.mark_complete(str(tmp_path), 7)
    marker = json.loads((tmp_path / 'model_iter_7.complete').read_text())
    assert marker['caffemodel']['bytes'] == marker['solverstate']['bytes'] \
        == 4
    assert snapshots.complete(str(tmp_path)) == [7]
    (tmp_path / 'model_iter_7.solverstate').write_bytes(b'12')  # truncated
    assert snapshots.complete(str(tmp_path)) == []


def wait_for(predicate, timeout=300, step=0.05):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return False


def test_kill_9_while_snapshotting_resumes_from_last_complete(tmp_path):
    cfg = write_config(tmp_path, snapshot_every=4)
    out = tmp_path / 'out' / 'train_out'
    p = subprocess.Popen([sys.executable, TRAIN, '--config', cfg],
                         cwd=tmp_path, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL,
                         env=dict(os.environ, GLOG_minloglevel='1'))
    # kill as soon as Caffe starts writing the second snapshot
    assert wait_for(lambda: (out / 'model_iter_8.caffemodel').exists())
    os.kill(p.pid, signal.SIGKILL)
    p.wait(timeout=60)
    assert wait_for(lambda: processes_with(cfg) == [], timeout=30), \
        'loader workers outlived kill -9 of the trainer'
    done = snapshots.complete(str(out))
    assert 4 in done
    r = run_train(tmp_path, cfg, '--max-iter', str(done[-1] + 1))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    log = (out / 'out.log').read_text()
    assert 'restoring %s' % (out / ('model_iter_%d.solverstate' % done[-1])) \
        in log
    for it in snapshots.incomplete(str(out)):
        assert 'ignoring incomplete snapshot model_iter_%d' % it in log


@pytest.fixture
def small_disk(tmp_path):
    """An 800 MB tmpfs: room for one snapshot pair (~510 MB), not two."""
    mnt = tmp_path / 'disk'
    mnt.mkdir()
    r = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=800m', 'tmpfs',
                        str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip('cannot mount a tmpfs here: %s' % r.stderr.strip())
    yield mnt
    subprocess.run(['umount', '-l', str(mnt)])


def test_disk_full_stops_cleanly_keeping_the_last_snapshot(tmp_path,
                                                           small_disk):
    cfg = write_config(tmp_path, out_dir=str(small_disk), snapshot_every=3)
    r = run_train(tmp_path, cfg)
    assert r.returncode == 1, r.stdout[-2000:] + r.stderr[-2000:]
    out = small_disk / 'train_out'
    log = (out / 'out.log').read_text()
    assert 'not enough disk space' in log and 'previous snapshot is intact' \
        in log
    assert snapshots.complete(str(out)) == [3]
    assert snapshots.incomplete(str(out)) == []
    assert processes_with(cfg) == []
