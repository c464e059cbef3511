"""Data parallelism over several GPUs: one process per GPU, Caffe's NCCL.

As BVLC's ``python/train.py``: a launcher forks one process (a *rank*) per
GPU; each sets its device, Caffe's solver count and rank and the
multiprocess flag, builds the same solver, joins the NCCL group
(``caffe.NCCL(solver, uid)`` with a unique id made by the launcher), takes
rank 0's weights (``bcast``) and adds the NCCL callback, which sums the
gradients over the ranks in every step.  Each rank feeds its own batches:
its own loaders with seeds no other rank uses (:func:`rank_seeds`).

Beyond BVLC, whose BatchNorm running statistics stay per GPU (BVLC issue
5927): before every snapshot all ranks average them
(:func:`average_bn_stats`), so the snapshot (and debatchnorm after it)
sees the statistics of every rank's data.

The group acts as one run: rank 0 alone writes ``out.log``, the parameter
statistics and the snapshots; pause, quit and signals reach the launcher,
which stops every rank at the same iteration (:class:`GroupState`); a
rank that dies stops the group with a message, and ranks die with the
launcher (``PR_SET_PDEATHSIG``), so nothing is left behind.

Limits: the launcher and its ranks share one machine (the group state is
shared memory).  Across nodes see docs/gpu.md.  A pycaffe without NCCL
cannot train on several GPUs (:func:`has_nccl`).  The same code runs
ranks that do not exchange gradients on the CPU: the tests use that as a
CPU STAND-IN for the group's control logic (train.py with
DEEPCONTEXT_CPU_GROUP=1, a test-only switch; never a training method).
"""
import collections
import ctypes
import multiprocessing as mp
import os
import signal
import time

import caffe
import numpy as np

from deepcontext.model import pycaffe
from deepcontext.train import control as dc_control
from deepcontext.train import runlog

Rank = collections.namedtuple('Rank', 'rank local_rank gpu world_size node')

# How a rank's run ended, as shared-memory codes; the words are the
# trainer's (trainer.PAUSED etc.).
STATES = ('running', 'paused', 'quit', 'diverged', 'max_iter', 'stopped',
          'disk_full')
RUNNING, PAUSED, QUIT, DIVERGED, MAX_ITER, STOPPED, DISK_FULL = range(
    len(STATES))
# A rank ends on its own (a snapshot that would not fit, its loaders
# failed, a full disk): the group stops too.
ALONE = (STOPPED, DISK_FULL)

# The test-only switch of train.py: a group of CPU ranks (no NCCL, no
# gradient exchange), the CPU stand-in of the tests.
CPU_STAND_IN = 'DEEPCONTEXT_CPU_GROUP'


def has_nccl():
    """pycaffe was built with NCCL (USE_NCCL): it can train on several
    GPUs.  Caffe's own feature test: every pycaffe has a caffe.NCCL class,
    a stub without NCCL."""
    return bool(getattr(caffe, 'has_nccl', lambda: False)())


def gpus_unusable(gpus):
    """Why one of ``gpus`` cannot be used ('GPU 1: ...'), or None.

    Asked in a child process: pycaffe.gpu_unusable initialises CUDA, and
    the launcher must not, since the ranks it forks afterwards use CUDA.
    """
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:        # the child: one answer down the pipe, then gone
        try:
            os.close(read)
            for gpu in gpus:
                why = pycaffe.gpu_unusable(gpu)
                if why:
                    os.write(write, ('GPU %d: %s' % (gpu, why)).encode())
                    break
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, 'rb') as f:
        why = f.read().decode()
    os.waitpid(pid, 0)
    return why or None


class GroupError(RuntimeError):
    """A rank died or failed: the group was stopped."""


def plan_ranks(gpus, node=0, nodes=1):
    """The ranks this node runs: one per GPU in ``gpus``.

    Global ranks are node-major: node ``k`` of ``nodes`` (each with the same
    number of GPUs) runs ranks ``k * len(gpus)`` to ``(k + 1) * len(gpus) -
    1``; rank 0 (node 0, the first GPU listed) writes the outputs.

    Returns
    -------
    list of Rank(rank, local_rank, gpu, world_size, node)
    """
    gpus = list(gpus)
    if not gpus or any(not isinstance(g, int) or isinstance(g, bool) or
                       g < 0 for g in gpus):
        raise ValueError('gpus must be a non-empty list of device ids >= 0, '
                         'got %r' % (gpus,))
    if len(set(gpus)) != len(gpus):
        raise ValueError('gpus lists a device twice: %r' % (gpus,))
    if not 0 <= node < nodes:
        raise ValueError('node %d is not in 0..%d' % (node, nodes - 1))
    world = len(gpus) * nodes
    return [Rank(node * len(gpus) + i, i, g, world, node)
            for i, g in enumerate(gpus)]


