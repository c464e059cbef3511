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


def _torch_avg_pool(maps, k, s, p):
    """Independent: PyTorch's AvgPool2d, one window at a time."""
    n, c, h, w = maps.shape
    oh, ow = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    out = np.zeros((n, c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            y0, x0 = i * s - p, j * s - p
            ys = slice(max(y0, 0), min(y0 + k, h))
            xs = slice(max(x0, 0), min(x0 + k, w))
            out[:, :, i, j] = maps[:, :, ys, xs].sum(axis=(2, 3)) / (k * k)
    return out


def test_deepcluster_pooling_against_a_window_loop():
    rs = np.random.RandomState(0)
    for name, (k, s, p) in layer_probe.DEEPCLUSTER_POOL.items():
        maps = rs.rand(2, 3, 13 + k, 11 + k).astype(np.float32)
        assert np.allclose(layer_probe.avg_pool(maps, k, s, p),
                           _torch_avg_pool(maps, k, s, p), atol=1e-6)
    # DeepCluster's AlexNet maps at 224 (55, 27, 13) give the published
    # sizes; ours at 224 (56, 28, 14) and at 216 (54, 27, 13).
    def dims(sides):
        return [layer_probe.pool_layer(
            name, np.zeros((1, c, n, n), np.float32)).shape[1]
            for name, c, n in zip(layer_probe.LAYERS, (96, 256, 384, 384,
                                                       256), sides)]
    assert dims((55, 27, 13, 13, 13)) == [9600, 9216, 9600, 9600, 9216]
    assert dims((56, 28, 14, 14, 14)) == [9600, 12544, 9600, 9600, 12544]
    assert dims((54, 27, 13, 13, 13)) == [9600, 9216, 9600, 9600, 9216]
    # A 1-pixel map with padding 3 and kernel 6: the padding zeros count.
    one = np.ones((1, 1, 1, 1), np.float32)
    assert layer_probe.avg_pool(one, 6, 6, 3)[0, 0, 0, 0] == \
        pytest.approx(1 / 36.)


def test_zhang_bilinear_resize_by_hand():
    maps = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    # 4 -> 2 sampling at cell centres (source 0.5 and 2.5): 2x2 means.
    assert layer_probe.bilinear_resize(maps, 2).tolist() == \
        [[[[2.5, 4.5], [10.5, 12.5]]]]
    # Upsizing a constant map keeps it; sides 10/6/5/5/6 whatever the map.
    assert np.allclose(layer_probe.bilinear_resize(
        np.full((1, 2, 3, 3), 7, np.float32), 5), 7)
    sides = [layer_probe.pool_layer(name, np.ones((1, 1, 13, 13)),
                                    'zhang').shape[1]
             for name in layer_probe.LAYERS]
    assert sides == [100, 36, 25, 25, 36]
    # Other layers, and the old rule: the grid means.
    assert layer_probe.pool_layer('pool5', np.ones((1, 256, 6, 6)),
                                  'zhang').shape == (1, 256 * 6 * 6)
    with pytest.raises(ValueError, match='pooling'):
        layer_probe.pool_layer('relu1', maps, 'max')


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
        # conv1 at side 96 is 24x24: DeepCluster's 6/6/3 pooling -> 5x5.
        assert x.shape == (12, 5 * 5 * 96) and np.isfinite(x).all()
    # conv5 at side 96 is a 6x6 map: 2/2 pooling -> 3x3x256.
    assert res['results']['random']['relu5']['dim'] == 2304
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
    (['--mean', '1,2'], '--mean must be imagenet, none or B,G,R'),
    (['--input-scale', '-1'], '--input-scale must be auto or a positive'),
])
def test_probe_layers_tool_refuses_bad_input(tmp_path, args, message):
    root = elpv_folder(tmp_path / 'set', per_class=2)
    cmd = [sys.executable, os.path.join(ROOT, 'tools', 'probe_layers.py'),
           '--images', root, '--side', '96'] + args
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and 'Traceback' not in r.stderr
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_probe_layers_tool_streaming_sgd_and_zhang_pooling(tmp_path):
    root = elpv_folder(tmp_path / 'set')
    out = tmp_path / 'out'
    run_tool('probe_layers.py', '--images', root, '--side', '96',
             '--layers', 'relu1', 'relu5', '--pooling', 'zhang',
             '--classifier', 'sgd', '--out', out)
    res = json.loads((out / 'probe_layers.json').read_text())
    r = res['results']['random']
    # Resized to 10x10 and 6x6 whatever the map (24x24 and 6x6 here).
    assert r['relu1']['dim'] == 10 * 10 * 96 and r['relu5']['dim'] == 9216
    assert r['relu5']['iterations'] > 0 and 0 <= r['relu5']['accuracy'] <= 1


def test_someone_elses_caffenet_through_probe_layers(tmp_path):
    """BVLC CaffeNet's deploy form (groups, BGR 0-255 minus the mean) with
    --preprocess caffe-bgr: the conv5 features the tool keeps are those of
    pycaffe's own Transformer pipeline and a plain forward, pooled."""
    import caffe
    from test_features import caffenet_deploy
    from deepcontext.eval import transfer_sets
    root = tmp_path / 'set'
    src = debian_photos.gcompris_categories()
    for name in sorted(os.listdir(src))[:2]:
        os.makedirs(root / name)
        for f in sorted(os.listdir(os.path.join(src, name)))[:4]:
            os.symlink(os.path.join(src, name, f), root / name / f)
    deploy = caffenet_deploy(tmp_path / 'deploy.prototxt', batch=1)
    caffe.set_random_seed(5)
    net = caffe.Net(deploy, caffe.TEST)
    weights = str(tmp_path / 'caffenet.caffemodel')
    net.save(weights)
    out = tmp_path / 'out'
    log = run_tool('probe_layers.py', '--definition', deploy, '--weights',
                   weights, '--images', root, '--preprocess', 'caffe-bgr',
                   '--layers', 'relu5', '--pooling', 'grid', '--side', '227',
                   '--batch-size', '4', '--keep-features', '--out', out)
    assert 'input: caffe-bgr, BGR 0-255 minus (104, 117, 123), x 1,' in log
    res = json.loads((out / 'probe_layers.json').read_text())
    assert res['results']['trained']['input'] == dict(
        preprocess='caffe-bgr', mean=[104.0, 117.0, 123.0], input_scale=1.0,
        channel_order='bgr')
    kept = np.load(str(out / 'features' / 'trained' / 'relu5.npy'))
    # The same images as a Caffe user feeds them.
    t = caffe.io.Transformer({'data': net.blobs['data'].data.shape})
    t.set_transpose('data', (2, 0, 1))
    t.set_channel_swap('data', (2, 1, 0))
    t.set_raw_scale('data', 255)
    t.set_mean('data', np.array([104.0, 117.0, 123.0]))
    paths = transfer_sets.labelled_set(str(root))[0]
    assert kept.shape[0] == len(paths) == 8
    for row, path in zip(kept, paths):
        net.blobs['data'].data[0] = t.preprocess(
            'data', caffe.io.load_image(path))
        net.forward()
        conv5 = net.blobs['conv5'].data.copy()       # after relu5, in place
        want = features.grid_pool(conv5, layer_probe.pool_grid(256), 'mean')
        assert np.abs(row - want[0]).max() <= 1e-4 * np.abs(want).max()
