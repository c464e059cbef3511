"""Multiprocess batch loader: workers sample patch pairs into shared memory.

As the original imgloader, each worker walks through *all* images in its
own random order (permutation seeded per worker), resizes each image to
150k-450k pixels, samples 4 grids from it, and preprocesses the patches.
The main process reads the workers' queues round robin.

Transport: the original saved each batch as an .npy file in /dev/shm and
sent the file name through a Queue.  Here every worker owns a ring of
batch-sized buffers in shared memory, mapped before the workers are forked:
a worker writes patches straight into a free buffer and sends only the
buffer's number, the pairs and the labels.  By default the buffers are
anonymous shared mappings (no files, nothing to clean up, freed when the
last process exits); with ``tmp_dir`` they are files there, removed on close.

Seeds are integers given by the caller (never ``hash()``, which Python 3
randomises per process).  Workers use the 'fork' start method explicitly.
"""
import atexit
import ctypes
import mmap
import multiprocessing as mp
import os
import queue
import shutil
import signal
import tempfile
import time
import traceback
from collections import namedtuple

import numpy as np

from deepcontext.data import batches, sampling

PATCH_BYTES = int(np.prod(sampling.PATCH_SHAPE)) * 4

Batch = namedtuple('Batch', 'data pairs labels worker slot queued')


class LoaderError(RuntimeError):
    """A loader worker died, failed, or found no usable image."""


def _die_with_parent():
    """Ask Linux to SIGTERM this worker when its parent dies (kill -9 too)."""
    try:
        libc = ctypes.CDLL('libc.so.6', use_errno=True)
        libc.prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG
    except OSError:   # not glibc Linux: the parent-pid check below remains
        pass


def shard_order(n_images, seed, worker, n_workers):
    """Worker's slice of one shared permutation (loader_shard)."""
    return np.random.RandomState(seed).permutation(n_images)[
        worker::n_workers]


class ImageStream:
    """Endless stream of usable resized images in a seeded order.

    Images are judged by ``batches.usable_image``: broken ones and ones too
    small after resizing are reported through ``report`` and skipped.  If
    a whole pass over the set yields nothing usable, LoaderError.
    Iterating yields ``(index, image, rng, nprng)``, what
    ``batches.assemble_batches`` takes.
    """

    def __init__(self, image_set, rng, nprng, report=print, order=None):
        self.image_set = image_set
        self.rng, self.nprng = rng, nprng
        # The original: every worker walks all images in its own order.
        # A shard (loader_shard) is a given slice of one shared order.
        self.order = nprng.permutation(len(image_set)) if order is None \
            else np.asarray(order)
        self.cursor = 0
        self.report = report

    def next(self):
        """(index, resized image) of the next usable image."""
        for _ in range(len(self.order)):
            idx = int(self.order[self.cursor % len(self.order)])
            self.cursor += 1
            im = batches.usable_image(self.image_set, idx, self.rng,
                                      self.report)
            if im is not None:
                return idx, im
        raise LoaderError('no usable image in %s: all %d failed to load or '
                          'are too small (need > %d px a side after resizing '
                          'to 150k-450k pixels)'
                          % (self.image_set.describe(), len(self.order),
                             sampling.min_image_side()))

    def __iter__(self):
        while True:
            idx, im = self.next()
            yield idx, im, self.rng, self.nprng


def fill_batches(stream, buffers, free, emit, batch_size, projection=False):
    """The worker's loop: sample grids into buffers, emit full batches.

    Parameters
    ----------
    stream : ImageStream
    buffers : list of (batch_size, 3, 96, 96) float32 arrays
    free : callable returning the number of a free buffer (may block)
    emit : callable(slot, n_patches, pairs, labels)
    """
    def new_buffer():
        slot = free()
        return slot, buffers[slot]

    for slot, count, pairs, labels, _ in batches.assemble_batches(
            stream, new_buffer, batch_size, projection):
        emit(slot, count, pairs, labels)


