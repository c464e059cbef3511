"""Log parsing and plots, on the log of a real (short) training run."""
import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from deepcontext.eval import logparse, plots

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYERS = ['conv1', 'conv2', 'conv3', 'conv4', 'conv5', 'fc6', 'fc7', 'fc8',
          'fc9']
STEPS = 4


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
    """train.py for 4 steps on the test photos, Caffe's INFO lines kept."""
    tmp = tmp_path_factory.mktemp('run')
    (tmp / 'out').mkdir()
    cfg = tmp / 'deepcontext_config.py'
    cfg.write_text('\n'.join([
        'from deepcontext.data import photos as _d',
        'images = _d.test_photos()',
        'out_dir = %r' % str(tmp / 'out'),
        'batch_size = 32', 'loader_workers = 1', 'queue_size = 1',
        'snapshot_every = 1000', 'stats_every = 2', 'resume = "yes"']))
    r = subprocess.run([sys.executable, os.path.join(ROOT, 'train.py'),
                        '--config', str(cfg), '--max-iter', str(STEPS)],
                       cwd=tmp, capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, GLOG_minloglevel='0'))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return str(tmp / 'out' / 'train_out')


def test_parse_out_log_reads_our_lines_only(run_dir):
    path = os.path.join(run_dir, 'out.log')
    text = open(path).read()
    assert 'solver.cpp' in text          # Caffe's own lines are there too
    log = logparse.parse_out_log(path)
    assert set(log) == set(logparse.STEP_FIELDS)
    assert log['iteration'].tolist() == list(range(STEPS))
    assert np.all((log['norm_loss'] > 0) & (log['norm_loss'] < 10))
    assert np.all(log['pairs'] > 0) and np.all(log['patches'] < 32)
    assert np.all(log['step_time'] >= log['data_time'])
    # Caffe's "loss = X" is the same step's summed loss: norm_loss * pairs.
    caffe_losses = [float(line.rsplit('loss = ', 1)[1]) for line in
                    text.splitlines() if 'solver.cpp' in line
                    and 'Iteration' in line and 'loss = ' in line]
    assert np.allclose(caffe_losses, log['norm_loss'] * log['pairs'],
                       rtol=1e-4)


def test_parse_out_log_resumed_run_keeps_the_later_line(run_dir, tmp_path):
    lines = open(os.path.join(run_dir, 'out.log')).read().splitlines()
    step = [line for line in lines if 'norm_loss = ' in line]
    first = logparse.STEP_LINE.search(step[1])
    redo = step[1].replace('norm_loss = %s' % first.group('norm_loss'),
                           'norm_loss = 9.5')
    path = tmp_path / 'out.log'
    # A resumed run repeats iteration 1, and the file ends mid-line.
    path.write_text('\n'.join(lines + [redo, step[2][:40]]))
    log = logparse.parse_out_log(str(path))
    assert log['iteration'].tolist() == list(range(STEPS))
    assert log['norm_loss'][1] == 9.5


def test_last_message_is_the_runs_end_line(run_dir):
    path = os.path.join(run_dir, 'out.log')
    assert (logparse.last_message(path, 'max_iter at iteration')
            == 'max_iter at iteration %d' % STEPS)
    assert logparse.last_message(path, 'diverged at iteration') is None


def test_param_stats_from_json_and_from_npy(run_dir, tmp_path):
    stats = logparse.load_param_stats(run_dir)
    assert stats['iter'].tolist() == [0, 2]
    assert sorted(stats['nrm']) == sorted(LAYERS)
    for name in LAYERS:
        assert len(stats['nrm'][name]) == 2
        assert len(stats['intval'][name]) == 1
        assert stats['intval'][name][0] > 0
    for name in ('nrm.npy', 'intval.npy'):
        shutil.copy(os.path.join(run_dir, name), tmp_path / name)
    old = logparse.load_param_stats(str(tmp_path))
    assert old['iter'].tolist() == [0, 1]     # no iterations in .npy files
    for name in LAYERS:
        assert np.array_equal(old['nrm'][name], stats['nrm'][name])
    assert logparse.load_param_stats(str(tmp_path / 'nothing')) is None


def test_moving_average_against_a_loop():
    x = np.array([3., 1., np.nan, 4., 1., 5., 9.])
    got = logparse.moving_average(x, 3)
    for i in range(len(x)):
        window = x[max(0, i - 2):i + 1]
        assert math.isclose(got[i], np.nanmean(window))


def test_figures_hold_the_expected_series(run_dir):
    log = logparse.parse_out_log(os.path.join(run_dir, 'out.log'))
    ax = plots.loss_figure(log, window=2).axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert sorted(lines) == ['chance ln 8 = 2.079', 'norm_loss',
                             'smoothed (2 steps)']
    assert np.array_equal(lines['norm_loss'].get_ydata(), log['norm_loss'])
    assert np.allclose(lines['chance ln 8 = 2.079'].get_ydata(), math.log(8))
    w = log['pairs'][:2]
    assert math.isclose(lines['smoothed (2 steps)'].get_ydata()[1],
                        np.dot(log['norm_loss'][:2], w) / w.sum())
    ax = plots.timing_figure(log).axes[0]
    assert [line.get_label() for line in ax.get_lines()] == ['step_time',
                                                             'data_time']
    fig = plots.norms_figure(logparse.load_param_stats(run_dir))
    assert len(fig.axes) == 3
    for ax in fig.axes:
        assert [line.get_label() for line in ax.get_lines()] == LAYERS


def test_plot_log_tool_writes_pngs_and_summary(run_dir, tmp_path):
    r = subprocess.run([sys.executable, os.path.join(ROOT, 'tools',
                                                     'plot_log.py'),
                        run_dir, '--out', str(tmp_path), '--window', '2'],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    for name in ('loss.png', 'timing.png', 'norms.png'):
        path = tmp_path / name
        assert path.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            assert im.size[0] >= 600 and im.size[1] >= 300
    summary = json.loads((tmp_path / 'summary.json').read_text())
    assert summary['steps'] == STEPS
    assert math.isclose(summary['chance_loss'], math.log(8))
    assert 'loss per pair' in r.stdout
