"""PNG pictures of a run and of its features, drawn with matplotlib.

Figures are built with ``matplotlib.figure.Figure`` and saved through the
Agg renderer, never through ``pyplot``: no backend is switched and no global
figure state is touched, so these functions are safe inside the IPython
session that is training (where ``matplotlib.use('Agg')`` would take the
user's interactive backend away) and in worker processes without a display.

The ``*_figure`` functions return the Figure, so a caller (or a test) can
look at its axes and lines; :func:`save` writes it and closes nothing
(a pyplot-free Figure is freed with its last reference).
"""
import os

import numpy as np
from matplotlib.figure import Figure

from deepcontext.eval import logparse
from deepcontext.data.sampling import CHANCE_LOSS


def save(fig, path, dpi=100):
    """Write ``fig`` as a PNG at ``path`` (folder created); return the path."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=dpi, format='png')
    return path


def smoothed_loss(log, window):
    """Loss per pair averaged over the last ``window`` steps' pairs.

    Each step's ``norm_loss`` is weighted by its number of pairs, so the
    result is the mean loss per pair over the window (a plain mean of
    ``norm_loss`` would weight a small batch like a large one).
    """
    pairs = log['pairs'].astype(np.float64)
    total = logparse.moving_average(log['norm_loss'] * pairs, window)
    count = logparse.moving_average(pairs, window)
    return total / count


def loss_figure(log, window=20):
    """Loss per pair against iteration, raw and smoothed, with chance.

    Parameters
    ----------
    log : dict from :func:`deepcontext.eval.logparse.parse_out_log`
    window : int, steps in the moving average

    Returns
    -------
    matplotlib.figure.Figure
        One axes with lines labelled ``norm_loss``, ``smoothed (N steps)``
        and ``chance ln 8 = 2.079``.
    """
    fig = Figure(figsize=(8, 4.5))
    ax = fig.add_subplot(1, 1, 1)
    it = log['iteration']
    ax.plot(it, log['norm_loss'], color='tab:blue', alpha=.3, lw=.8,
            label='norm_loss')
    ax.plot(it, smoothed_loss(log, window), color='tab:blue', lw=2,
            label='smoothed (%d steps)' % window)
    ax.axhline(CHANCE_LOSS, color='tab:red', ls='--', lw=1,
               label='chance ln 8 = %.3f' % CHANCE_LOSS)
    ax.set_xlabel('iteration')
    ax.set_ylabel('loss per pair')
    ax.set_title('context prediction loss (%d steps logged)' % len(it))
    ax.grid(alpha=.3)
    ax.legend(loc='upper right')
    return fig


def timing_figure(log):
    """Step time and data (loader wait) time per iteration, in seconds."""
    fig = Figure(figsize=(8, 4))
    ax = fig.add_subplot(1, 1, 1)
    it = log['iteration']
    ax.plot(it, log['step_time'], lw=1, label='step_time')
    ax.plot(it, log['data_time'], lw=1, label='data_time')
    ax.set_xlabel('iteration')
    ax.set_ylabel('seconds')
    if len(it):
        ax.set_title('median step %.3f s, median data wait %.4f s'
                     % (np.median(log['step_time']),
                        np.median(log['data_time'])))
    ax.grid(alpha=.3)
    ax.legend(loc='upper right')
    return fig


def norms_figure(stats):
    """Parameter norms and update norms per layer (log scale).

    Parameters
    ----------
    stats : dict from :func:`deepcontext.eval.logparse.load_param_stats`

    Returns
    -------
    matplotlib.figure.Figure
        Three axes: ``||W||``, ``||W_k+1 - W_k||`` and their ratio, one
        line per layer, labelled with the layer name.
    """
    fig = Figure(figsize=(13, 4.2))
    axes = [fig.add_subplot(1, 3, i) for i in (1, 2, 3)]
    it = stats['iter']
    for name in stats['nrm']:
        nrm, upd = stats['nrm'][name], stats['intval'][name]
        axes[0].plot(it[:len(nrm)], nrm, marker='.', label=name)
        # intval[k] is the change from entry k to entry k + 1.
        at = it[1:len(upd) + 1]
        axes[1].plot(at, upd, marker='.', label=name)
        axes[2].plot(at, upd / nrm[1:len(upd) + 1], marker='.', label=name)
    titles = ('parameter norm ||W||', 'update norm between entries',
              'update norm / parameter norm')
    for ax, title in zip(axes, titles):
        ax.set_yscale('log')
        ax.set_title(title)
        ax.set_xlabel('iteration')
        ax.grid(alpha=.3, which='both')
    axes[0].legend(fontsize='small', ncol=2, loc='best')
    fig.tight_layout()
    return fig


def plot_run(outdir, dest=None, window=20):
    """Draw loss.png, timing.png and (if saved) norms.png of a run.

    Parameters
    ----------
    outdir : str, the run's folder (holds out.log)
    dest : str, folder for the PNGs (default: ``outdir``)
    window : int, smoothing window of the loss, in steps

    Returns
    -------
    list of str
        Paths of the PNGs written.
    """
    dest = outdir if dest is None else dest
    log = logparse.parse_out_log(os.path.join(outdir, 'out.log'))
    paths = [save(loss_figure(log, window), os.path.join(dest, 'loss.png')),
             save(timing_figure(log), os.path.join(dest, 'timing.png'))]
    stats = logparse.load_param_stats(outdir)
    if stats is not None and len(stats['iter']):
        paths.append(save(norms_figure(stats),
                          os.path.join(dest, 'norms.png')))
    return paths


def run_summary(log, window=20):
    """Numbers behind the plots, for a JSON file next to them.

    Returns
    -------
    dict
        steps, first/last iteration, smoothed loss per pair at the start
        and at the end, chance, and median step and data times.
    """
    if not len(log['iteration']):
        return {'steps': 0}
    smooth = smoothed_loss(log, window)
    first = smoothed_loss({k: v[:window] for k, v in log.items()}, window)
    return {'steps': int(len(log['iteration'])),
            'first_iteration': int(log['iteration'][0]),
            'last_iteration': int(log['iteration'][-1]),
            'smoothed_loss_start': float(first[-1]),
            'smoothed_loss_end': float(smooth[-1]),
            'window': int(window),
            'chance_loss': CHANCE_LOSS,
            'median_step_time': float(np.median(log['step_time'])),
            'median_data_time': float(np.median(log['data_time']))}


def montage_figure(rows, scores=None, title='', row_labels=None,
                   frame_first=True):
    """A grid of patches: each row a query followed by its neighbours.

    Parameters
    ----------
    rows : list of lists of (96, 96, 3) uint8 patches; the first of each
        row is the query (drawn with a red frame).
    scores : list of lists of float, similarity of each neighbour (shown
        under it); optional.
    title : str
    row_labels : list of str, one per row (e.g. the query's image); optional.
    frame_first : bool, set the first of each row apart (a query); False
        for rows of equals (e.g. one filter's top images).

    Returns
    -------
    matplotlib.figure.Figure
        A single axes showing the whole montage.
    """
    side, gap = rows[0][0].shape[0], 6
    ncols = max(len(r) for r in rows)
    h = len(rows) * (side + gap) + gap
    w = ncols * (side + gap) + 3 * gap   # extra gap after the query column
    canvas = np.full((h, w, 3), 255, dtype=np.uint8)
    for i, row in enumerate(rows):
        y = gap + i * (side + gap)
        for j, patch in enumerate(row):
            x = gap + j * (side + gap) + (2 * gap if j and frame_first
                                          else 0)
            canvas[y:y + side, x:x + side] = patch
            if j == 0 and frame_first:   # red frame around the query
                canvas[y - 2:y, x - 2:x + side + 2] = (220, 0, 0)
                canvas[y + side:y + side + 2, x - 2:x + side + 2] = (220, 0, 0)
                canvas[y - 2:y + side + 2, x - 2:x] = (220, 0, 0)
                canvas[y - 2:y + side + 2, x + side:x + side + 2] = (220, 0, 0)
    scale = 0.01   # inches per pixel: 1:1 at save()'s dpi of 100
    fig = Figure(figsize=(w * scale, h * scale + (.5 if title else 0)))
    ax = fig.add_axes([0, 0, 1, h / (h + (25 if title else 0))])
    ax.imshow(canvas, interpolation='nearest')
    ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=10)
    for i, row_scores in enumerate(scores or []):
        y = gap + i * (side + gap) + side - 3
        for j, s in enumerate(row_scores):
            x = gap + (j + 1) * (side + gap) + 2 * gap + 2
            ax.text(x, y, '%.2f' % s, color='yellow', fontsize=6,
                    bbox=dict(facecolor='black', alpha=.6, pad=1, lw=0))
    for i, label in enumerate(row_labels or []):
        ax.text(gap, gap + i * (side + gap) + 8, label, color='white',
                fontsize=5, bbox=dict(facecolor='black', alpha=.6, pad=1,
                                      lw=0))
    return fig


def neighbours_figure(patches, queries, indices, scores, title=''):
    """Montage of query patches and their nearest neighbours.

    Parameters
    ----------
    patches : (N, 96, 96, 3) uint8
    queries : (Q,) indices of the query patches
    indices, scores : (Q, k) from ``neighbours.nearest_neighbours``
    title : str

    Returns
    -------
    matplotlib.figure.Figure
    """
    rows = [[patches[q]] + [patches[j] for j in row]
            for q, row in zip(queries, indices)]
    return montage_figure(rows, scores=[list(s) for s in scores],
                          title=title)


def curves_figure(series, xs, xlabels, xlabel, ylabel, title, hlines=(),
                  logx=False):
    """Lines of a measure against a setting, one per net (the transfer
    protocols' plots: top-1 per layer, mAP per k).

    Parameters
    ----------
    series : dict tag -> (values, stds or None), in percent
    xs : x positions; xlabels : their tick labels
    hlines : (value, label, style dict) reference lines (chance ...)
    logx : bool, a log2 x axis

    Returns
    -------
    matplotlib.figure.Figure
    """
    fig = Figure(figsize=(6.5, 4))
    ax = fig.add_subplot(1, 1, 1)
    for tag, (values, stds) in series.items():
        ax.plot(xs, values, marker='o', label=tag)
        if stds is not None:
            ax.fill_between(xs, np.subtract(values, stds),
                            np.add(values, stds), alpha=.2)
    for value, label, style in hlines:
        ax.axhline(value, label=label, **style)
    if logx:
        ax.set_xscale('log', base=2)
    ax.set_xticks(xs)
    ax.set_xticklabels(xlabels)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=.3)
    ax.legend(loc='best', fontsize='small')
    fig.tight_layout()
    return fig
