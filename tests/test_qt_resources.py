"""Files inside Qt resource files (data/qt_resources.py).

Checked on GCompris's .rcc files as Qt's rcc wrote them: the categorisation
pictures that ``make photos`` read out of them (debian_photos.py) come out
as the five class folders of the pinned version, with their counts, and
they decode.
"""
import numpy as np
import pytest

from deepcontext.data import debian_photos, labelled_folder
from deepcontext.data.decode import load_rgb
from deepcontext.data.qt_resources import ResourceError, read_rcc


def test_gcompris_categories_read_from_qt_resources():
    root = debian_photos.gcompris_categories()
    paths, labels, names = labelled_folder.open_labelled(root)
    assert names == ('fishes', 'monuments', 'others', 'renewable', 'tools')
    assert np.bincount(labels).tolist() == [28, 27, 17, 29, 39]
    for path in paths[::10]:
        assert load_rgb(path).ndim == 3


def test_read_rcc_refuses_what_is_not_a_qt_resource(tmp_path):
    bad = tmp_path / 'x.rcc'
    bad.write_bytes(b'RIFF....WEBP')
    with pytest.raises(ResourceError, match='qres'):
        read_rcc(str(bad))
    bad.write_bytes(b'qres' + (9).to_bytes(4, 'big') + bytes(12))
    with pytest.raises(ResourceError, match='version 9'):
        read_rcc(str(bad))