def rank_seeds(base, rank, workers):
    """Loader seeds of one rank: ``base + rank * workers + i``.

    Rank 0 has the seeds of a one-GPU run (``base + i``); no two workers
    of the group share a seed, so no two ranks draw the same patches.
    """
    return [base + rank * workers + i for i in range(workers)]


def average_bn_stats(per_rank):
    """Average BatchNorm running statistics over ranks.

    Caffe's BatchNorm keeps three blobs: the running *sums* of the batch
    means and of the (unbiased) batch variances, each scaled by the moving
    average, and in the third the scale factor; the statistics it uses are
    ``blobs[0] / factor`` and ``blobs[1] / factor``.  Each rank's pair is
    divided by its own factor, the means and the variances are averaged
    over the ranks (what one GPU would keep had it seen every rank's
    batches: its variance is also a mean of within-batch variances), and
    the result is stored with rank 0's factor.  A rank whose factor is 0
    (no training step yet) has no statistics and is left out.

    Parameters
    ----------
    per_rank : list over ranks of dict layer -> [sum_mean, sum_var,
        factor] arrays (factor of shape (1,))

    Returns
    -------
    dict layer -> [sum_mean, sum_var, factor], the same for every rank
    """
    out = {}
    for layer in per_rank[0]:
        blobs = [r[layer] for r in per_rank]
        factor0 = np.asarray(blobs[0][2], dtype=np.float64).reshape(-1)[0]
        usable = [b for b in blobs
                  if np.asarray(b[2]).reshape(-1)[0] != 0]
        if not usable or factor0 == 0:
            out[layer] = [np.array(b, copy=True) for b in blobs[0]]
            continue
        mean = np.mean([np.asarray(b[0], np.float64) /
                        np.asarray(b[2]).reshape(-1)[0] for b in usable],
                       axis=0)
        var = np.mean([np.asarray(b[1], np.float64) /
                       np.asarray(b[2]).reshape(-1)[0] for b in usable],
                      axis=0)
        dtype = np.asarray(blobs[0][0]).dtype
        out[layer] = [(mean * factor0).astype(dtype),
                      (var * factor0).astype(dtype),
                      np.array(blobs[0][2], copy=True)]
    return out


def bn_layers(net):
    """Names of the net's BatchNorm layers."""
    return [name for name, layer in zip(pycaffe.layer_names(net), net.layers)
            if layer.type == 'BatchNorm']


def get_bn_stats(net):
    return {name: [b.data.copy() for b in net.params[name]]
            for name in bn_layers(net)}


def set_bn_stats(net, stats):
    for name, blobs in stats.items():
        for blob, value in zip(net.params[name], blobs):
            blob.data[...] = value


def _die_with_parent():
    try:
        ctypes.CDLL('libc.so.6', use_errno=True).prctl(1, signal.SIGKILL)
    except OSError:     # not glibc Linux: the launcher's kill remains
        pass


