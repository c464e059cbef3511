"""Read a training run back: out.log lines and the parameter statistics.

``out.log`` mixes three kinds of lines: ours (``train.py:0] Iteration N,
norm_loss = ...``, one per step), Caffe's glog lines (``solver.cpp:...]
Iteration N (...), loss = ...``) and everything else a run prints.  Only our
per-step lines are parsed; Caffe's loss is the same number times the pairs
of the batch (SoftmaxWithLoss with normalization NONE), so nothing is lost.

A resumed run appends to out.log and repeats the iterations between its
snapshot and the point where the earlier run stopped.  :func:`parse_out_log`
keeps, for each iteration, the line written last: the one the run that went
on produced.

The statistics are what the trainer saves every ``stats_every`` steps:
``stats.json`` (with the iteration of each entry) or, for runs of the
original code, ``nrm.npy`` / ``intval.npy`` (pickled dicts layer -> list,
no iterations).  Update norms (``intval``) are differences between
consecutive entries, so they have one entry fewer than the norms.
"""
import json
import os
import re

import numpy as np

# The trainer's per-step line (deepcontext/train/trainer.py, Trainer.step).
STEP_LINE = re.compile(
    r'train\.py:\d+\] Iteration (?P<iteration>\d+), '
    r'norm_loss = (?P<norm_loss>\S+), pairs = (?P<pairs>\d+), '
    r'patches = (?P<patches>\d+), queue = (?P<queue>\d+), '
    r'data_time = (?P<data_time>\S+) s, step_time = (?P<step_time>\S+) s')

STEP_FIELDS = ('iteration', 'norm_loss', 'pairs', 'patches', 'queue',
               'data_time', 'step_time')
_INT_FIELDS = ('iteration', 'pairs', 'patches', 'queue')


def parse_out_log(path):
    """Per-step numbers of a training log, one entry per iteration.

    Parameters
    ----------
    path : str
        ``out.log`` of a run (a run still writing it is fine: a partial last
        line is ignored).

    Returns
    -------
    dict of str -> numpy.ndarray
        Keys :data:`STEP_FIELDS`; arrays of equal length, sorted by
        iteration.  ``iteration``, ``pairs``, ``patches`` and ``queue`` are
        int64, the rest float64 (a diverged step's ``nan`` is kept).
    """
    rows = {}
    with open(path, errors='replace') as f:
        for line in f:
            m = STEP_LINE.search(line)
            if m is None:
                continue
            row = m.groupdict()
            rows[int(row['iteration'])] = row   # later lines win (resume)
    out = {}
    ordered = [rows[k] for k in sorted(rows)]
    for field in STEP_FIELDS:
        dtype = np.int64 if field in _INT_FIELDS else np.float64
        out[field] = np.array([r[field] for r in ordered], dtype=dtype)
    return out


def last_message(path, text):
    """The message (after glog's ``] ``) of the last line of ``path``
    that contains ``text``, e.g. a run's end line ``diverged at iteration
    N``; None if no line does."""
    found = None
    with open(path, errors='replace') as f:
        for line in f:
            if text in line:
                found = line.split('] ', 1)[-1].strip()
    return found


def load_param_stats(outdir):
    """Parameter norms and update norms saved by a run.

    Parameters
    ----------
    outdir : str
        The run's output folder.  ``stats.json`` is read if present, else
        ``nrm.npy`` and ``intval.npy``.

    Returns
    -------
    dict or None
        ``{'iter': int array, 'nrm': {layer: array}, 'intval': {layer:
        array}, 'source': path}``, or None if the folder has neither.
        Without stats.json the iterations are unknown and ``iter`` is the
        entry number (0, 1, ...).  ``intval[layer][k]`` is the change
        between entries k and k + 1, plotted at ``iter[k + 1]``.
    """
    path = os.path.join(outdir, 'stats.json')
    if os.path.isfile(path):
        with open(path) as f:
            raw = json.load(f)
        iters = np.asarray(raw['iter'], dtype=np.int64)
        nrm, intval = raw['nrm'], raw['intval']
    else:
        path = os.path.join(outdir, 'nrm.npy')
        if not os.path.isfile(path):
            return None
        # The original saved dicts with np.save, so they are pickled; only
        # load files of your own runs.
        nrm = np.load(path, allow_pickle=True).item()
        intval = np.load(os.path.join(outdir, 'intval.npy'),
                         allow_pickle=True).item()
        iters = np.arange(max((len(v) for v in nrm.values()), default=0))
    return {'iter': iters,
            'nrm': {k: np.asarray(v, dtype=np.float64)
                    for k, v in nrm.items()},
            'intval': {k: np.asarray(v, dtype=np.float64)
                       for k, v in intval.items()},
            'source': path}


def moving_average(values, window):
    """Trailing mean over up to ``window`` entries (shorter at the start).

    NaNs are skipped inside a window, so one bad step does not blank the
    curve; a window of only NaNs stays NaN.

    Parameters
    ----------
    values : 1-D array
    window : int >= 1

    Returns
    -------
    float64 array, same length as ``values``
    """
    values = np.asarray(values, dtype=np.float64)
    ok = ~np.isnan(values)
    csum = np.concatenate([[0.0], np.cumsum(np.where(ok, values, 0.0))])
    ccount = np.concatenate([[0], np.cumsum(ok)])
    hi = np.arange(1, len(values) + 1)
    lo = np.maximum(hi - int(window), 0)
    count = ccount[hi] - ccount[lo]
    with np.errstate(invalid='ignore', divide='ignore'):
        return np.where(count > 0, (csum[hi] - csum[lo]) / count, np.nan)
