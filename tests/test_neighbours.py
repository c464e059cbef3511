"""Nearest-neighbour patches (deepcontext/eval/neighbours.py, tools/nn_patches.py).

Fixtures (a real BatchNorm snapshot, held-out photos) are in conftest.py.
"""
import json

import numpy as np
from PIL import Image

from conftest import held_out, run_tool
from deepcontext.eval import neighbours, plots


def test_normalized_correlation_is_corrcoef():
    x = np.random.RandomState(1).randn(5, 7)
    assert np.allclose(neighbours.normalized_correlation(x, x),
                       np.corrcoef(x))


def test_nearest_neighbours_skip_the_query_and_its_image(trained, patches):
    net, _ = trained
    crops, owner, corners = patches
    assert crops.shape[1:] == (96, 96, 3) and crops.dtype == np.uint8
    assert len(crops) == len(owner) == len(corners) == 12
    found = neighbours.patch_neighbours(net, crops, ['pool5', 'fc6'],
                                        [0, 5], k=4, groups=owner)
    for idx, scores in found.values():
        assert idx.shape == scores.shape == (2, 4)
        assert np.all(owner[idx] != owner[[0, 5]][:, None])
        assert np.all(np.diff(scores, axis=1) <= 0)
        assert np.all(np.abs(scores) <= 1 + 1e-9)
    fig = plots.neighbours_figure(crops, [0, 5], *found['fc6'], title='t')
    assert len(fig.axes) == 1


def test_nn_patches_tool(bn_snapshot, tmp_path):
    tmp_path = tmp_path / 'not_yet'       # the tool makes its --out folder
    out = run_tool('nn_patches.py', '--weights', bn_snapshot[2], '--random',
                   '--images', *held_out(3), '--per-image', '2',
                   '--queries', '2', '--k', '3', '--layers', 'fc6',
                   '--out', tmp_path)
    assert 'mean correlation' in out
    for tag in ('trained', 'random'):
        with Image.open(tmp_path / ('nn_fc6_%s.png' % tag)) as im:
            assert im.format == 'PNG' and im.size[0] > 4 * 96
    res = json.loads((tmp_path / 'nn.json').read_text())
    scores = res['nets']['trained']['layers']['fc6']['correlation']
    assert np.array(scores).shape == (2, 3)
    assert np.all(np.abs(scores) <= 1 + 1e-9)