class GroupState:
    """What the ranks and their launcher share (shared memory, fork).

    Stopping: a request (pause, quit, divergence) sets ``stop_at`` to one
    past the newest iteration any rank has finished, under the lock that
    every rank takes to publish its iteration and read ``stop_at``; so
    every rank stops after the same step.  With NCCL no rank can finish a
    step before all have started it, so no rank is past ``stop_at``.
    """

    def __init__(self, world, start_iter, ctx=None):
        ctx = ctx or mp.get_context('fork')
        self.world = world
        self.lock = ctx.Lock()
        self.done = ctx.Array('q', [start_iter] * world, lock=False)
        self.state = ctx.Array('i', [RUNNING] * world, lock=False)
        self.stop_at = ctx.Value('q', -1, lock=False)
        self.reason = ctx.Value('i', RUNNING, lock=False)
        self.generation = ctx.Value('i', 0, lock=False)
        # rank 0's first iteration (after its resume), for the others
        self.start = ctx.Value('q', start_iter, lock=False)
        self.barrier = ctx.Barrier(world)

    def report(self, rank, iteration):
        """Publish a finished step; the reason to stop now, or None."""
        with self.lock:
            self.done[rank] = iteration
            if 0 <= self.stop_at.value <= iteration:
                return self.reason.value
        return None

    def request(self, reason):
        """Ask every rank to stop at the same iteration (the first request
        wins); returns that iteration."""
        with self.lock:
            if self.stop_at.value < 0:
                self.stop_at.value = max(self.done) + 1
                self.reason.value = reason
            return self.stop_at.value

    def resume(self):
        """After a pause: the ranks continue."""
        with self.lock:
            self.stop_at.value = -1
            self.reason.value = RUNNING
            self.generation.value += 1

    def wait_resumed(self, rank, generation, poll=0.05):
        """A paused rank: wait for resume() (-> RUNNING) or a quit."""
        self.state[rank] = PAUSED
        while True:
            with self.lock:
                if self.generation.value != generation:
                    self.state[rank] = RUNNING
                    return RUNNING
                if self.reason.value == QUIT:
                    return QUIT
            time.sleep(poll)


def rank_loop(solver, feed, group, me, snapshot=None, statistics=None,
              snapshot_every=None, max_iter=None):
    """The training loop of one rank; returns its end state (a code).

    feed() writes the next batch into the net; snapshot(iteration) writes
    a snapshot (rank 0); statistics() returns divergence problems (rank 0,
    every call: the caller decides the interval).  BatchNorm statistics
    are averaged over the group before each snapshot iteration's snapshot.
    """
    while True:
        generation = group.generation.value
        if statistics is not None:
            problems = statistics()
            if problems:
                for p in problems:
                    runlog.log(p + '. Please examine the situation and run '
                               'the script again to continue.', level='E')
                group.request(DIVERGED)
        feed()
        solver.step(1)
        it = solver.iter
        if snapshot_every and it % snapshot_every == 0:
            sync_bn(solver.net, group, me, it)
            if snapshot is not None:
                snapshot(it)
        reason = group.report(me.rank, it)
        if reason is None and max_iter is not None and it >= max_iter:
            reason = MAX_ITER
        if reason == PAUSED:
            reason = group.wait_resumed(me.rank, generation)
            if reason == RUNNING:
                continue
        if reason is not None:
            return reason


def sync_bn(net, group, me, iteration, folder=None, timeout=600):
    """Replace every rank's BatchNorm statistics by the group's average.

    The ranks exchange their blobs through small files in ``folder`` (by
    default the group's, DEEPCONTEXT_GROUP_DIR in the environment)
    between two barriers.
    """
    folder = folder or os.environ['DEEPCONTEXT_GROUP_DIR']
    mine = os.path.join(folder, 'bn-%d-%d.npz' % (iteration, me.rank))
    stats = get_bn_stats(net)
    np.savez(mine + '.tmp.npz', **{'%s/%d' % (k, i): v
                                   for k, vs in stats.items()
                                   for i, v in enumerate(vs)})
    os.replace(mine + '.tmp.npz', mine)
    group.barrier.wait(timeout)
    per_rank = []
    for r in range(group.world):
        with np.load(os.path.join(folder, 'bn-%d-%d.npz' % (iteration, r))) \
                as z:
            per_rank.append({k: [z['%s/%d' % (k, i)] for i in range(3)]
                             for k in stats})
    set_bn_stats(net, average_bn_stats(per_rank))
    group.barrier.wait(timeout)
    os.remove(mine)


def join_nccl(solver, me, uid):
    """Make ``solver`` one of the group's NCCL ranks (after
    :func:`set_rank_device`, before the first step): rank 0's weights to
    every rank, then the gradients summed over the ranks in every step.
    As BVLC's python/train.py."""
    nccl = caffe.NCCL(solver, uid)
    nccl.bcast()
    solver.add_callback(nccl)
    if solver.param.layer_wise_reduce:
        solver.net.after_backward(nccl)
    return nccl


def set_rank_device(me):
    """Caffe's per-process settings of one rank (before its solver)."""
    pycaffe.set_mode(me.gpu)
    caffe.set_solver_count(me.world_size)
    caffe.set_solver_rank(me.rank)
    caffe.set_multiprocess(True)


