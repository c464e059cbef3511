"""Faults a multi-week run meets: kill -9 mid-snapshot, a full disk."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from PIL import Image

from caffe.proto import caffe_pb2
from deepcontext.data import photos, sources
from deepcontext.data.loader import BatchLoader, child_pids
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


def train_to(tmp_path, cfg, iteration):
    r = run_train(tmp_path, cfg, '--max-iter', str(iteration))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return r


def test_changed_or_non_finite_pairs_are_rejected_for_the_one_before(
        tmp_path):
    """Same-size bytes changed in the newest pair (the hash catches it),
    NaN weights in the one before (the finite check after the restore
    catches it, even with a marker that matches): both are reported on
    stderr and in out.log, moved to rejected/, and the run resumes from
    the pair before them."""
    cfg = write_config(tmp_path, snapshot_every=2)
    out = tmp_path / 'out' / 'train_out'
    train_to(tmp_path, cfg, 6)
    with open(out / 'model_iter_6.solverstate', 'r+b') as f:
        f.write(b'\xff' * 64)
    model4 = out / 'model_iter_4.caffemodel'
    weights = caffe_pb2.NetParameter.FromString(model4.read_bytes())
    fc7 = [layer for layer in weights.layer if layer.name == 'fc7'][0]
    for i in range(0, 1 << 18, 7):
        fc7.blobs[0].data[i] = float('nan')
    model4.write_bytes(weights.SerializeToString())
    snapshots.mark_complete(str(out), 4)                 # the hash agrees
    r = train_to(tmp_path, cfg, 7)
    log = (out / 'out.log').read_text()
    for text in (log, r.stderr):
        assert ('model_iter_6 rejected: model_iter_6.solverstate content '
                'changed since it was written (SHA-256 differs from its '
                'marker); moved to %s, never loaded' % (out / 'rejected')
                ) in text
        assert 'model_iter_4 rejected: non-finite weights in fc7' in text
    assert 'restoring %s' % (out / 'model_iter_2.solverstate') in log
    assert sorted(os.listdir(out / 'rejected')) == [
        'model_iter_%d.%s' % (i, ext) for i in (4, 6)
        for ext in ('caffemodel', 'complete', 'solverstate')]
    assert snapshots.complete(str(out)) == [2, 4, 6]   # written again
    assert 'Iteration 6, norm_loss = nan' not in log


def test_a_pair_that_makes_caffe_abort_is_skipped_at_the_next_start(
        tmp_path):
    """A solverstate that passes our checks but not Caffe's (no history,
    as in the fault run's 'history_size() == history_.size() (0 vs 33)'):
    Caffe aborts; its message reaches stderr and out.log; the next start
    skips the pair instead of aborting again."""
    cfg = write_config(tmp_path, snapshot_every=2)
    out = tmp_path / 'out' / 'train_out'
    train_to(tmp_path, cfg, 4)
    state = caffe_pb2.SolverState(iter=4, learned_net=str(
        out / 'model_iter_4.caffemodel'))
    (out / 'model_iter_4.solverstate').write_bytes(state.SerializeToString())
    snapshots.mark_complete(str(out), 4)
    r = run_train(tmp_path, cfg, '--max-iter', '5')
    assert r.returncode == -signal.SIGABRT
    fatal = 'Check failed: state.history_size() == history_.size()'
    log = (out / 'out.log').read_text()
    for text in (log, r.stderr):
        assert fatal in text and 'aborted by Caffe: %s' % fatal in text
    r = train_to(tmp_path, cfg, 5)
    log = (out / 'out.log').read_text()
    assert 'model_iter_4 rejected: restoring it made Caffe abort: %s' % fatal \
        in r.stderr
    assert log.count('restoring %s' % (out / 'model_iter_2.solverstate')) == 1
    assert processes_with(cfg) == []


def test_unmarked_snapshots_are_never_overwritten(tmp_path):
    """All markers missing (copied without them): refused with one line,
    nothing written; marking one resumes from it."""
    cfg = write_config(tmp_path, snapshot_every=2)
    out = tmp_path / 'out' / 'train_out'
    train_to(tmp_path, cfg, 4)
    for marker in out.glob('*.complete'):
        marker.unlink()
    before = {p.name: (p.stat().st_size, p.stat().st_mtime_ns)
              for p in out.glob('model_iter_*')}
    r = run_train(tmp_path, cfg, '--max-iter', '6')
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        'deepcontext: %s holds snapshots without a valid completion marker '
        '(model_iter_2, model_iter_4) that this run would overwrite: check '
        'one and mark it to resume from it (python -m '
        'deepcontext.train.snapshots mark %s N), or move them away'
        % (out, out)]
    assert {p.name: (p.stat().st_size, p.stat().st_mtime_ns)
            for p in out.glob('model_iter_*')} == before
    assert 'refused: %s holds snapshots' % out in (out / 'out.log').read_text()
    # marking the older one is not enough: model_iter_4 would be overwritten
    assert snapshots.main(['mark', str(out), '2']) == 0
    assert run_train(tmp_path, cfg, '--max-iter', '6').returncode == 1
    assert snapshots.main(['mark', str(out), '4']) == 0
    r = train_to(tmp_path, cfg, 5)
    assert 'restoring %s' % (out / 'model_iter_4.solverstate') in \
        (out / 'out.log').read_text()


def fill(folder):
    """Another writer takes every free byte of folder's disk."""
    fd = os.open(os.path.join(folder, 'filler'), os.O_WRONLY | os.O_CREAT)
    for size in (1 << 20, 4096, 1):
        try:
            while True:
                os.write(fd, b'\0' * size)
        except OSError:
            pass
    os.close(fd)


