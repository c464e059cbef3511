"""The training loop: a Trainer owns the solver, the loaders and the run log.

This is the main body of the original train.py, as an object so that the
state survives a pause in IPython: ``Trainer(cfg).run()`` trains until a
pause file, a quit file, a signal, ``max_iter`` or a divergence check stops
it; ``run()`` again continues where it stopped.

Differences from the original, all deliberate:

* out.log is appended to, never deleted (the 2015 code removed it on a
  fresh interpreter in one version and appended in the next).
* The pause file is consumed when the loop pauses, so running the script
  again continues (the original left it, and the next run paused again).
* Ctrl-C and SIGTERM quit cleanly after the current step, instead of
  printing a warning and leaving processes behind.
* Loader seeds are integers from the config or CRC-32 of the output
  folder, not Python 2's ``hash()``.
"""
import json
import os
import sys
import time
import zlib

import numpy as np

import caffe

from deepcontext import config as dc_config
from deepcontext import control as dc_control
from deepcontext import gpufeed as dc_gpufeed
from deepcontext import images as dc_images
from deepcontext import loader as dc_loader
from deepcontext import nets, netio, runlog
from deepcontext import snapshots as dc_snapshots
from deepcontext import solver as dc_solver

PAUSED, QUIT, DIVERGED, DONE = 'paused', 'quit', 'diverged', 'max_iter'
STOPPED = 'stopped'   # a snapshot could not be written (disk full)


def snapshot_pairs(outdir):
    """Iterations with a complete snapshot pair (see snapshots.py), sorted."""
    return dc_snapshots.complete(outdir)


def check_divergence(update_norms, step, fc8_sum, pool1_diff):
    """The original's sanity checks; return a list of problems (strings).

    Parameters
    ----------
    update_norms : dict layer -> list of update norms, newest last
    step : int, steps taken in this session (growth is judged after 100)
    fc8_sum : float, sum of fc8's weights
    pool1_diff : float, max |diff| of pool1
    """
    problems = []
    for name, hist in update_norms.items():
        if not hist:
            continue
        if np.isnan(hist[-1]) or (len(hist) >= 2 and step > 100 and
                                  hist[-1] > 10 * hist[-2]):
            problems.append('%s changed a suspiciously large amount (update '
                            'norm %g, previous %s)' % (
                                name, hist[-1],
                                hist[-2] if len(hist) >= 2 else 'none'))
    if np.isnan(fc8_sum) or fc8_sum > 1e10:
        problems.append('fc8 weights look broken (sum %g)' % fc8_sum)
    if np.isnan(pool1_diff) or pool1_diff > 1e8:
        problems.append('pool1 diffs look broken (max |diff| %g)'
                        % pool1_diff)
    return problems


class ParamStats:
    """Parameter norms and update norms of the tracked layers (nrm, intval).

    Saved as the original did (nrm.npy and intval.npy, pickled dicts of
    lists) and as stats.json with the iteration of each entry.
    """

    def __init__(self, names):
        self.names = list(names)
        self.nrm = {n: [] for n in self.names}
        self.intval = {n: [] for n in self.names}
        self.iters = []
        self._old = {}

    def update(self, net, iteration):
        for name in self.names:
            if name in self._old:
                self.intval[name].append(
                    netio.update_norm(net, name, self._old[name]))
            self._old[name] = netio.weights(net, name).astype(np.float64)
            self.nrm[name].append(netio.param_norm(net, name))
        self.iters.append(iteration)

    def save(self, outdir):
        np.save(os.path.join(outdir, 'intval.npy'), self.intval,
                allow_pickle=True)
        np.save(os.path.join(outdir, 'nrm.npy'), self.nrm, allow_pickle=True)
        tmp = os.path.join(outdir, 'stats.json.tmp')
        with open(tmp, 'w') as f:
            json.dump({'iter': self.iters, 'nrm': self.nrm,
                       'intval': self.intval}, f)
        os.replace(tmp, os.path.join(outdir, 'stats.json'))


def loader_seeds(cfg, outdir):
    base = cfg.seed
    if base is None:
        base = zlib.crc32(os.path.abspath(outdir).encode()) % 1000000
    return [base + i for i in range(cfg.loader_workers)]


def ask_resume(outdir, last):
    prompt = ('=' * 70 + '\nFound old data in %s.\nLoad the most recent '
              'snapshot (iteration %d) and append to the log file (y/N)? '
              % (outdir, last))
    return input(prompt).strip().lower() == 'y'


