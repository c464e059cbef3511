"""Train the context-prediction network: the original workflow, in Python 3.

In IPython (the original way; the namespace keeps the solver across pauses)::

    %run -i train.py            # or: exec(open('train.py').read())

From a shell::

    python train.py [--config deepcontext_config.py] [--max-iter N]
                    [--resume ask|yes|no]

``touch train_pause`` pauses after the current step, leaving ``solver`` and
``trainer`` live for inspection; run this script again (in the same
namespace) to continue.  ``touch train_quit`` stops the loaders and ends the
process.  A later start resumes from the newest snapshot in
OUT_DIR/train_out/ (asking first, as the original did, unless told).
The control files and the output folder are named after this script: a copy
named exp2.py uses exp2_pause, exp2_quit and OUT_DIR/exp2_out/.
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
    # In IPython, exec(open('train.py').read()) sees IPython's own argv.
    mine = os.path.basename(sys.argv[0] or '') == os.path.basename(
        globals().get('__file__') or '')
    return p.parse_args(sys.argv[1:] if mine else [])


if 'trainer' not in globals():
    from deepcontext import config as dc_config
    from deepcontext.data.loader import LoaderError
    from deepcontext.train.trainer import (Trainer, QUIT, MAX_ITER,
                                           DISK_FULL)
    _args = _parse_args()
    _over = {k: v for k, v in (('max_iter', _args.max_iter),
                               ('resume', _args.resume)) if v is not None}
    try:
        trainer = Trainer(dc_config.load(_args.config, **_over),
                          exp_name=_script_name())
    except dc_config.ConfigError as _e:
        sys.exit('deepcontext: %s' % _e)
    solver = trainer.solver

try:
    _state = trainer.run()
except LoaderError as _e:
    # the loaders are closed already; say what happened, without a traceback
    sys.exit('deepcontext: %s' % _e)
if _state in (QUIT, MAX_ITER, DISK_FULL):
    # The original killed its own process on quit; a clean exit here, also
    # out of IPython, so the loaders and the tee are certainly gone.
    # DISK_FULL: a snapshot could not be written (disk full): exit status 1.
    sys.stdout.flush()
    sys.stderr.flush()
    _sig = trainer.signal_received
    os._exit(128 + _sig if _sig else 1 if _state == DISK_FULL else 0)