class Group:
    """The launcher: forks the ranks, relays control, watches for deaths.

    Parameters
    ----------
    target : callable(me, group) -> state code, run in each rank's process
    ranks : list of Rank (plan_ranks)
    start_iter : the solver iteration the run starts from
    exp_name, workdir : the control files (<exp_name>_pause, _quit)
    folder : the exchange folder of the BatchNorm statistics
    """

    def __init__(self, target, ranks, start_iter, folder, exp_name='train',
                 workdir='.', grace=10.0):
        self.ctx = mp.get_context('fork')
        self.ranks = ranks
        self.state = GroupState(len(ranks), start_iter, self.ctx)
        self.control = dc_control.Control(exp_name, workdir)
        self.folder = folder
        self.grace = grace
        self.procs = []
        self.target = target
        self.closed = False

    def _main(self, me):
        _die_with_parent()
        os.environ['DEEPCONTEXT_GROUP_DIR'] = self.folder
        # the launcher relays Ctrl-C and SIGTERM as a group quit
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        code = self.target(me, self.state)
        self.state.state[me.rank] = code
        os._exit(0)

    def start(self):
        self.control.clear()
        for me in self.ranks:
            p = self.ctx.Process(target=self._main, args=(me,),
                                 name='deepcontext-rank%d' % me.rank)
            p.start()
            self.procs.append(p)
        return self

    def _dead(self):
        """(rank, exitcode) of a rank that ended without finishing."""
        for me, p in zip(self.ranks, self.procs):
            if p.exitcode is not None and (
                    p.exitcode != 0 or
                    self.state.state[me.rank] in (RUNNING, PAUSED)):
                return me, p.exitcode
        return None

    def run(self, poll=0.1):
        """Relay control until every rank has paused or ended; returns the
        group's state as a word (trainer's PAUSED, QUIT, ...)."""
        if self.closed:
            raise RuntimeError('this group has ended; start a new one')
        if self.state.reason.value == PAUSED:
            self.state.resume()
            for me in self.ranks:
                self.state.state[me.rank] = RUNNING
        self.control.install()
        alone_since = None
        try:
            while True:
                request = self.control.poll()
                if request == dc_control.QUIT:
                    self.state.request(QUIT)
                elif request == dc_control.PAUSE:
                    self.state.request(PAUSED)
                dead = self._dead()
                if dead is not None:
                    me, code = dead
                    self.close()
                    raise GroupError(
                        'rank %d (GPU %d) ended with %s at iteration %d: '
                        'stopped the group' % (
                            me.rank, me.gpu, 'signal %d' % -code if
                            code is not None and code < 0 else
                            'exit status %s' % code,
                            self.state.done[me.rank]))
                codes = [self.state.state[me.rank] for me in self.ranks]
                if all(c == PAUSED for c in codes):
                    return STATES[PAUSED]
                if all(p.exitcode == 0 for p in self.procs):
                    self.close()
                    return STATES[codes[0]]     # rank 0's word
                alone = [c for c, p in zip(codes, self.procs)
                         if p.exitcode == 0 and c in ALONE]
                if alone:
                    # the others stop at the next step if they can; with
                    # NCCL they wait for the one that left: terminated
                    self.state.request(alone[0])
                    alone_since = alone_since or time.time()
                    if time.time() - alone_since > self.grace:
                        self.close()
                        return STATES[alone[0]]
                time.sleep(poll)
        finally:
            self.control.uninstall()

    @property
    def signal_received(self):
        return self.control.signal_received

    def close(self):
        """Stop every rank still running (paused ranks quit cleanly; the
        others TERM, then KILL after the grace period); remove the control
        files.  Safe to call twice."""
        if self.closed:
            return
        self.closed = True
        with self.state.lock:       # paused ranks: a quit, their clean end
            self.state.reason.value = QUIT
        deadline = time.time() + self.grace
        for me, p in zip(self.ranks, self.procs):
            if self.state.state[me.rank] == PAUSED:
                p.join(max(0.0, deadline - time.time()))
        self.state.barrier.abort()
        for p in self.procs:
            if p.exitcode is None:
                p.terminate()
        deadline = time.time() + self.grace
        for p in self.procs:
            p.join(max(0.0, deadline - time.time()))
            if p.exitcode is None:
                p.kill()
                p.join()
        self.control.clear()
