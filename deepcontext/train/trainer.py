"""The training loop: a Trainer owns the solver, the loaders and the run log.

This is the main body of the original train.py, as an object so that the
state survives a pause in IPython: ``Trainer(cfg).run()`` trains until a
pause file, a quit file, a signal, ``max_iter`` or a divergence check stops
it; ``run()`` again continues where it stopped.  Where it differs from the
original, and why: docs/fidelity.md.

With ``gpus = [a, b, ...]`` in the config, :class:`GroupTrainer` is the
launcher of one Trainer per GPU (a *rank*, deepcontext/train/multigpu.py):
rank 0 writes out.log, the statistics and the snapshots; the others train
silently on their own batches.
"""
import errno
import os
import re
import shutil
import signal
import sys
import tempfile
import time
import zlib

import lmdb
import numpy as np

from deepcontext.train import runlog
runlog.glog_2015_prefix()   # before Caffe loads glog: one prefix in out.log
import caffe  # noqa: E402

from deepcontext import config as dc_config  # noqa: E402
from deepcontext.data import sources  # noqa: E402
from deepcontext.data.loader import (BatchLoader, LoaderError,  # noqa: E402
                                     remove_stale_buffers)
from deepcontext.model import nets, pycaffe  # noqa: E402
from deepcontext.model import solver as dc_solver  # noqa: E402
from deepcontext.train import control as dc_control  # noqa: E402
from deepcontext.train import gpufeed, monitor, snapshots  # noqa: E402
from deepcontext.train import multigpu  # noqa: E402

# How a call of Trainer.run ended; the words are written to out.log.
PAUSED = 'paused'        # pause file or max_steps: run() again continues
QUIT = 'quit'            # quit file or a signal
DIVERGED = 'diverged'    # a divergence check fired; the solver stays live
MAX_ITER = 'max_iter'    # the solver reached the config's max_iter
STOPPED = 'stopped'      # a snapshot would not fit, or the loaders failed
DISK_FULL = STOPPED      # the name of earlier releases
NO_SPACE = 'disk_full'   # a write failed for lack of space (out.log, ...)

# Exit status of train.py from a shell, by how the run ended (README, Fault
# tolerance).  A signal's quit exits 128 + the signal's number, as shells do.
# PAUSED from a shell ends the process too, as asked: 0.
EXIT_STATUS = {QUIT: 0, MAX_ITER: 0, PAUSED: 0, STOPPED: 1, DIVERGED: 3,
               NO_SPACE: 4}
EXIT_CONFIG = 1          # refused before any work (config, out_dir, resume)
EXIT_NO_SPACE = EXIT_STATUS[NO_SPACE]   # the same, during set-up


class NoSpace(RuntimeError):
    """A write failed for lack of disk space (or quota)."""


class LogError(RuntimeError):
    """out.log cannot be written, for another reason than space."""


def no_space(error):
    """The OSError, or the Tee's failure, says the disk or quota is full."""
    if isinstance(error, NoSpace):
        return True
    if isinstance(error, OSError):
        return error.errno in (errno.ENOSPC, errno.EDQUOT)
    return isinstance(error, tuple) and error[0] in ('ENOSPC', 'EDQUOT')


def exit_status(state, signum=None):
    """The process's exit status after a run that ended in ``state``."""
    if signum:
        return 128 + signum
    return EXIT_STATUS[state]


def output_dir(cfg, exp_name='train'):
    """The run's folder: <out_dir>/<exp_name>_out (absolute)."""
    return os.path.join(os.path.abspath(cfg.out_dir),
                        (cfg.exp_name or exp_name) + '_out')


