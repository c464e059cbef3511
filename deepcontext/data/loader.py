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
last process exits); with ``tmp_dir`` they are files there, removed on close,
in a folder named after the trainer's pid (``deepcontext-PID-*``), so that
the folders of a run killed with -9 are found and removed by the next one
(:func:`remove_stale_buffers`).

The trainer looks at every worker at each :meth:`BatchLoader.get`, not
only at the one it reads from, so a dead worker is restarted at the next
step even while its queue still holds batches.

Seeds are integers given by the caller (never ``hash()``, which Python 3
randomises per process).

Workers are forked by a small "nursery" process, itself forked when the
loader starts, before the trainer builds its solver or starts the tee into
out.log.  A worker restarted in the middle of a run therefore inherits
neither the solver, nor the trainer's BLAS/CUDA threads (whose locks a fork
could copy held), nor the tee's pipe on its stdout and stderr.  Each
restart gets fresh queues (a killed worker may die holding a queue's lock),
made before the nursery forks: ``max_restarts + 1`` sets per worker.
"""
import atexit
import ctypes
import mmap
import multiprocessing as mp
import os
import queue
import re
import resource
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

    def __init__(self, image_set, rng, nprng, report=print, order=None,
                 min_source_side=0):
        self.image_set = image_set
        self.min_source_side = min_source_side
        self.upscaled = set()   # tiny images reported (batches.usable_image)
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
                                      self.report,
                                      min_source_side=self.min_source_side,
                                      upscaled=self.upscaled)
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
                 projection, parent_pid, order=None, min_source_side=0):
    """A worker's life: batches into ``buffers`` until killed; exits when
    ``parent_pid`` (the nursery) is gone."""
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
        stream = ImageStream(image_set, rng, nprng, report, order,
                             min_source_side)
        fill_batches(stream, buffers, free, emit, batch_size, projection)
    except BaseException as e:  # report every failure to the main process
        # a LoaderError (no usable image) is the data's fault: one line
        where = '' if isinstance(e, LoaderError) else \
            '\n' + traceback.format_exc()
        ready_q.put(('error', 'loader %d failed: %s%s' % (wid, e, where)))
        ready_q.close()
        ready_q.join_thread()
        os._exit(1)


def _nursery_main(requests, replies, workers):
    """The nursery: fork worker ``workers[wid][gen]`` on each request.

    Replies ``('started', wid, pid)`` to a request and ``('exit', pid,
    code)`` for every worker it reaps; a ``None`` request ends it.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process decides
    _die_with_parent()
    while True:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            replies.send(('exit', pid, os.waitstatus_to_exitcode(status)))
        if not requests.poll(0.2):
            continue
        try:
            msg = requests.recv()
        except EOFError:
            return
        if msg is None:
            return
        wid, gen = msg
        nursery = os.getpid()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                args = workers[wid][gen]
                _worker_main(*args[:8], nursery, *args[8:])
                code = 0
            finally:
                os._exit(code)
        replies.send(('started', wid, pid))


class _Worker:
    """A worker process, a child of the nursery, seen from the trainer with
    the parts of ``multiprocessing.Process`` the loader uses."""

    def __init__(self, pid, loader):
        self.pid = pid
        self._loader = loader

    @property
    def exitcode(self):
        """The exit code once the nursery has reaped the worker, else None."""
        self._loader._drain()
        return self._loader._exitcodes.get(self.pid)

    def is_alive(self):
        if self.exitcode is not None:
            return False
        fields = proc_stat(self.pid)
        return fields is not None and fields[0] != 'Z'

    def _signal(self, signum):
        if self.exitcode is None:
            try:
                os.kill(self.pid, signum)
            except ProcessLookupError:
                pass

    def terminate(self):
        self._signal(signal.SIGTERM)

    def kill(self):
        self._signal(signal.SIGKILL)

    def join(self, timeout=None):
        """Wait until the nursery has reaped it (at most ``timeout`` s)."""
        deadline = None if timeout is None else time.time() + timeout
        while self.exitcode is None and (deadline is None or
                                         time.time() < deadline):
            time.sleep(0.02)


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
    min_source_side : int, images with a shorter side are skipped (0: off;
        batches.usable_image)
    """

    def __init__(self, image_set, seeds, batch_size=sampling.BATCH_SIZE,
                 queue_size=5, projection=False, tmp_dir=None, log=print,
                 shard=False, max_restarts=3, min_source_side=0):
        self.min_source_side = min_source_side
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
        self._queues = []   # worker -> generation -> (free_q, ready_q)
        self._exitcodes = {}    # worker pid -> exit code, from the nursery
        self._nursery = None
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

    def _worker_args(self, wid, gen):
        order = None
        if self.shard:
            order = shard_order(len(self.image_set), self.seeds[0], wid,
                                len(self.seeds))
        free_q, ready_q = self._queues[wid][gen]
        return (wid, self.seeds[wid], self.image_set, self.buffers[wid],
                free_q, ready_q, self.batch_size, self.projection, order,
                self.min_source_side)

    def _drain(self):
        """Record the exits the nursery reported; return its other replies."""
        other = []
        while self._nursery is not None and self._replies.poll(0):
            try:
                msg = self._replies.recv()
            except EOFError:
                break
            if msg[0] == 'exit':
                self._exitcodes[msg[1]] = msg[2]
            else:
                other.append(msg)
        return other

    def _spawn(self, wid):
        """(Re)start worker wid through the nursery, with the next set of
        fresh queues over its buffers."""
        free_q, ready_q = self._queues[wid][self.restarts[wid]]
        for slot in range(len(self.buffers[wid])):
            if self._held.get(wid) != slot:
                free_q.put(slot)
        self._requests.send((wid, self.restarts[wid]))
        deadline = time.time() + 60
        while True:
            for msg in self._drain():
                if msg[0] == 'started' and msg[1] == wid:
                    self.procs[wid] = _Worker(msg[2], self)
                    self.free[wid], self.ready[wid] = free_q, ready_q
                    return
            if not self._nursery.is_alive() or time.time() > deadline:
                raise LoaderError('the loader nursery (pid %d) did not start '
                                  'worker %d' % (self._nursery.pid, wid))
            self._replies.poll(0.1)

    def _start_nursery(self):
        """Fork the nursery, after every queue it will hand out exists."""
        n, gens = len(self.seeds), self.max_restarts + 1
        need = 4 * n * gens + 256        # 4 descriptors per queue pair
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and soft < need:
            resource.setrlimit(resource.RLIMIT_NOFILE, (
                need if hard == resource.RLIM_INFINITY else min(need, hard),
                hard))
        self._queues = [[(self._ctx.Queue(), self._ctx.Queue())
                         for _ in range(gens)] for _ in range(n)]
        workers = [[self._worker_args(wid, gen) for gen in range(gens)]
                   for wid in range(n)]
        self._requests_r, self._requests = self._ctx.Pipe(duplex=False)
        self._replies, self._replies_w = self._ctx.Pipe(duplex=False)
        self._nursery = self._ctx.Process(
            target=_nursery_main, name='deepcontext-loader-nursery',
            daemon=True, args=(self._requests_r, self._replies_w, workers))
        self._nursery.start()

    def start(self):
        if self.tmp_dir is not None:
            os.makedirs(self.tmp_dir, exist_ok=True)
            self._tmp = tempfile.mkdtemp(
                prefix='deepcontext-%d-' % os.getpid(), dir=self.tmp_dir)
        nslots = self.queue_size + 2   # ready + one filling + one in use
        n = len(self.seeds)
        self.procs, self.free, self.ready = [None] * n, [None] * n, [None] * n
        self.buffers = [[self._alloc(self.batch_size * PATCH_BYTES)
                         for _ in range(nslots)] for _ in range(n)]
        self._start_nursery()
        for wid in range(n):
            self._spawn(wid)
        atexit.register(self.close)
        return self

    def _look_at_workers(self):
        """Restart every dead worker now, not when its queue runs dry; a
        worker that died reporting an error raises it (LoaderError)."""
        for wid, p in enumerate(self.procs):
            if p.is_alive():
                continue
            while True:     # what it sent before dying: batches are dropped
                try:
                    msg = self.ready[wid].get(timeout=0.1)
                except queue.Empty:
                    break
                if msg[0] == 'log':
                    self.log(msg[1])
                elif msg[0] == 'error':
                    raise LoaderError(msg[1])
            self._restart_or_fail(wid)

    def _restart_or_fail(self, wid):
        p = self.procs[wid]
        p.join(timeout=2)     # the nursery reaps it and reports its code
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
        self._look_at_workers()
        wid = self._next % len(self.procs)
        self._next += 1
        deadline = time.time() + timeout
        while True:
            try:
                msg = self.ready[wid].get(timeout=1.0)
            except queue.Empty:
                if not self.procs[wid].is_alive():
                    self._look_at_workers()
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
            if p.exitcode is None:
                p.kill()
                p.join(timeout=5)
        if self._nursery is not None:
            try:
                self._requests.send(None)
            except OSError:   # it is gone already
                pass
            self._nursery.join(timeout=5)
            if self._nursery.is_alive():
                self._nursery.kill()
                self._nursery.join(timeout=5)
            for conn in (self._requests, self._requests_r, self._replies,
                         self._replies_w):
                conn.close()
            self._nursery = None
        for q in [q for sets in self._queues for pair in sets for q in pair]:
            q.cancel_join_thread()
            q.close()
        self._queues = []
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


def _gone(pid):
    """True when no live process has this pid (a zombie counts as gone)."""
    try:
        with open('/proc/%d/stat' % pid) as f:
            return f.read().rsplit(')', 1)[1].split()[0] == 'Z'
    except OSError:
        return True


def remove_stale_buffers(tmp_dir):
    """Remove the buffer folders that loaders of dead processes left in
    ``tmp_dir`` (a run killed with -9 cannot remove its own).

    Returns one message per folder removed.  Folders of live processes, and
    ones not named ``deepcontext-PID-*``, are left alone.
    """
    said = []
    if tmp_dir is None or not os.path.isdir(tmp_dir):
        return said
    for name in sorted(os.listdir(tmp_dir)):
        m = re.match(r'deepcontext-(\d+)-', name)
        path = os.path.join(tmp_dir, name)
        if not m or not os.path.isdir(path) or not _gone(int(m.group(1))):
            continue
        size = sum(os.path.getsize(os.path.join(path, f))
                   for f in os.listdir(path))
        shutil.rmtree(path, ignore_errors=True)
        said.append('removed %s: %.0f MB of loader buffers left by process '
                    '%s, which is gone' % (path, size / 1e6, m.group(1)))
    return said


def proc_stat(pid):
    """Fields of /proc/PID/stat after the command name (state first), or
    None if the process is gone (Linux)."""
    try:
        with open('/proc/%d/stat' % pid) as f:
            return f.read().rsplit(')', 1)[1].split()
    except (OSError, IndexError):
        return None


def child_pids(pid):
    """PIDs of the processes (zombies too) whose parent is ``pid``,
    ascending."""
    found = []
    for entry in os.listdir('/proc'):
        if entry.isdigit():
            fields = proc_stat(int(entry))
            if fields is not None and fields[1] == str(pid):
                found.append(int(entry))
    return sorted(found)


def _cpu_seconds(pid):
    """User + system CPU seconds of a process so far (Linux /proc)."""
    fields = proc_stat(pid)
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
