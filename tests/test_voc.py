"""The VOC devkit reader and the proposal formats, on the photo fixture."""
import os

import numpy as np
import pytest
import scipy.io

from deepcontext.data import voc


def test_records_boxes_difficult_and_mat_proposals(voc_fixture):
    recs = voc.load(os.path.dirname(voc_fixture['root']), 'trainval',
                    voc_fixture['trainval_mat'])
    assert [r['id'] for r in recs] == ['astronaut', 'camera', 'chelsea',
                                       'motorcycle_left']
    moto = recs[3]
    # XML is 1-based; records are 0-based inclusive
    assert moto['boxes'].tolist() == [[54, 44, 409, 274], [19, 59, 169, 179]]
    assert [voc.CLASSES[c] for c in moto['classes']] == ['motorbike', 'chair']
    assert moto['difficult'].tolist() == [False, True]
    assert (moto['width'], moto['height']) == (445, 300)
    # the .mat holds 1-based y1 x1 y2 x2 (Fast R-CNN's selective search)
    raw = scipy.io.loadmat(voc_fixture['trainval_mat'])['boxes'].ravel()[0]
    assert np.array_equal(recs[0]['proposals'],
                          raw[:, (1, 0, 3, 2)].astype(np.float32) - 1)
    assert np.array_equal(recs[0]['proposals'] + 1,
                          voc_fixture['proposals']['trainval'][0])


def test_box_file_proposals(voc_fixture):
    recs = voc.load(voc_fixture['root'], 'test', voc_fixture['test_boxes'])
    for r, p in zip(recs, voc_fixture['proposals']['test']):
        assert np.array_equal(r['proposals'] + 1, p)


def test_bad_inputs_are_one_clear_error(voc_fixture, tmp_path):
    with pytest.raises(voc.VocError, match='not a VOC folder'):
        voc.load(str(tmp_path), 'trainval')
    with pytest.raises(voc.VocError, match='no image set'):
        voc.load(voc_fixture['root'], 'nosuchset')
    bad = tmp_path / 'boxes.txt'
    bad.write_text('camera 1 2 3\n')
    with pytest.raises(voc.VocError, match='line 1'):
        voc.load(voc_fixture['root'], 'test', str(bad))
    with pytest.raises(voc.VocError, match='proposals for 4 images'):
        voc.load(voc_fixture['root'], 'test', voc_fixture['trainval_mat'])


def test_box_overlaps_by_hand():
    a = np.array([[0, 0, 9, 9]])               # 10 x 10 = 100 pixels
    b = np.array([[0, 0, 9, 9], [5, 0, 14, 9], [10, 10, 19, 19]])
    # second: intersection 5x10 = 50, union 150
    np.testing.assert_allclose(voc.box_overlaps(a, b), [[1, 50 / 150, 0]])