class Trainer:
    """Context-prediction training on pycaffe.

    Parameters
    ----------
    cfg : config.Config
    exp_name : str, names the output folder (<out_dir>/<exp_name>_out) and
        the control files (<exp_name>_pause, <exp_name>_quit)
    workdir : folder watched for the control files
    """

    def __init__(self, cfg, exp_name='train', workdir='.'):
        self.cfg = cfg
        self.exp_name = cfg.exp_name or exp_name
        self.outdir = os.path.join(os.path.abspath(cfg.out_dir),
                                   self.exp_name + '_out')
        self.control = dc_control.Control(self.exp_name, workdir)
        self.loader = None
        self.solver = None
        self.feed = None
        self.tee = None
        self.steps = 0          # steps taken by this Trainer
        self.state = None
        self.stats = None
        self.closed = False
        self.ignored = []
        self._setup()

    # ---- set-up ---------------------------------------------------------
    def _check_outdir(self):
        parent = os.path.abspath(self.cfg.out_dir)
        if not os.path.isdir(parent):
            raise dc_config.ConfigError('out_dir %s does not exist' % parent)
        if not os.access(parent, os.W_OK):
            raise dc_config.ConfigError('out_dir %s is not writable' % parent)
        self.ignored = dc_snapshots.incomplete(self.outdir)
        done = snapshot_pairs(self.outdir)
        if not done:
            return None
        last = done[-1]
        choice = self.cfg.resume
        if choice == 'ask':
            if not sys.stdin or not sys.stdin.isatty():
                raise dc_config.ConfigError(
                    '%s has snapshots up to iteration %d; not asking without '
                    'a terminal: set resume to "yes" to continue from it or '
                    'choose another out_dir/exp_name' % (self.outdir, last))
            if not ask_resume(self.outdir, last):
                raise SystemExit('User stopped execution')
        elif choice == 'no':
            raise dc_config.ConfigError(
                '%s already has snapshots (up to iteration %d) and resume is '
                '"no"' % (self.outdir, last))
        return last

    def _setup(self):
        cfg = self.cfg
        if cfg.gpu is not None and caffe_cpu_only():
            raise dc_config.ConfigError(
                'gpu=%d requested, but this pycaffe is a CPU-only build'
                % cfg.gpu)
        try:
            image_set = dc_images.open_image_source(
                dc_config.image_source(cfg), draft=cfg.jpeg_draft)
        except (OSError, ValueError) as e:
            raise dc_config.ConfigError('image source %r: %s'
                                        % (dc_config.image_source(cfg), e))
        resume_from = self._check_outdir()
        os.makedirs(self.outdir, exist_ok=True)
        self.control.clear()
        # Loaders first: they fork before the tee and the solver exist.
        self.loader = dc_loader.BatchLoader(
            image_set, loader_seeds(cfg, self.outdir), cfg.batch_size,
            cfg.queue_size, cfg.projection, cfg.tmp_dir, log=runlog.log,
            shard=cfg.loader_shard, max_restarts=cfg.loader_restarts)
        self.loader.start()
        self.tee = runlog.Tee(os.path.join(self.outdir, 'out.log')).start()
        try:
            runlog.log('deepcontext run %s: %d images from %s'
                       % (self.outdir, len(image_set), image_set.describe()))
            runlog.log(cfg.describe().replace('\n', '\n    '))
            for it in self.ignored:
                runlog.log('ignoring incomplete snapshot model_iter_%d (no '
                           'valid completion marker): never loaded' % it,
                           level='W')
            with open(os.path.join(self.outdir, 'config.json'), 'w') as f:
                f.write(cfg.to_json())
            nets.write_nets(self.outdir, cfg.batch_size,
                            engine=None if cfg.cudnn else 'CAFFE',
                            debug_info=cfg.debug_info)
            solver_path = dc_solver.write_solver(
                os.path.join(self.outdir, 'solver.prototxt'),
                dc_solver.gen_solver(self.outdir, base_lr=cfg.base_lr,
                                     momentum=cfg.momentum,
                                     weight_decay=cfg.weight_decay,
                                     snapshot=cfg.snapshot_every,
                                     gpu=cfg.gpu is not None))
            if cfg.gpu is not None:
                # read by our Caffe build when layers choose their kernels
                os.environ['CAFFE_TF32'] = '1' if cfg.tf32 else '0'
                os.environ['CAFFE_CUDNN_WORKSPACE_MB'] = str(
                    cfg.cudnn_workspace_mb)
                caffe.set_device(cfg.gpu)
                caffe.set_mode_gpu()
            else:
                caffe.set_mode_cpu()
            runlog.log('constructing solver')
            self.solver = caffe.get_solver(solver_path)
            if resume_from is not None:
                state = os.path.join(self.outdir, 'model_iter_%d.solverstate'
                                     % resume_from)
                runlog.log('restoring %s' % state)
                self.solver.restore(state)
            self.stats = ParamStats(netio.tracked_params(self.solver.net))
            if cfg.gpu is not None:
                self._start_feed()
        except BaseException:
            self.close()
            raise
        finally:
            if self.tee is not None:
                self.tee.stop()

    def _start_feed(self):
        """GPU runs: batches go to the GPU while the previous step runs."""
        try:
            self.feed = dc_gpufeed.GpuFeed(self.solver.net, self.loader,
                                           self.cfg.batch_size)
        except dc_gpufeed.CudaError as e:
            runlog.log('inputs go through host memory (no GPU feed: %s)' % e,
                       level='W')
            self.feed = None

    # ---- the loop -------------------------------------------------------
    @property
    def iter(self):
        return self.solver.iter

    def step(self):
        """One training step; returns the norm_loss.

        Caffe snapshots inside the step that reaches a multiple of
        snapshot_every; the free space is checked before that step and the
        pair is marked complete after it (snapshots.py).
        """
        if (self.solver.iter + 1) % self.cfg.snapshot_every == 0:
            dc_snapshots.ensure_space(self.outdir, self.solver.net,
                                      self.solver.iter + 1)
        t0 = time.time()
        if self.feed is not None:
            batch = self.feed.next()
        else:
            batch = self.loader.get()
            netio.set_inputs(self.solver.net, batch.data, batch.pairs,
                             batch.labels)
            self.loader.release(batch)
        t_data = time.time() - t0
        it = self.solver.iter
        self.solver.step(1)
        npairs = len(batch.labels)
        norm_loss = netio.loss(self.solver.net) / npairs
        runlog.log('Iteration %d, norm_loss = %.6f, pairs = %d, patches = %d,'
                   ' queue = %d, data_time = %.4f s, step_time = %.4f s'
                   % (it, norm_loss, npairs, batch.data.shape[0],
                      batch.queued, t_data, time.time() - t0))
        self.steps += 1
        if self.solver.iter % self.cfg.snapshot_every == 0:
            dc_snapshots.mark_complete(self.outdir, self.solver.iter)
            runlog.log('snapshot model_iter_%d complete' % self.solver.iter)
        return norm_loss

    def _statistics(self):
        """Every stats_every steps: norms saved, divergence checked."""
        t0 = time.time()
        net = self.solver.net
        self.stats.update(net, self.solver.iter)
        self.stats.save(self.outdir)
        problems = check_divergence(self.stats.intval, self.steps,
                                    netio.fc8_weight_sum(net),
                                    netio.pool1_max_abs_diff(net))
        runlog.log('param statistics time: %.3f s' % (time.time() - t0))
        return problems

    def run(self, max_steps=None):
        """Train until paused, quit, diverged, or max_iter; return the state.

        ``max_steps`` bounds this call only (tests, benches).
        """
        if self.closed:
            raise RuntimeError('this trainer has quit; start a new one')
        self.tee.start()
        self.control.install()
        self.state = None
        try:
            runlog.log('training from iteration %d (touch %s to pause, %s to '
                       'quit)' % (self.solver.iter, self.control.pause_file,
                                  self.control.quit_file))
            taken = 0
            while self.state is None:
                if self.steps % self.cfg.stats_every == 0:
                    problems = self._statistics()
                    if problems:
                        for p in problems:
                            runlog.log(p + '. Please examine the situation '
                                       'and run the script again to '
                                       'continue.', level='E')
                        self.state = DIVERGED
                        break
                try:
                    self.step()
                except dc_snapshots.SnapshotError as e:
                    runlog.log(str(e), level='E')
                    self.state = STOPPED
                    break
                taken += 1
                request = self.control.poll()
                if request == dc_control.QUIT:
                    self.state = QUIT
                elif request == dc_control.PAUSE:
                    self.state = PAUSED
                elif (self.cfg.max_iter is not None and
                      self.solver.iter >= self.cfg.max_iter):
                    self.state = DONE
                elif max_steps is not None and taken >= max_steps:
                    self.state = PAUSED
            runlog.log('%s at iteration %d' % (self.state, self.solver.iter))
        except BaseException:
            self.control.uninstall()
            self.tee.stop()
            self.close()
            raise
        self.control.uninstall()
        self.tee.stop()
        if self.state in (QUIT, DONE, STOPPED):
            self.close()
        return self.state

    def close(self):
        """Stop the loaders; remove control files.  Safe to call twice."""
        if self.closed:
            return
        self.closed = True
        if self.feed is not None:      # unpins the loader's buffers: first
            self.feed.close()
        if self.loader is not None:
            self.loader.close()
        if self.tee is not None:
            self.tee.stop()
        self.control.clear()

    @property
    def signal_received(self):
        return self.control.signal_received


def caffe_cpu_only():
    """True when the installed pycaffe was built with CPU_ONLY."""
    info = os.path.join(os.path.dirname(caffe.__file__), 'BUILD_INFO')
    if not os.path.isfile(info):
        return False
    with open(info) as f:
        return 'cpu_only: yes' in f.read()
