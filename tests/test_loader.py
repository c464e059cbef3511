"""The multiprocess loader on real photos: format, determinism, cleanup."""
import os
import shutil
import signal
import textwrap
import time

import numpy as np
import pytest

from conftest import processes_with, run_driver, write_config
from deepcontext.data import loader, photos as dc_photos, sources


@pytest.fixture(scope='module')
def photos():
    return sources.open_image_source(dc_photos.test_photos())


def check_batch(b, batch_size):
    n = b.data.shape[0]
    assert 0 < n < batch_size
    assert b.data.shape[1:] == (3, 96, 96) and b.data.dtype == np.float32
    assert b.pairs.shape == (len(b.labels), 2)
    assert b.pairs.min() >= 0 and b.pairs.max() < n
    assert set(np.unique(b.labels)) <= set(range(8))
    rms = np.sqrt(np.mean(b.data.astype(np.float64) ** 2, axis=(1, 2, 3)))
    np.testing.assert_allclose(rms, 50, rtol=1e-3)


def first_batches(image_set, seeds, count, **kw):
    out = []
    with loader.BatchLoader(image_set, seeds, 64, queue_size=1,
                            log=lambda m: None, **kw) as ld:
        for _ in range(count):
            b = ld.get(timeout=120)
            out.append((b.data.copy(), b.pairs.copy(), b.labels.copy()))
            ld.release(b)
    return out


def test_batches_are_well_formed_and_deterministic(photos):
    a = first_batches(photos, [11, 12], 4)
    b = first_batches(photos, [11, 12], 4)
    for (da, pa, la), (db, pb, lb) in zip(a, b):
        assert np.array_equal(da, db) and np.array_equal(pa, pb)
        assert np.array_equal(la, lb)
    # round robin: batches 0 and 1 come from different workers (seeds)
    assert not np.array_equal(a[0][0][:4], a[1][0][:4])
    with loader.BatchLoader(photos, [5], 64, queue_size=1,
                            log=lambda m: None) as ld:
        for _ in range(3):
            b = ld.get(timeout=120)
            check_batch(b, 64)
            ld.release(b)


def children_alive(ld):
    return [p for p in ld.procs if p.is_alive()]


def test_close_leaves_no_process_and_no_file(photos, tmp_path):
    ld = loader.BatchLoader(photos, [1, 2], 64, queue_size=1,
                            tmp_dir=str(tmp_path), log=lambda m: None)
    ld.start()
    ld.release(ld.get(timeout=120))
    pids = [p.pid for p in ld.procs]
    assert os.listdir(tmp_path)          # buffers live in tmp_dir
    ld.close()
    assert not children_alive(ld)
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert os.listdir(tmp_path) == []
    ld.close()   # twice is fine


def test_broken_images_are_reported_and_skipped(photos, tmp_path):
    bad = tmp_path / 'truncated.jpg'
    good = dc_photos.test_photos()[0]
    bad.write_bytes(open(good, 'rb').read()[:2000])
    (tmp_path / 'empty.png').write_bytes(b'')
    shutil.copy(good, tmp_path / 'good.png')
    messages = []
    image_set = sources.open_image_source(str(tmp_path))
    with loader.BatchLoader(image_set, [3], 64, queue_size=1,
                            log=messages.append) as ld:
        b = ld.get(timeout=120)
        check_batch(b, 64)
        ld.release(b)
        ld.get(timeout=120)
    text = '\n'.join(messages)
    assert 'truncated.jpg' in text and 'empty.png' in text


def test_no_usable_image_fails_fast(tmp_path):
    (tmp_path / 'a.jpg').write_bytes(b'not an image')
    (tmp_path / 'b.jpg').write_bytes(b'')
    image_set = sources.open_image_source(str(tmp_path))
    t0 = time.time()
    with loader.BatchLoader(image_set, [0], 64, log=lambda m: None) as ld:
        with pytest.raises(loader.LoaderError, match='no usable image'):
            ld.get(timeout=60)
    assert time.time() - t0 < 30