def start_train(tmp_path, cfg, env=None):
    return subprocess.Popen([sys.executable, TRAIN, '--config', cfg],
                            cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env=env or dict(os.environ,
                                            GLOG_minloglevel='1'))


def when_ready(p, ready, act):
    """Wait for ready(), act(), then for the run's end; its stderr."""
    try:
        assert wait_for(ready, timeout=300, step=0.01)
        act()
        return p.communicate(timeout=300)[1]
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_disk_filled_by_another_writer_ends_the_run_with_status_4(
        tmp_path, small_disk):
    cfg = write_config(tmp_path, out_dir=str(small_disk),
                       snapshot_every=1000)
    log = small_disk / 'train_out' / 'out.log'
    p = start_train(tmp_path, cfg, env={k: v for k, v in os.environ.items()
                                        if k != 'GLOG_minloglevel'})
    err = when_ready(p, lambda: log.exists() and 'Iteration 1, norm_loss' in
                     log.read_text(), lambda: fill(small_disk))
    assert p.returncode == 4, err[-3000:]
    assert 'Traceback' not in err
    assert re.search(r'\] disk_full at iteration \d+: .*No space left on '
                     r'device\n', err), err[-3000:]
    assert processes_with(cfg) == []


def test_disk_filled_while_caffe_writes_a_snapshot(tmp_path, small_disk):
    """Caffe aborts (its write fails); its message is on stderr; the
    previous state is intact and the next start cleans up and goes on."""
    cfg = write_config(tmp_path, out_dir=str(small_disk), snapshot_every=3)
    out = small_disk / 'train_out'
    p = start_train(tmp_path, cfg)
    err = when_ready(p, (out / 'model_iter_3.writing').exists,
                     lambda: fill(small_disk))
    assert p.returncode == -signal.SIGABRT, err[-3000:]
    assert re.search(r'\n(F\d{4,8} .*Check failed.*)\n', err), err[-3000:]
    assert 'aborted by Caffe: Check failed' in err
    assert snapshots.complete(str(out)) == []
    os.remove(small_disk / 'filler')
    r = train_to(tmp_path, cfg, 4)
    assert ('ignoring incomplete snapshot model_iter_3 (a crash while writing '
            'it): never loaded; removed') in r.stderr
    assert snapshots.complete(str(out)) == [3]
    assert processes_with(cfg) == []


def test_sigterm_during_set_up_quits_with_a_line_in_out_log(tmp_path):
    cfg = write_config(tmp_path)
    log = tmp_path / 'out' / 'train_out' / 'out.log'
    p = start_train(tmp_path, cfg)
    # out.log exists once the tee runs: the set-up goes on
    err = when_ready(p, log.exists, lambda: p.send_signal(signal.SIGTERM))
    assert p.returncode == 128 + signal.SIGTERM, err[-2000:]
    text = log.read_text()
    assert 'received SIGTERM during set-up: quitting' in text
    assert 'quit at iteration 0: SIGTERM during set-up' in text
    assert 'quit at iteration 0: SIGTERM during set-up' in err
    assert 'Iteration 0, norm_loss' not in text
    assert processes_with(cfg) == []


def photo_folder(folder, count=3):
    """A folder of real photos, a FIFO named .jpg and a 1x1 image."""
    folder.mkdir()
    for path in photos.test_photos()[:count]:
        shutil.copy(path, folder)
    os.mkfifo(folder / 'fifo.jpg')
    Image.new('RGB', (1, 1), (200, 10, 10)).save(folder / 'tiny.png')
    return folder