def loader_seeds(cfg, outdir, rank=0):
    """The loader workers' seeds; rank > 0: a multi-GPU rank's, which no
    other rank shares (rank 0's are the one-device seeds)."""
    base = cfg.seed
    if base is None:
        base = zlib.crc32(os.path.abspath(outdir).encode()) % 1000000
    return multigpu.rank_seeds(base, rank, cfg.loader_workers)


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
    quiet : the terminal leaves out Caffe's INFO lines; out.log keeps them
    rank, group : one rank of a multi-GPU group (multigpu.Rank and
        GroupState, from GroupTrainer): its launcher watches the control
        files and signals; rank 0 alone writes into the output folder
    uid : the group's NCCL id; None with a rank: the CPU stand-in
        (multigpu.CPU_STAND_IN), ranks without gradient exchange
    """

    def __init__(self, cfg, exp_name='train', workdir='.', quiet=False,
                 rank=None, group=None, uid=None):
        self.cfg = cfg
        self.rank = rank
        self.group = group
        self.uid = uid
        self.primary = rank is None or rank.rank == 0
        self.watch = group is None      # control files and signals
        if rank is not None:
            self.device = None if uid is None else rank.gpu
        else:
            self.device = cfg.gpu if cfg.gpus is None else cfg.gpus[0]
        self.nccl = None
        self.exp_name = cfg.exp_name or exp_name
        self.outdir = output_dir(cfg, exp_name)
        self.control = dc_control.Control(self.exp_name, workdir)
        self.loader = None
        self.solver = None
        self.feed = None
        self.tee = None
        self.quiet = quiet
        self.solver_param = None
        self.steps = 0          # steps taken by this Trainer
        self.state = None
        self.stats = None
        self.closed = False
        self.ignored = []       # unmarked pairs not ours: never touched
        self.leftovers = []     # pairs a crash cut short: removed
        self.candidates = []    # marked pairs, oldest first
        self.resumed = None     # the iteration restored, or None
        # Ctrl-C and SIGTERM during set-up: quit once it is done (run()
        # returns at once), with a line in out.log, not a silent death
        self._install()
        try:
            self._setup()
        except dc_config.ConfigError as e:
            if self.primary:
                self._note_refusal(e)
            raise
        finally:
            self._uninstall()

    def _install(self):
        if self.watch:
            self.control.install()

    def _uninstall(self):
        if self.watch:
            self.control.uninstall()

    # ---- set-up ---------------------------------------------------------
    def _check_outdir(self):
        parent = os.path.abspath(self.cfg.out_dir)
        if not os.path.isdir(parent):
            raise dc_config.ConfigError('out_dir %s does not exist' % parent)
        if not os.access(parent, os.W_OK):
            raise dc_config.ConfigError('out_dir %s is not writable' % parent)
        unmarked = snapshots.incomplete(self.outdir)
        self.leftovers = [i for i in unmarked
                          if snapshots.crash_leftover(self.outdir, i)]
        self.ignored = [i for i in unmarked if i not in self.leftovers]
        done = self.candidates = snapshots.complete(self.outdir)
        if not done:
            self._refuse_overwriting(0)
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
        why = self.device is not None and pycaffe.gpu_unusable(self.device)
        if why:
            raise dc_config.ConfigError('gpu=%d requested, but %s'
                                        % (self.device, why))
        image_set = self._open_images()
        self._check_tmp_dir()
        resume_from = None
        if self.primary:
            resume_from = self._check_outdir()
            os.makedirs(self.outdir, exist_ok=True)
            if self.watch:
                self.control.clear()
        # Loaders first: they fork before the tee and the solver exist, and
        # before our signal handlers (a child must not inherit them).
        self.loader = BatchLoader(
            image_set, loader_seeds(cfg, self.outdir,
                                    self.rank.rank if self.rank else 0),
            cfg.batch_size,
            cfg.queue_size, cfg.projection, cfg.tmp_dir, log=runlog.log,
            shard=cfg.loader_shard, max_restarts=cfg.loader_restarts,
            min_source_side=cfg.min_source_side)
        self._uninstall()
        try:
            self.loader.start()
        finally:
            self._install()
        if not self.primary:
            try:
                self._join_group()
            except BaseException:
                self.close()
                raise
            return
        self.tee = runlog.Tee(os.path.join(self.outdir, 'out.log'),
                              quiet=self.quiet).start()
        try:
            self._log_start(image_set)
            self._make_solver(self._write_definitions(), resume_from)
            self.stats = monitor.ParamStats(
                monitor.tracked_params(self.solver.net))
            if self.device is not None:
                self._start_feed()
            if self.group is not None:
                self._join_group()
            self._check_log()
            if self.control.signal_received:
                runlog.log('received %s during set-up: quitting' %
                           signal.Signals(self.control.signal_received).name,
                           level='W')
        except BaseException as e:
            self._log_failed_setup(e)
            self.close()
            raise
        finally:
            if self.tee is not None:
                self.tee.stop()

    def _open_images(self):
        spec = dc_config.image_source(self.cfg)
        try:
            return sources.open_image_source(spec, draft=self.cfg.jpeg_draft)
        except (OSError, ValueError, lmdb.Error) as e:   # lmdb: corrupt
            raise dc_config.ConfigError('image source %r: %s' % (spec, e))

    def _check_tmp_dir(self):
        """tmp_dir must take the loaders' buffer files (tried, not guessed:
        permissions do not stop root)."""
        tmp = self.cfg.tmp_dir
        if tmp is None:
            return
        try:
            os.makedirs(tmp, exist_ok=True)
            os.rmdir(tempfile.mkdtemp(prefix='deepcontext-check-', dir=tmp))
        except OSError as e:
            raise dc_config.ConfigError('tmp_dir %s is not usable: %s'
                                        % (tmp, e.strerror or e))

    def _refuse_overwriting(self, resumed):
        """Unmarked pairs after the one we resume from (not a crash's
        leftover of ours) would be overwritten: refuse to start."""
        later = [i for i in self.ignored if i > resumed]
        if later:
            raise dc_config.ConfigError(
                '%s holds snapshots without a valid completion marker '
                '(model_iter_%s) that this run would overwrite: check one '
                'and mark it to resume from it (python -m '
                'deepcontext.train.snapshots mark %s N), or move them away'
                % (self.outdir, ', model_iter_'.join(map(str, later)),
                   self.outdir))

    def _note_refusal(self, e):
        """A refusal goes into an existing out.log too, straight (the
        terminal gets it once, from train.py)."""
        log = os.path.join(self.outdir, 'out.log')
        if os.path.isfile(log):
            try:
                with open(log, 'a') as f:
                    f.write(runlog.glog_line('refused: %s' % e, 'E') + '\n')
            except OSError:
                pass   # it is on stderr (train.py)

    def _log_failed_setup(self, e):
        """Why the set-up failed, in out.log and on stderr (refusals and a
        full disk: train.py says it)."""
        if isinstance(e, KeyboardInterrupt):
            runlog.log('interrupted during set-up', level='E')
        elif not isinstance(e, (dc_config.ConfigError, NoSpace, LogError,
                                SystemExit)) and not no_space(e):
            runlog.log('set-up failed: %s: %s' % (type(e).__name__, e),
                       level='E')

    def _check_log(self):
        """Raise NoSpace (or LogError) if out.log cannot be written."""
        failure = self.tee.failure()
        if failure:
            message = 'cannot write %s: %s' % (self.tee.path, failure[1])
            raise NoSpace(message) if no_space(failure) else \
                LogError(message)

    def _log_start(self, image_set):
        runlog.log('deepcontext run %s: %d images from %s'
                   % (self.outdir, len(image_set), image_set.describe()))
        runlog.log(self.cfg.describe().replace('\n', '\n    '))
        for line in remove_stale_buffers(self.cfg.tmp_dir):
            runlog.log(line, level='W')
        for it in self.leftovers:
            runlog.log('ignoring incomplete snapshot model_iter_%d (a crash '
                       'while writing it): never loaded; removed' % it,
                       level='W')
            snapshots.remove(self.outdir, it)
        for it in self.ignored:
            runlog.log('ignoring incomplete snapshot model_iter_%d (no valid '
                       'completion marker): never loaded nor overwritten'
                       % it, level='W')

    def _write_definitions(self):
        """config.json, the two nets and solver.prototxt; the solver's path."""
        cfg = self.cfg
        with open(os.path.join(self.outdir, 'config.json'), 'w') as f:
            f.write(cfg.to_json())
        # The nets keep the original's debug_info: true; in training only
        # the solver's flag counts (Solver::Step sets the net's from it).
        nets.write_nets(self.outdir, cfg.batch_size,
                        engine=None if cfg.cudnn else 'CAFFE')
        self.solver_param = dc_solver.gen_solver(
            self.outdir, base_lr=cfg.base_lr, momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,
            # a group snapshots after averaging BatchNorm statistics
            snapshot=cfg.snapshot_every if self.group is None else 0,
            gpu=self.device is not None, debug_info=cfg.debug_info)
        return dc_solver.write_solver(
            os.path.join(self.outdir, 'solver.prototxt'), self.solver_param)

    def _set_device(self):
        cfg = self.cfg
        if self.device is not None:
            # read by our Caffe build when layers choose their kernels
            os.environ['CAFFE_TF32'] = '1' if cfg.tf32 else '0'
            os.environ['CAFFE_CUDNN_WORKSPACE_MB'] = str(
                cfg.cudnn_workspace_mb)
        if self.rank is None:
            pycaffe.set_mode(self.device)
        else:
            multigpu.set_rank_device(self.rank._replace(gpu=self.device))

    def _make_solver(self, solver_path, resume_from):
        self._set_device()
        runlog.log('constructing solver')
        self.solver = caffe.get_solver(solver_path)
        if resume_from is not None:
            self.resumed = self._restore_newest(solver_path)
            self._refuse_overwriting(self.resumed or 0)

    def _restore_newest(self, solver_path):
        """Restore the newest marked pair that passes the checks; report
        and set aside the others (snapshots.py).  Returns its iteration."""
        layers = snapshots.live_layers(self.solver.net)
        solver_type = self.solver_param.type or 'SGD'
        for it in reversed(self.candidates):
            try:
                why = self._aborted_restoring(it) or snapshots.verify(
                    self.outdir, it, layers, solver_type)
            except snapshots.ForeignSnapshot as e:
                raise dc_config.ConfigError(
                    '%s in %s: use another out_dir or exp_name, or move the '
                    'snapshots away' % (e, self.outdir))
            if why is None:
                restoring = snapshots.side_file(self.outdir, it, 'restoring')
                open(restoring, 'w').close()
                model, state, _ = snapshots.paths(self.outdir, it)
                runlog.log('restoring %s' % state)
                self.solver.restore(state)
                os.remove(restoring)
                learned = snapshots.state_header(state)[1]
                if learned is not None and not os.path.samefile(learned,
                                                                model):
                    # a copied folder: the weights must be the pair's own
                    runlog.log('its solverstate names %s; loading %s instead'
                               % (learned, model), level='W')
                    self.solver.net.copy_from(model)
                bad = [name for name, blobs in self.solver.net.params.items()
                       if not all(np.isfinite(b.data).all() for b in blobs)]
                if not bad:
                    return it
                why = 'non-finite weights in %s' % ', '.join(bad)
                self.solver = caffe.get_solver(solver_path)   # fresh weights
            folder = snapshots.reject(self.outdir, it)
            runlog.log('model_iter_%d rejected: %s; moved to %s, never '
                       'loaded' % (it, why, folder), level='W')
        runlog.log('no snapshot passed the checks: training from iteration 0',
                   level='W')
        return None

    def _aborted_restoring(self, it):
        """Caffe's fatal message, if the previous start aborted while
        restoring pair ``it`` (its .restoring file is left, and out.log
        has glog's F line after the 'restoring' line); else None."""
        path = snapshots.side_file(self.outdir, it, 'restoring')
        if not os.path.exists(path):
            return None
        os.remove(path)
        log = os.path.join(self.outdir, 'out.log')
        try:
            with open(log, 'rb') as f:
                f.seek(max(0, os.path.getsize(log) - (1 << 16)))
                tail = f.read().decode(errors='replace')
        except OSError:
            tail = ''
        at = tail.rfind('restoring %s' % snapshots.paths(self.outdir, it)[1])
        fatal = re.search(r'^F\d{4,8} [^]]*\] (.*)$', tail[at:], re.M) \
            if at >= 0 else None
        if fatal:
            return 'restoring it made Caffe abort: %s' % fatal.group(1)
        runlog.log('the previous start was stopped while restoring '
                   'model_iter_%d; trying it again' % it, level='W')
        return None

    def _join_group(self):
        """After rank 0's set-up (its resume included): the other ranks
        build rank 0's solver (read from its folder) at rank 0's iteration;
        with NCCL every rank then takes rank 0's weights and sums its
        gradients with the group's in every step."""
        if self.primary:
            self.group.start.value = self.solver.iter
        self.group.barrier.wait()
        if not self.primary:
            self._set_device()
            self.solver = caffe.get_solver(
                os.path.join(self.outdir, 'solver.prototxt'))
            start = self.group.start.value
            if start:       # rank 0 chose and checked this pair
                model, state, _ = snapshots.paths(self.outdir, start)
                self.solver.restore(state)
                self.solver.net.copy_from(model)
            if self.device is not None:
                self._start_feed()
        if self.uid is not None:
            self.nccl = multigpu.join_nccl(self.solver, self.rank, self.uid)

    def _group_snapshot(self):
        """A group's snapshot: every rank's BatchNorm statistics replaced
        by their average, then rank 0 writes the pair and its markers."""
        it = self.solver.iter
        multigpu.sync_bn(self.solver.net, self.group, self.rank, it)
        if not self.primary:
            return
        snapshots.ensure_space(self.outdir, self.solver.net, it)
        snapshots.begin(self.outdir, it)
        self.solver.snapshot()
        snapshots.mark_complete(self.outdir, it,
                                snapshots.live_layers(self.solver.net),
                                self.solver_param.type or 'SGD')
        runlog.log('snapshot model_iter_%d complete (BatchNorm statistics '
                   'averaged over %d ranks)' % (it, self.group.world))

    def _group_poll(self, generation):
        """A rank after its step: the group's word to stop, or None.  A
        pause waits here, live, until the launcher resumes the group."""
        reason = self.group.report(self.rank.rank, self.solver.iter)
        if reason is None and self.cfg.max_iter is not None and \
                self.solver.iter >= self.cfg.max_iter:
            reason = multigpu.MAX_ITER
        if reason == multigpu.PAUSED:
            if self.primary:
                runlog.log('paused at iteration %d: every rank waits (run '
                           'train.py again in IPython to continue)'
                           % self.solver.iter)
                self.tee.stop()
            reason = self.group.wait_resumed(self.rank.rank, generation)
            if self.primary:
                self.tee.start()
            if reason == multigpu.RUNNING:
                if self.primary:
                    runlog.log('resumed at iteration %d' % self.solver.iter)
                return None
        return None if reason is None else multigpu.STATES[reason]

    def _start_feed(self):
        """GPU runs: batches go to the GPU while the previous step runs."""
        try:
            self.feed = gpufeed.GpuFeed(self.solver.net, self.loader,
                                        self.cfg.batch_size)
        except gpufeed.CudaError as e:
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
        if self.group is None and \
                (self.solver.iter + 1) % self.cfg.snapshot_every == 0:
            snapshots.ensure_space(self.outdir, self.solver.net,
                                   self.solver.iter + 1)
            snapshots.begin(self.outdir, self.solver.iter + 1)
        t0 = time.time()
        if self.feed is not None:
            batch = self.feed.next()
        else:
            batch = self.loader.get()
            pycaffe.set_inputs(self.solver.net, batch.data, batch.pairs,
                               batch.labels)
            self.loader.release(batch)
        t_data = time.time() - t0
        it = self.solver.iter
        self.solver.step(1)
        npairs = len(batch.labels)
        norm_loss = pycaffe.loss(self.solver.net) / npairs
        if self.primary:
            runlog.log('Iteration %d, norm_loss = %.6f, pairs = %d, patches '
                       '= %d, queue = %d, data_time = %.4f s, step_time = '
                       '%.4f s'
                       % (it, norm_loss, npairs, batch.data.shape[0],
                          batch.queued, t_data, time.time() - t0))
        self.steps += 1
        if self.group is not None:
            if self.solver.iter % self.cfg.snapshot_every == 0:
                self._group_snapshot()
        elif self.solver.iter % self.cfg.snapshot_every == 0:
            snapshots.mark_complete(self.outdir, self.solver.iter,
                                    snapshots.live_layers(self.solver.net),
                                    self.solver_param.type or 'SGD')
            runlog.log('snapshot model_iter_%d complete' % self.solver.iter)
        return norm_loss

    def _statistics(self):
        """Every stats_every steps: norms saved, divergence checked."""
        t0 = time.time()
        net = self.solver.net
        self.stats.update(net, self.solver.iter)
        self.stats.save(self.outdir)
        problems = monitor.check_divergence(self.stats.update_norms, self.steps,
                                            monitor.fc8_weight_sum(net),
                                            monitor.pool1_max_abs_diff(net))
        runlog.log('param statistics time: %.3f s' % (time.time() - t0))
        return problems

    def run(self, max_steps=None):
        """Train until paused, quit, diverged, or max_iter; return the state.

        ``max_steps`` bounds this call only (tests, benches).  A rank of a
        group stops when its group does (and waits here while it pauses).
        """
        if self.closed:
            raise RuntimeError('this trainer has quit; start a new one')
        if self.tee is not None:
            self.tee.start()
        self._install()
        self.state = None
        why = ''
        try:
            if self.primary:
                runlog.solving(
                    pycaffe.read_netparam(self.solver_param.net).name,
                    self.solver_param.lr_policy)
            if self.control.signal_received:      # during set-up
                self.state = QUIT
                why = ': %s during set-up' % signal.Signals(
                    self.control.signal_received).name
            elif self.primary:
                runlog.log('training from iteration %d (touch %s to pause, '
                           '%s to quit)%s' % (
                               self.solver.iter, self.control.pause_file,
                               self.control.quit_file,
                               '' if self.group is None else
                               ': %d ranks' % self.group.world))
            taken = 0
            while self.state is None:
                generation = (self.group.generation.value
                              if self.group is not None else None)
                try:
                    if self.primary and \
                            self.steps % self.cfg.stats_every == 0:
                        problems = self._statistics()
                        for p in problems:
                            runlog.log(p + '. Please examine the situation '
                                       'and run the script again to '
                                       'continue.', level='E')
                        if problems and self.group is None:
                            self.state = DIVERGED
                            break
                        if problems:    # every rank stops after one step
                            self.group.request(multigpu.DIVERGED)
                    self.step()
                    if self.tee is not None:
                        self._check_log()
                except (snapshots.SnapshotError, LoaderError, LogError) as e:
                    # in out.log, not only on the terminal: why the run ended
                    self.state, why = STOPPED, ': %s' % e
                    break
                except (NoSpace, OSError) as e:
                    if not no_space(e):
                        raise
                    self.state, why = NO_SPACE, ': %s' % e
                    break
                taken += 1
                if self.group is not None:
                    self.state = self._group_poll(generation)
                    continue
                request = self.control.poll()
                if request == dc_control.QUIT:
                    self.state = QUIT
                elif request == dc_control.PAUSE:
                    self.state = PAUSED
                elif (self.cfg.max_iter is not None and
                      self.solver.iter >= self.cfg.max_iter):
                    self.state = MAX_ITER
                elif max_steps is not None and taken >= max_steps:
                    self.state = PAUSED
            if self.group is not None and why:   # the others stop too
                self.group.request(multigpu.STATES.index(self.state))
            # how the run ended, with why: in out.log and on stderr
            if self.primary or why:
                runlog.log('%s%s at iteration %d%s' % (
                    '' if self.primary else 'rank %d: ' % self.rank.rank,
                    self.state, self.solver.iter, why),
                    level='I' if self.state in (PAUSED, QUIT, MAX_ITER)
                    else 'E', stderr=True)
        except BaseException as e:
            runlog.log('interrupted at iteration %d' % self.solver.iter
                       if isinstance(e, KeyboardInterrupt) else
                       'failed at iteration %d: %s: %s' % (
                           self.solver.iter, type(e).__name__, e), level='E')
            self._uninstall()
            if self.tee is not None:
                self.tee.stop()
            self.close()
            raise
        self._uninstall()
        if self.tee is not None:
            self.tee.stop()
        if self.state in (QUIT, MAX_ITER, STOPPED, NO_SPACE) or \
                self.group is not None:
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
        if self.watch:      # a group's control files are its launcher's
            self.control.clear()

    @property
    def signal_received(self):
        return self.control.signal_received