def _worker_main(wid, seed, image_set, buffers, free_q, ready_q, batch_size,
                 projection, parent_pid, order=None):
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process decides
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    _die_with_parent()
    rng, nprng = batches.rngs(seed)

    def report(text):
        ready_q.put(('log', 'loader %d: %s' % (wid, text)))

    def free():
        while True:
            try:
                return free_q.get(timeout=5)
            except queue.Empty:
                if os.getppid() != parent_pid:
                    os._exit(0)

    def emit(slot, n, pairs, labels):
        ready_q.put(('batch', slot, n, pairs, labels))

    try:
        stream = ImageStream(image_set, rng, nprng, report, order)
        fill_batches(stream, buffers, free, emit, batch_size, projection)
    except BaseException as e:  # report every failure to the main process
        ready_q.put(('error', 'loader %d failed: %s\n%s'
                     % (wid, e, traceback.format_exc())))
        ready_q.close()
        ready_q.join_thread()
        os._exit(1)


class BatchLoader:
    """Worker processes producing batches; read them with :meth:`get`.

    Parameters
    ----------
    image_set : imageset.ImageSource (files or an LMDB)
    seeds : list of int, one per worker
    batch_size : int, a batch holds fewer patches than this
    queue_size : int, batches a worker may have ready
    projection : bool, see preprocess.prep_grid
    tmp_dir : str or None, see module docstring
    log : callable(str) for the workers' messages
    shard : bool, workers split one shared order of the images instead of
        each walking all of them (the original)
    max_restarts : int, a worker that dies (killed, out of memory) is
        restarted this many times, then the loader raises LoaderError
    """

    def __init__(self, image_set, seeds, batch_size=sampling.BATCH_SIZE,
                 queue_size=5, projection=False, tmp_dir=None, log=print,
                 shard=False, max_restarts=3):
        self.image_set = image_set
        self.seeds = list(seeds)
        self.batch_size = batch_size
        self.queue_size = queue_size
        self.projection = projection
        self.tmp_dir = tmp_dir
        self.log = log
        self.shard = shard and len(image_set) >= len(self.seeds)
        self.max_restarts = max_restarts
        self.restarts = [0] * len(self.seeds)
        self.procs, self.ready, self.free, self.buffers = [], [], [], []
        self._held = {}     # worker -> slot the consumer holds
        self._maps = []
        self._tmp = None
        self._next = 0
        self._closed = False
        self._ctx = mp.get_context('fork')

    def _alloc(self, nbytes):
        if self.tmp_dir is None:
            m = mmap.mmap(-1, nbytes)  # anonymous MAP_SHARED: fork shares it
        else:
            fd, path = tempfile.mkstemp(dir=self._tmp, suffix='.buf')
            os.ftruncate(fd, nbytes)
            m = mmap.mmap(fd, nbytes)
            os.close(fd)
        self._maps.append(m)
        return np.frombuffer(m, dtype=np.float32).reshape(
            (self.batch_size,) + sampling.PATCH_SHAPE)

    def _spawn(self, wid):
        """(Re)start worker wid with fresh queues over its buffers."""
        free_q, ready_q = self._ctx.Queue(), self._ctx.Queue()
        for slot in range(len(self.buffers[wid])):
            if self._held.get(wid) != slot:
                free_q.put(slot)
        order = None
        if self.shard:
            order = shard_order(len(self.image_set), self.seeds[0], wid,
                                len(self.seeds))
        p = self._ctx.Process(target=_worker_main,
                              name='deepcontext-loader-%d' % wid, daemon=True,
                              args=(wid, self.seeds[wid], self.image_set,
                                    self.buffers[wid], free_q, ready_q,
                                    self.batch_size, self.projection,
                                    os.getpid(), order))
        p.start()
        self.procs[wid], self.free[wid], self.ready[wid] = p, free_q, ready_q

    def start(self):
        if self.tmp_dir is not None:
            os.makedirs(self.tmp_dir, exist_ok=True)
            self._tmp = tempfile.mkdtemp(prefix='deepcontext-',
                                         dir=self.tmp_dir)
        nslots = self.queue_size + 2   # ready + one filling + one in use
        n = len(self.seeds)
        self.procs, self.free, self.ready = [None] * n, [None] * n, [None] * n
        self.buffers = [[self._alloc(self.batch_size * PATCH_BYTES)
                         for _ in range(nslots)] for _ in range(n)]
        for wid in range(n):
            self._spawn(wid)
        atexit.register(self.close)
        return self

    def _restart_or_fail(self, wid):
        p = self.procs[wid]
        what = 'loader worker %d (pid %d) died with exit code %s' % (
            wid, p.pid, p.exitcode)
        if self.restarts[wid] >= self.max_restarts:
            raise LoaderError('%s; it was restarted %d times already, '
                              'stopping' % (what, self.restarts[wid]))
        self.restarts[wid] += 1
        for q in (self.free[wid], self.ready[wid]):
            q.cancel_join_thread()
            q.close()
        self._spawn(wid)
        self.log('%s; restarted it (restart %d of %d), it begins its image '
                 'order again' % (what, self.restarts[wid], self.max_restarts))

    def get(self, timeout=600.0):
        """Next batch, round robin over the workers.

        The returned ``data`` is a view into shared memory: copy it, then
        call :meth:`release`.  Raises LoaderError if the worker died or
        failed, or nothing arrived within ``timeout`` seconds.
        """
        wid = self._next % len(self.procs)
        self._next += 1
        deadline = time.time() + timeout
        while True:
            try:
                msg = self.ready[wid].get(timeout=1.0)
            except queue.Empty:
                if not self.procs[wid].is_alive():
                    self._restart_or_fail(wid)
                    deadline = time.time() + timeout
                    continue
                if time.time() > deadline:
                    raise LoaderError('loader worker %d sent nothing for '
                                      '%.0f s' % (wid, timeout))
                continue
            if msg[0] == 'log':
                self.log(msg[1])
            elif msg[0] == 'error':
                raise LoaderError(msg[1])
            else:
                _, slot, n, pairs, labels = msg
                self._held[wid] = slot
                return Batch(self.buffers[wid][slot][:n], pairs, labels, wid,
                             slot, self.ready[wid].qsize())

    def release(self, batch):
        """Give a batch's buffer back to its worker."""
        if self._held.get(batch.worker) == batch.slot:
            del self._held[batch.worker]
        self.free[batch.worker].put(batch.slot)

    def close(self):
        """Stop the workers and free the buffers.  Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        procs = [p for p in self.procs if p is not None]
        for p in procs:
            if p.is_alive():
                p.terminate()
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
                p.join(timeout=5)
        for q in self.free + self.ready:
            if q is not None:
                q.cancel_join_thread()
                q.close()
        self.buffers = []
        for m in self._maps:
            try:
                m.close()
            except BufferError:  # a caller still holds a view; GC frees it
                pass
        self._maps = []
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
        atexit.unregister(self.close)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()


def _cpu_seconds(pid):
    """User + system CPU seconds of a process so far (Linux /proc)."""
    with open('/proc/%d/stat' % pid) as f:
        fields = f.read().rsplit(')', 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')


def measure_throughput(image_set, workers, batches,
                       batch_size=sampling.BATCH_SIZE):
    """What a BatchLoader delivers, for the benches.

    After a warm-up batch from every worker, reads ``batches`` batches.

    Returns
    -------
    (patches, wall-clock seconds, CPU seconds of the workers)
    """
    seeds = [1000 + i for i in range(workers)]
    with BatchLoader(image_set, seeds, batch_size, queue_size=2,
                     log=lambda m: None) as ld:
        for _ in range(workers):          # warm-up: every worker once
            ld.release(ld.get())
        t0, patches = time.time(), 0
        c0 = sum(_cpu_seconds(p.pid) for p in ld.procs)
        for _ in range(batches):
            b = ld.get()
            patches += b.data.shape[0]
            ld.release(b)
        wall = time.time() - t0
        cpu = sum(_cpu_seconds(p.pid) for p in ld.procs) - c0
    return patches, wall, cpu