def test_fifo_is_skipped_and_tiny_image_reported_once(tmp_path):
    images = sources.open_image_source(str(photo_folder(tmp_path / 'im')))
    said = []
    with BatchLoader(images, [5], batch_size=48, queue_size=1,
                     log=said.append) as ld:
        for _ in range(12):             # several passes over the 5 files
            ld.release(ld.get(timeout=60))
    fifo = [s for s in said if 'fifo.jpg' in s]
    tiny = [s for s in said if 'tiny.png' in s]
    assert fifo and all(s.endswith('fifo.jpg: not a regular file')
                        for s in fifo)
    assert len(tiny) == 1 and re.search(r'tiny\.png\): 1x1 upscaled to '
                                        r'\d+x\d+: too small', tiny[0])
    said = []
    with BatchLoader(images, [5], batch_size=48, queue_size=1,
                     log=said.append, min_source_side=247) as ld:
        for _ in range(8):
            ld.release(ld.get(timeout=60))
    assert any(s.endswith('tiny.png): 1x1, smaller than min_source_side '
                          '247') for s in said)


def test_no_usable_image_is_one_line(tmp_path):
    folder = tmp_path / 'im'
    folder.mkdir()
    (folder / 'a.jpg').write_text('not an image')
    os.mkfifo(folder / 'b.jpg')
    Image.new('RGB', (10, 4000)).save(folder / 'thin.png')
    cfg = write_config(tmp_path, max_iter=3)
    text = open(cfg).read().replace('images = _d.test_photos()',
                                    'images = %r' % str(folder))
    open(cfg, 'w').write(text)
    r = run_train(tmp_path, cfg, timeout=120)
    assert r.returncode == 1
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert re.search(r'\] stopped at iteration 0: loader \d failed: no usable '
                     r'image in folder %s: 3 images' % folder, r.stderr)


def test_dead_worker_is_restarted_at_the_next_step(tmp_path):
    """Its queue still holds batches (queue_size 3): the restart does not
    wait for them to be used up."""
    cfg = write_config(tmp_path, queue_size=3, snapshot_every=1000)
    log = tmp_path / 'out' / 'train_out' / 'out.log'
    p = start_train(tmp_path, cfg)
    killed = []

    def kill_a_worker():
        nursery = [c for c in child_pids(p.pid) if c in processes_with(cfg)]
        worker = child_pids(nursery[0])[0]
        killed.append(len(re.findall('norm_loss', log.read_text())))
        os.kill(worker, signal.SIGKILL)
        assert wait_for(lambda: 'died with exit code' in log.read_text(),
                        timeout=120)
        killed.append(len(re.findall('norm_loss', log.read_text())))
        (tmp_path / 'train_quit').touch()

    err = when_ready(p, lambda: log.exists() and 'Iteration 3, norm_loss'
                     in log.read_text(), kill_a_worker)
    assert p.returncode == 0, err[-2000:]
    assert killed[1] - killed[0] <= 1, killed     # at the next step
    assert 'restarted it (restart 1 of 3)' in log.read_text()
    assert processes_with(cfg) == []


def test_buffers_of_a_killed_run_are_removed_at_the_next_start(tmp_path):
    shm = tmp_path / 'shm'
    cfg = write_config(tmp_path, tmp_dir=str(shm), snapshot_every=1000)
    log = tmp_path / 'out' / 'train_out' / 'out.log'
    p = start_train(tmp_path, cfg)
    when_ready(p, lambda: log.exists() and 'Iteration 0, norm_loss' in
               log.read_text(), lambda: p.send_signal(signal.SIGKILL))
    assert wait_for(lambda: processes_with(cfg) == [], timeout=30)
    left = os.listdir(shm)
    assert left == ['deepcontext-%d-%s' % (p.pid, left[0].split('-')[2])]
    mb = sum(f.stat().st_size for f in (shm / left[0]).iterdir()) / 1e6
    assert mb > 10          # (queue_size + 2) x workers x batch buffers
    r = train_to(tmp_path, cfg, 1)
    assert ('removed %s: %.0f MB of loader buffers left by process %d, which '
            'is gone' % (shm / left[0], mb, p.pid)) in r.stderr
    assert os.listdir(shm) == []


def test_out_log_that_cannot_be_opened_is_refused_in_one_line(tmp_path):
    cfg = write_config(tmp_path)
    log = tmp_path / 'out' / 'train_out' / 'out.log'
    log.mkdir(parents=True)     # root writes read-only files: not this
    r = run_train(tmp_path, cfg, '--max-iter', '1')
    assert r.returncode == 1, r.stderr[-2000:]
    assert 'Traceback' not in r.stderr
    assert r.stderr.strip().splitlines()[-1] == (
        'deepcontext: cannot write %s: Is a directory' % log)
    assert processes_with(cfg) == []
