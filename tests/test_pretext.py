"""Pretext accuracy (deepcontext/eval/pretext.py, tools/eval_pretext.py).

Fixtures (a real BatchNorm snapshot, held-out photos) are in conftest.py.
"""
import json

import numpy as np

from conftest import held_out, run_tool
from deepcontext.data import batches, photos
from deepcontext.eval import features, pretext


def test_pretext_loss_agrees_with_caffe(trained):
    net, _ = trained
    data, pairs, labels, _ = next(batches.pretext_batches(
        held_out(1), batch_size=64, grids_per_image=1))
    fc9 = features.extract(net, data, ['fc9'], pairs=pairs,
                           labels=labels)['fc9']
    assert fc9.shape == (len(labels), 8)
    net.forward(start='first')          # the rest of the net: loss layer
    ours = -features.log_softmax(fc9)[np.arange(len(labels)), labels].sum()
    assert np.isclose(ours, float(net.blobs['loss'].data), rtol=1e-4)


def test_pretext_accuracy_in_range(trained):
    net, _ = trained
    r = pretext.pretext_accuracy(net, held_out(2), batch_size=64,
                                 grids_per_image=1, report=lambda s: None)
    assert 0 <= r['accuracy'] <= 1 and r['chance'] == 0.125
    assert 0.125 <= r['majority_baseline'] < 0.25
    assert r['pairs'] == np.sum(r['confusion']) > 0
    assert r['images'] == 2 and r['images_skipped'] == 0
    assert np.isclose(r['accuracy'], np.trace(r['confusion']) / r['pairs'])
    # 4 SGD steps at lr 1e-3 on random labels: finite, not near chance
    assert np.isfinite(r['loss_per_pair']) and 0 < r['loss_per_pair'] < 50
    print('pretext accuracy of the 4-step snapshot: %.3f' % r['accuracy'])


def test_eval_pretext_tool(bn_snapshot, tmp_path):
    out = run_tool('eval_pretext.py', '--weights', bn_snapshot[2], '--random',
                   '--images', *held_out(1), '--grids', '1',
                   '--batch-size', '64', '--out', tmp_path)
    assert 'BatchNorm global' in out and 'BatchNorm batch' in out
    res = json.loads((tmp_path / 'pretext.json').read_text())['results']
    assert [r['net'] for r in res] == ['trained', 'random']
    assert all(0 <= r['accuracy'] <= 1 for r in res)


def test_eval_pretext_defaults_to_the_held_out_photos(bn_snapshot, tmp_path):
    out = run_tool('eval_pretext.py', '--weights', bn_snapshot[2],
                   '--max-images', '2', '--grids', '1', '--out', tmp_path)
    assert 'on 2 images from the embedded held-out photos' in out
    used = json.loads((tmp_path / 'pretext.json').read_text())['images']
    assert used == photos.held_out_photos()[:2]
