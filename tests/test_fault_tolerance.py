"""Faults a multi-week run meets: kill -9 mid-snapshot, a full disk."""
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from deepcontext.model import nets
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


def tmpfs(path, size):
    """Mount a tmpfs of ``size`` at path (root only; CI runs as root)."""
    path.mkdir()
    r = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=' + size,
                        'tmpfs', str(path)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip('cannot mount a tmpfs here: %s' % r.stderr.strip())
    return path


@pytest.fixture
def small_disk(tmp_path):
    """An 800 MB tmpfs: room for one snapshot pair (~510 MB), not two."""
    mnt = tmpfs(tmp_path / 'disk', '800m')
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


ABORT = textwrap.dedent('''
    import sys
    from deepcontext.train import runlog
    runlog.glog_2015_prefix()
    import caffe
    runlog.Tee(sys.argv[1]).start()
    runlog.log('loading a corrupt caffemodel')
    caffe.Net(sys.argv[2], sys.argv[3], caffe.TEST)
''')


def test_caffe_fatal_message_reaches_terminal_and_log_when_caffe_aborts(
        tmp_path):
    """Caffe's last words (glog FATAL on stderr, then abort) are copied by
    the tee's own process, which outlives the aborted one."""
    nets.write_nets(str(tmp_path), batch_size=8)
    (tmp_path / 'bad.caffemodel').write_bytes(b'\xff' * 3000)   # no message
    log = tmp_path / 'out.log'
    r = subprocess.run([sys.executable, '-c', ABORT, str(log),
                        str(tmp_path / 'network.prototxt'),
                        str(tmp_path / 'bad.caffemodel')],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == -signal.SIGABRT
    fatal = 'Failed to parse NetParameter file: %s' % (tmp_path /
                                                       'bad.caffemodel')
    ours = 'aborted by Caffe: Check failed'
    for text in (log.read_text(), r.stderr):
        assert fatal in text and ours in text
    assert 'loading a corrupt caffemodel' in r.stdout
    assert wait_for(lambda: processes_with(str(log)) == [], timeout=10)


FILL = textwrap.dedent('''
    import os, sys, time
    from deepcontext.train import runlog
    folder = sys.argv[1]
    tee = runlog.Tee(os.path.join(folder, 'out.log')).start()
    runlog.log('before the disk fills')
    filler = os.open(os.path.join(folder, 'filler'), os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(filler, b'x' * 4096)
    except OSError:
        pass
    for i in range(3):
        runlog.log('while full %d ' % i + 'y' * 3000)
        time.sleep(0.3)
    print('tee failure: %s %s' % tee.failure(), file=sys.__stdout__,
          flush=True)
    os.close(filler)
    os.remove(os.path.join(folder, 'filler'))
    runlog.log('room again')
    tee.stop()
''')


def test_tee_on_a_full_disk_says_so_and_keeps_the_terminal(tmp_path):
    disk = tmpfs(tmp_path / 'disk', '256k')
    try:
        r = subprocess.run([sys.executable, '-c', FILL, str(disk)],
                           capture_output=True, text=True, timeout=120)
        text = (disk / 'out.log').read_text()
    finally:
        subprocess.run(['umount', '-l', str(disk)])
    assert r.returncode == 0, r.stderr
    assert 'tee failure: ENOSPC No space left on device' in r.stdout
    for i in range(3):      # the terminal has every line
        assert 'while full %d' % i in r.stdout
    assert r.stderr.count('\n') == 1 and \
        'cannot write %s: No space left on device' % (disk / 'out.log') \
        in r.stderr
    # when there is room again, the log says what it misses, and goes on
    assert re.search(r'\] \d+ bytes of this log were not written \(No '
                     r'space left on device\)\n', text)
    assert text.endswith('room again\n')
