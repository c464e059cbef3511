"""Train the context-prediction network: the original workflow, in Python 3.

In IPython (the original way; the namespace keeps the solver across pauses)::

    execfile('train.py')        # or: %run -i train.py

From a shell::

    python train.py [--config deepcontext_config.py] [--max-iter N]
                    [--resume ask|yes|no]

``touch train_pause`` pauses after the current step, leaving ``solver`` and
``trainer`` live for inspection; run this script again (in the same
namespace) to continue.  A failed divergence check does the same in IPython;
from a shell it ends the process with exit status 3.  ``touch train_quit`` stops the loaders and ends the
process.  A later start resumes from the newest snapshot in
OUT_DIR/train_out/ (asking first, as the original did, unless told).
The control files and the output folder are named after this script: a copy
named exp2.py uses exp2_pause, exp2_quit and OUT_DIR/exp2_out/.

With ``gpus = [0, 1, ...]`` in the config, ``trainer`` launches one process
per GPU (docs/gpu.md) and ``solver`` is None: the solvers live in those
processes.  Pause, quit and signals act on the whole group; a rank that
dies stops it (exit status 1).
"""
import argparse
import os
import sys


def _script_name():
    path = globals().get('__file__') or 'train.py'
    return os.path.splitext(os.path.basename(path))[0]


def _parse_args():
    p = argparse.ArgumentParser(description='deepcontext training')
    p.add_argument('--config', default='deepcontext_config.py')
    p.add_argument('--max-iter', type=int, default=None,
                   help='stop at this solver iteration (config max_iter)')
    p.add_argument('--resume', choices=('ask', 'yes', 'no'), default=None,
                   help='when snapshots exist (config resume)')
    p.add_argument('--quiet', action='store_true',
                   help="the terminal leaves out Caffe's INFO lines (out.log "
                        "keeps them)")
    # In IPython, exec(open('train.py').read()) sees IPython's own argv.
    mine = os.path.basename(sys.argv[0] or '') == os.path.basename(
        globals().get('__file__') or '')
    return p.parse_args(sys.argv[1:] if mine else [])


def _interactive():
    """True in IPython or an interactive Python (the trainer stays live)."""
    import builtins
    return hasattr(builtins, 'get_ipython') or hasattr(sys, 'ps1')


if 'trainer' not in globals():
    from deepcontext import config as dc_config
    # the trainer first: it asks glog for the 2015 prefix before Caffe loads
    from deepcontext.train.trainer import (Trainer, GroupTrainer, PAUSED,
                                           DIVERGED, STOPPED, EXIT_CONFIG,
                                           EXIT_NO_SPACE, EXIT_STATUS,
                                           LogError, exit_status, no_space)
    from deepcontext.train import multigpu
    _args = _parse_args()
    _over = {k: v for k, v in (('max_iter', _args.max_iter),
                               ('resume', _args.resume)) if v is not None}
    try:
        _cfg = dc_config.load(_args.config, **_over)
        if _cfg.gpus is not None and len(_cfg.gpus) > 1:
            # CPU_STAND_IN: a test-only switch, ranks without NCCL
            trainer = GroupTrainer(
                _cfg, exp_name=_script_name(), quiet=_args.quiet,
                stand_in=os.environ.get(multigpu.CPU_STAND_IN) == '1')
        else:
            trainer = Trainer(_cfg, exp_name=_script_name(),
                              quiet=_args.quiet)
    except dc_config.ConfigError as _e:
        print('deepcontext: %s' % _e, file=sys.stderr)
        sys.exit(EXIT_CONFIG)
    except LogError as _e:
        print('deepcontext: %s' % _e, file=sys.stderr)
        sys.exit(EXIT_CONFIG)
    except (RuntimeError, OSError) as _e:   # trainer.NoSpace, or ENOSPC
        if not no_space(_e):
            raise
        print('deepcontext: disk full during set-up: %s' % _e,
              file=sys.stderr)
        sys.exit(EXIT_NO_SPACE)
    solver = trainer.solver

try:
    _state = trainer.run()
except multigpu.GroupError as _e:     # a rank died: the group was stopped
    print('deepcontext: %s' % _e, file=sys.stderr)
    sys.stderr.flush()
    os._exit(EXIT_STATUS[STOPPED])
if _state == DIVERGED and trainer.solver is None and _interactive():
    del trainer     # a group's ranks have ended: the next run resumes
elif _state != PAUSED and not (_state == DIVERGED and _interactive()):
    # The original killed its own process on quit; an exit here, also out of
    # IPython, so the loaders and the tee are certainly gone.  The status
    # says how the run ended (trainer.EXIT_STATUS).  A pause, and in IPython
    # a divergence, leave solver and trainer live to be examined; a script
    # that ends after a pause exits 0, its loaders closed at exit.
    trainer.close()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_status(_state, trainer.signal_received))
