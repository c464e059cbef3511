"""out.log as Caffe's own tools read it (deepcontext/train/runlog.py).

A real 20-step run of train.py, then a resumed one appending to the same
out.log, read by Caffe's tools/extra/parse_log.py as the build installs it
(Python 3 by caffe_ext/patches/python3-scripts.patch); and the terminal
filter of ``--quiet``.
"""
import csv
import os
import re
import subprocess
import sys

from conftest import TRAIN, write_config
from deepcontext.train import runlog

BIN = os.path.dirname(sys.executable)
GLOG_PREFIX = re.compile(r'^[IWEF](\d+) \d\d:\d\d:\d\d\.\d{6} +\d+ \S+:\d+\] ')


def train(tmp_path, cfg, max_iter, *extra):
    r = subprocess.run([sys.executable, TRAIN, '--config', cfg, '--max-iter',
                        str(max_iter), '--quiet'] + list(extra),
                       cwd=tmp_path, capture_output=True, text=True,
                       timeout=600, env={k: v for k, v in os.environ.items()
                                         if k != 'GLOG_minloglevel'})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def test_caffe_parse_log_reads_a_real_out_log(tmp_path):
    cfg = write_config(tmp_path, snapshot_every=20, stats_every=10)
    first = train(tmp_path, cfg, 20)
    log = tmp_path / 'out' / 'train_out' / 'out.log'
    text = log.read_text()
    # one prefix form for every glog line: glog 0.6's year is asked away
    months = {m.group(1) for m in map(GLOG_PREFIX.match, text.splitlines())
              if m}
    assert months and all(len(m) == 4 for m in months), months
    assert len(re.findall(r'\] Solving ', text)) == 1
    # Caffe's INFO lines are in out.log, not on the terminal (--quiet)
    assert 'solver.cpp' in text and 'Train net output #0' in text
    shown = first.stdout + first.stderr
    assert 'solver.cpp' not in shown and 'Iteration 19, norm_loss' in shown
    train(tmp_path, cfg, 24)     # resumes from model_iter_20, appends

    r = subprocess.run([os.path.join(BIN, 'parse_log.py'), str(log),
                        str(tmp_path)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    with open(tmp_path / 'out.log.train') as f:
        rows = list(csv.DictReader(f))
    assert [float(row['NumIters']) for row in rows] == list(range(24))
    seconds = [float(row['Seconds']) for row in rows]
    assert seconds[0] >= 0 and seconds == sorted(seconds)
    assert {row['LearningRate'] for row in rows} == {'1e-05'}
    # Caffe's loss is ours times the pairs (Caffe prints 6 digits)
    ours = {int(m.group(1)): (float(m.group(2)), int(m.group(3)))
            for m in re.finditer(r'Iteration (\d+), norm_loss = (\S+), '
                                 r'pairs = (\d+)', log.read_text())}
    for row in rows:
        norm_loss, pairs = ours[int(float(row['NumIters']))]
        assert abs(float(row['loss']) - norm_loss * pairs) < \
            1e-5 * norm_loss * pairs + 1e-3

    # plot_training_log.py (through parse_log.sh): chart 6, loss vs. iters
    r = subprocess.run([os.path.join(BIN, 'plot_training_log.py'), '6',
                        str(tmp_path / 'loss.png'), str(log)], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, MPLBACKEND='Agg'))
    assert r.returncode == 0 and (tmp_path / 'loss.png').stat().st_size, \
        r.stdout + r.stderr
    with open(tmp_path / 'out.log.train') as f:
        table = [line.split() for line in f if not line.startswith('#')]
    assert [int(t[0]) for t in table] == list(range(24))


def test_terminal_filter_hides_caffe_info_only():
    lines = [
        b'I1130 00:31:44.801873 15377 train.py:0] ours',
        b"    out_dir = 'x'",
        b'WARNING: Logging before InitGoogleLogging() is written to STDERR',
        b'I1130 00:31:44.810009 15377 solver.cpp:45] Initializing solver '
        b'from parameters: ',
        b'base_lr: 1e-05',
        b'layer {',
        b'  name: "data"',
        b'}',
        b'W1130 00:31:44.810009 15377 net.cpp:45] a warning',
        b'I1130 00:31:44.810009 15377 solver.cpp:239] Iteration 1',
        b'Traceback (most recent call last):',
        b"KeyError: 'a'",
        b'I1130 00:31:44.810009 15377 train.py:0] Iteration 1, norm_loss',
        b'unfinished']
    data = b'\n'.join(lines)
    f = runlog.TerminalFilter()
    shown = f.feed(data[:97]) + f.feed(data[97:]) + f.flush()
    assert shown.split(b'\n') == [lines[i] for i in (0, 1, 8, 10, 11, 12,
                                                     13)]


def test_debug_info_logs_forward_and_backward_when_on(tmp_path):
    cfg = write_config(tmp_path, debug_info=True, snapshot_every=1000)
    train(tmp_path, cfg, 2)
    out = tmp_path / 'out' / 'train_out'
    assert 'debug_info: true' in (out / 'solver.prototxt').read_text()
    text = (out / 'out.log').read_text()
    assert '[Forward] Layer conv1, top blob conv1 data:' in text
    assert '[Backward] Layer conv1, param blob 0 diff:' in text
    # the default, as the original in effect: no per-layer lines
    (tmp_path / 'off').mkdir()
    cfg = write_config(tmp_path, debug_info=False, snapshot_every=1000,
                       out_dir=str(tmp_path / 'off'))
    train(tmp_path, cfg, 2)
    off = tmp_path / 'off' / 'train_out'
    assert 'debug_info:' not in (off / 'solver.prototxt').read_text()
    assert '[Forward]' not in (off / 'out.log').read_text()
