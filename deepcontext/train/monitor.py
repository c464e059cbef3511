"""Watching a run: parameter norms, update norms, and the divergence checks.

Every ``stats_every`` steps the trainer records, for each learned layer but
BatchNorm's statistics, the norm of its weights and the norm of their change
since the last record (the original called these ``nrm`` and ``intval``),
and runs the original's sanity checks (:func:`check_divergence`).
"""
import json
import os

import numpy as np


def tracked_params(net):
    """Names of the learned layers whose weights are monitored (not bnN)."""
    return [name for name in net.params if 'bn' not in name]


def weights(net, name):
    return net.params[name][0].data


def param_norm(net, name):
    w = weights(net, name)
    return float(np.sqrt(np.sum(w.astype(np.float64) ** 2)))


def update_norm(net, name, old):
    w = weights(net, name)
    return float(np.sqrt(np.sum((w.astype(np.float64) - old) ** 2)))


def fc8_weight_sum(net):
    return float(np.sum(weights(net, 'fc8')))


def pool1_max_abs_diff(net):
    return float(np.max(np.abs(net.blobs['pool1'].diff)))


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
    """Parameter norms (``nrm``) and update norms (``intval``) per layer.

    Saved as the original did (nrm.npy and intval.npy, pickled dicts of
    lists) and as stats.json with the iteration of each entry.
    """

    def __init__(self, names):
        self.names = list(names)
        self.param_norms = {n: [] for n in self.names}     # 'nrm'
        self.update_norms = {n: [] for n in self.names}    # 'intval'
        self.iters = []
        self._old = {}

    def update(self, net, iteration):
        for name in self.names:
            if name in self._old:
                self.update_norms[name].append(
                    update_norm(net, name, self._old[name]))
            self._old[name] = weights(net, name).astype(np.float64)
            self.param_norms[name].append(param_norm(net, name))
        self.iters.append(iteration)

    def save(self, outdir):
        np.save(os.path.join(outdir, 'intval.npy'), self.update_norms,
                allow_pickle=True)
        np.save(os.path.join(outdir, 'nrm.npy'), self.param_norms,
                allow_pickle=True)
        tmp = os.path.join(outdir, 'stats.json.tmp')
        with open(tmp, 'w') as f:
            json.dump({'iter': self.iters, 'nrm': self.param_norms,
                       'intval': self.update_norms}, f)
        os.replace(tmp, os.path.join(outdir, 'stats.json'))