def check_group(cfg, exp_name='train', stand_in=False):
    """The launcher's checks before it starts a group's ranks: the build,
    out_dir, and the resume question (the ranks have no terminal)."""
    if not stand_in:
        if pycaffe.cpu_only():
            raise dc_config.ConfigError(
                'gpus=%r requested, but this pycaffe is a CPU-only build'
                % (cfg.gpus,))
        if not multigpu.has_nccl():
            raise dc_config.ConfigError(
                'gpus=%r requested, but this pycaffe was built without NCCL: '
                'a build without NCCL cannot train on several GPUs '
                '(docs/gpu.md)' % (cfg.gpus,))
        why = multigpu.gpus_unusable(cfg.gpus)
        if why:
            raise dc_config.ConfigError('gpus=%r requested, but %s'
                                        % (cfg.gpus, why))
    parent = os.path.abspath(cfg.out_dir)
    if not os.path.isdir(parent):
        raise dc_config.ConfigError('out_dir %s does not exist' % parent)
    outdir = output_dir(cfg, exp_name)
    done = snapshots.complete(outdir)
    if done and cfg.resume == 'ask' and sys.stdin and sys.stdin.isatty():
        if not ask_resume(outdir, done[-1]):
            raise SystemExit('User stopped execution')
        cfg.resume = 'yes'      # rank 0 resumes without asking again