def test_dead_worker_is_detected_within_seconds(photos):
    with loader.BatchLoader(photos, [4], 64, queue_size=1,
                            log=lambda m: None, max_restarts=0) as ld:
        ld.release(ld.get(timeout=120))
        os.kill(ld.procs[0].pid, signal.SIGKILL)
        t0 = time.time()
        with pytest.raises(loader.LoaderError, match='died'):
            for _ in range(10):   # buffered batches may come first
                ld.release(ld.get(timeout=60))
        assert time.time() - t0 < 15


def test_dead_worker_is_restarted_then_gives_up(photos):
    messages = []
    with loader.BatchLoader(photos, [4, 5], 64, queue_size=1,
                            log=messages.append, max_restarts=1) as ld:
        ld.release(ld.get(timeout=120))
        first = ld.procs[1].pid
        os.kill(first, signal.SIGKILL)
        t0 = time.time()
        for _ in range(8):   # training goes on; worker 1 has 3 slots at most
            b = ld.get(timeout=120)
            check_batch(b, 64)
            ld.release(b)
        assert ld.procs[1].pid != first and ld.procs[1].is_alive()
        assert any('loader worker 1 (pid %d) died' % first in m and
                   'restarted' in m for m in messages), messages
        os.kill(ld.procs[1].pid, signal.SIGKILL)
        with pytest.raises(loader.LoaderError, match='restarted 1 times'):
            for _ in range(10):
                ld.release(ld.get(timeout=60))
        assert time.time() - t0 < 120


def test_shards_split_one_order():
    parts = [loader.shard_order(103, 9, w, 3) for w in range(3)]
    joined = np.concatenate(parts)
    assert sorted(joined) == list(range(103))
    assert all(abs(len(p) - 103 / 3) < 1 for p in parts)


RESTART_DRIVER = textwrap.dedent('''
    import os, signal, sys, threading, time
    train, cfg = sys.argv[1], sys.argv[2]
    sys.argv = [train, '--config', cfg]
    ns = {'__file__': train, '__name__': '__main__'}

    def restart_one_worker():
        while 'trainer' not in ns or ns['trainer'].steps < 2:
            time.sleep(0.05)
        t = ns['trainer']
        old = t.loader.procs[0].pid
        os.kill(old, signal.SIGKILL)
        while t.loader.procs[0].pid == old:
            time.sleep(0.05)
        new = t.loader.procs[0].pid
        tee = os.readlink('/proc/self/fd/2')      # the tee's pipe, now
        fds = [os.readlink('/proc/%d/fd/%s' % (new, fd))
               for fd in os.listdir('/proc/%d/fd' % new)]
        with open('/proc/%d/stat' % new) as f:
            ppid = int(f.read().rsplit(')', 1)[1].split()[1])
        print('RESTARTED tee_is_pipe=%s worker_has_tee=%s worker_of_trainer=%s'
              % (tee.startswith('pipe:'), tee in fds, ppid == os.getpid()),
              flush=True)
        steps = t.steps
        while t.steps < steps + 4:               # its batches train
            time.sleep(0.05)
        open('train_quit', 'w').close()

    threading.Thread(target=restart_one_worker, daemon=True).start()
    exec(compile(open(train).read(), train, 'exec'), ns)
''')


def test_restarted_worker_has_neither_the_tee_nor_the_solver(tmp_path):
    """A worker restarted mid-run by real train.py (Caffe and the tee live)
    comes from the nursery, forked before both existed."""
    cfg = write_config(tmp_path, snapshot_every=1000)
    r = run_driver(tmp_path, RESTART_DRIVER, cfg)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = r.stdout + r.stderr
    assert ('RESTARTED tee_is_pipe=True worker_has_tee=False '
            'worker_of_trainer=False') in out, out[-3000:]
    log = (tmp_path / 'out' / 'train_out' / 'out.log').read_text()
    assert 'loader worker 0' in log and 'restarted it (restart 1 of 3)' in log
    assert 'quit at iteration' in log
    assert processes_with(cfg) == []
