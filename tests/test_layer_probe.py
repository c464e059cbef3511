"""Linear probes per layer (eval/layer_probe.py, data/labelled_folder.py,
tools/probe_layers.py).

Fixtures: an ImageFolder tree of elpv solar cells (mono / poly, labels from
the installed package), linked into a temporary folder; synthetic features
for the classifier checks.  Metrics are checked against hand-worked cases.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, run_tool
from deepcontext.data import debian_photos, labelled, labelled_folder
from deepcontext.eval import features, layer_probe
from labelled_fixtures import elpv_folder


def test_pool_grid_gives_the_published_dimensions():
    dims = {c: layer_probe.pool_grid(c) ** 2 * c for c in (96, 256, 384)}
    assert dims == {96: 9600, 256: 9216, 384: 9600}
    maps = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    # grid 2 on a 4x4 map: the means of the four 2x2 quadrants, by hand.
    pooled = features.grid_pool(maps, 2, 'mean')
    assert pooled.tolist() == [[2.5, 4.5, 10.5, 12.5]]
    big = np.ones((2, 96, 20, 20), dtype=np.float32)
    assert layer_probe.pool_to_target(big).shape == (2, 9600)
    small = np.ones((2, 96, 4, 4), dtype=np.float32)   # grid clipped to 4
    assert layer_probe.pool_to_target(small).shape == (2, 96 * 16)


def _probe_on(tmp_path, x, y, seed=0):
    path = str(tmp_path / 'relu1.npy')
    np.save(path, x.astype(np.float32))
    train, test = labelled.fixed_split(y, 0.5, seed)
    return layer_probe.probe_files({'relu1': path}, y, train, test,
                                   report=lambda s: None)['relu1']


def test_separable_features_near_100_shuffled_near_chance(tmp_path):
    rs = np.random.RandomState(0)
    y = np.repeat(np.arange(4), 60)
    centres = rs.randn(4, 40) * 3
    x = centres[y] + rs.randn(len(y), 40)
    assert _probe_on(tmp_path, x, y)['accuracy'] >= 0.98
    shuffled = rs.permutation(y)
    acc = _probe_on(tmp_path, x, shuffled)['accuracy']
    assert abs(acc - 0.25) < 0.12, acc


def test_labelled_folder_and_list_file(tmp_path):
    root = elpv_folder(tmp_path / 'set', per_class=3)
    paths, labels, names = labelled_folder.open_labelled(root)
    assert names == ('mono', 'poly') and labels.tolist() == [0] * 3 + [1] * 3
    lst = tmp_path / 'list.txt'
    lst.write_text('# comment\n' + ''.join(
        '%s %s\n' % (os.path.relpath(p, str(tmp_path)), names[l])
        for p, l in zip(paths, labels)))
    p2, l2, n2 = labelled_folder.open_labelled(str(lst))
    assert p2 == [os.path.join(str(tmp_path), os.path.relpath(p, str(
        tmp_path))) for p in paths] and l2.tolist() == labels.tolist()
    lst.write_text('%s 0\n%s 1\n' % (paths[0], paths[4]))
    assert labelled_folder.open_labelled(str(lst))[2] == ('0', '1')


@pytest.mark.parametrize('make, message', [
    (lambda d: (d / 'data.mdb').write_bytes(b'x'), 'LMDB'),
    (lambda d: (d / 'a.jpg').write_bytes(b'x'), 'outside class folders'),
    (lambda d: (d / 'only').mkdir(), 'at least two classes'),
    (lambda d: [(d / c).mkdir() for c in 'ab'], 'has no images'),
])
def test_labelled_folder_refusals(tmp_path, make, message):
    make(tmp_path)
    with pytest.raises(ValueError, match=message):
        labelled_folder.open_labelled(str(tmp_path))


def test_list_file_refusals(tmp_path):
    lst = tmp_path / 'l.txt'
    lst.write_text('missing.jpg 0\n')
    with pytest.raises(ValueError, match='no such image'):
        labelled_folder.open_labelled(str(lst))
    lst.write_text('justonefield\n')
    with pytest.raises(ValueError, match='PATH LABEL'):
        labelled_folder.open_labelled(str(lst))
    with pytest.raises(ValueError, match='LMDB'):
        labelled_folder.open_labelled('lmdb:/nowhere')


def test_probe_layers_tool(bn_snapshot, tmp_path):
    root = elpv_folder(tmp_path / 'set')
    out = tmp_path / 'out'
    log = run_tool('probe_layers.py', '--weights', bn_snapshot[2],
                   '--random', '--images', root, '--side', '96',
                   '--batch-size', '6', '--keep-features', '--out', out)
    res = json.loads((out / 'probe_layers.json').read_text())
    assert (out / 'probe_layers.png').stat().st_size > 1000
    for tag in ('trained', 'random'):
        for layer in layer_probe.LAYERS:
            r = res['results'][tag][layer]
            assert 0 <= r['accuracy'] <= 1 and r['test'] == 6
        x = np.load(str(out / 'features' / tag / 'relu1.npy'))
        assert x.shape == (12, 9600) and np.isfinite(x).all()
    # conv5 at side 96 is a 6x6 map: grid 6 -> 9216 dimensions.
    assert res['results']['random']['relu5']['dim'] == 9216
    assert 'ETA' in log and 'conv5' in log


def test_probe_layers_on_gcompris_categories(bn_snapshot, tmp_path):
    # Five classes of real photos, read out of GCompris's Qt resources.
    out = tmp_path / 'out'
    run_tool('probe_layers.py', '--weights', bn_snapshot[2], '--random',
             '--images', debian_photos.gcompris_categories(),
             '--per-class', '8', '--side', '96',
             '--layers', 'relu1', 'relu5', '--out', out)
    res = json.loads((out / 'probe_layers.json').read_text())
    for tag in ('trained', 'random'):
        for layer in ('relu1', 'relu5'):
            r = res['results'][tag][layer]
            assert r['train'] + r['test'] == 40 and r['test'] >= 15
            assert 0 <= r['accuracy'] <= 1


@pytest.mark.parametrize('args, message', [
    (['--weights', 'nope.caffemodel'], 'no such file'),
    (['--layers', 'relu9'], 'unknown layer relu9'),
    (['--images', 'lmdb:/x'], 'LMDB'),
])
def test_probe_layers_tool_refuses_bad_input(tmp_path, args, message):
    root = elpv_folder(tmp_path / 'set', per_class=2)
    cmd = [sys.executable, os.path.join(ROOT, 'tools', 'probe_layers.py'),
           '--images', root, '--side', '96'] + args
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and 'Traceback' not in r.stderr
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1