def rank_target(cfg, exp_name='train', workdir='.', quiet=False, uid=None):
    """The work of one rank (multigpu.Group's target): a Trainer that
    runs until its group stops; returns the state's code."""
    def target(me, group):
        try:
            trainer = Trainer(cfg, exp_name, workdir, quiet, rank=me,
                              group=group, uid=uid)
        except dc_config.ConfigError as e:
            print('deepcontext: %s' % e, file=sys.stderr, flush=True)
            os._exit(EXIT_CONFIG)
        state = trainer.run()
        trainer.close()
        return multigpu.STATES.index(state)
    return target


class GroupTrainer:
    """train.py's trainer for ``gpus = [a, b, ...]``: the launcher of one
    Trainer per GPU (multigpu.Group), with the Trainer's run(), close()
    and signal_received.  The solvers live in the ranks' processes
    (``solver`` is None here).  With ``stand_in`` (train.py's
    multigpu.CPU_STAND_IN, a test-only switch) the ranks train on the CPU
    without NCCL: no gradient exchange, a stand-in for the tests."""

    solver = None

    def __init__(self, cfg, exp_name='train', workdir='.', quiet=False,
                 stand_in=False):
        exp_name = cfg.exp_name or exp_name
        check_group(cfg, exp_name, stand_in)
        uid = None if stand_in else caffe.NCCL.new_uid()
        # the ranks' BatchNorm exchange folder
        self.folder = tempfile.mkdtemp(prefix='deepcontext-group-',
                                       dir=cfg.tmp_dir)
        runlog.log('starting %d ranks on %s %s' % (
            len(cfg.gpus), 'CPU stand-ins of GPUs' if stand_in else 'GPUs',
            cfg.gpus))
        self.group = multigpu.Group(
            rank_target(cfg, exp_name, workdir, quiet, uid),
            multigpu.plan_ranks(cfg.gpus), 0, self.folder, exp_name,
            workdir).start()

    def run(self):
        """The group's state word once every rank paused or ended;
        raises multigpu.GroupError when a rank died (the group stopped)."""
        try:
            return self.group.run()
        except BaseException:
            self.close()
            raise

    def close(self):
        self.group.close()
        shutil.rmtree(self.folder, ignore_errors=True)

    @property
    def signal_received(self):
        return self.group.signal_received
