"""Photos from pinned Debian packages (data/debian_photos.py).

The .deb reader is checked against dpkg-deb's own packages; the fetched
photos (``make photos``, which ``make test`` runs first) against the
selection.
"""
import io
import os
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from deepcontext.data import debian_photos, photos


def _png(size, colour):
    out = io.BytesIO()
    Image.new('RGB', size, colour).save(out, 'PNG')
    return out.getvalue()


@pytest.mark.skipif(shutil.which('dpkg-deb') is None, reason='no dpkg-deb')
@pytest.mark.parametrize('compression', ['xz', 'gzip'])
def test_deb_members_reads_what_dpkg_deb_builds(tmp_path, compression):
    tree = tmp_path / 'pkg'
    (tree / 'DEBIAN').mkdir(parents=True)
    (tree / 'DEBIAN' / 'control').write_text(
        'Package: dc-test\nVersion: 1.0\nArchitecture: all\n'
        'Maintainer: t <t@example.org>\nDescription: test\n')
    photo = _png((3, 2), (10, 20, 30))
    (tree / 'usr' / 'share' / 'pics').mkdir(parents=True)
    (tree / 'usr' / 'share' / 'pics' / 'a.png').write_bytes(photo)
    deb = str(tmp_path / 'dc-test.deb')
    subprocess.run(['dpkg-deb', '-Z' + compression, '--root-owner-group',
                    '--build', str(tree), deb], check=True,
                   capture_output=True)
    members = debian_photos.deb_members(deb)
    assert members == {'usr/share/pics/a.png': photo}


def test_deb_members_refuses_other_files(tmp_path):
    bad = tmp_path / 'x.deb'
    bad.write_bytes(b'PK\x03\x04 a zip file')
    with pytest.raises(debian_photos.FetchError, match='not a Debian package'):
        debian_photos.deb_members(str(bad))
    bad.write_bytes(b'!<arch>\n')
    with pytest.raises(debian_photos.FetchError, match='no data.tar'):
        debian_photos.deb_members(str(bad))


def test_prepare_keeps_small_photos_shrinks_big_ones_and_rotates():
    small = _png((300, 200), (0, 128, 0))
    assert debian_photos.prepare(small) == (small, None)
    # 2048 x 1024, left half red, right half blue -> 1024 x 512 JPEG.
    big = Image.new('RGB', (2048, 1024), (255, 0, 0))
    big.paste((0, 0, 255), (1024, 0, 2048, 1024))
    buf = io.BytesIO()
    big.save(buf, 'PNG')
    data, ext = debian_photos.prepare(buf.getvalue())
    img = Image.open(io.BytesIO(data))
    assert ext == '.jpg' and img.format == 'JPEG' and img.size == (1024, 512)
    px = np.asarray(img.convert('RGB')).astype(int)
    assert px[256, 100].tolist()[0] > 240 and px[256, 900].tolist()[2] > 240
    # Top red, bottom blue, turned 90 degrees clockwise: red on the right.
    tall = Image.new('RGB', (40, 20), (255, 0, 0))
    tall.paste((0, 0, 255), (0, 10, 40, 20))
    buf = io.BytesIO()
    tall.save(buf, 'PNG')
    data, ext = debian_photos.prepare(buf.getvalue(), clockwise=90)
    px = np.asarray(Image.open(io.BytesIO(data)).convert('RGB')).astype(int)
    assert px.shape == (40, 20, 3)
    assert px[20, 17, 0] > 200 and px[20, 2, 2] > 200


def test_a_wrong_package_is_refused_and_nothing_is_left(tmp_path,
                                                        monkeypatch):
    debs = tmp_path / 'debs'
    debs.mkdir()
    name = os.path.basename(debian_photos.DEBS['kphotoalbum'].filename)
    (debs / name).write_bytes(b'!<arch>\nnot the pinned package')
    monkeypatch.setenv('DEEPCONTEXT_DEBS', str(debs))
    monkeypatch.setenv('DEEPCONTEXT_CACHE', str(tmp_path / 'cache'))
    with pytest.raises(debian_photos.FetchError, match='SHA-256'):
        debian_photos.fetch(report=lambda s: None)
    assert os.listdir(str(tmp_path / 'cache' / 'photos')) == []
    with pytest.raises(FileNotFoundError, match='make photos'):
        debian_photos.photos()
    assert set(debian_photos.missing()) == set(debian_photos.DEBS)


def test_the_pinned_packages_give_the_selected_photos():
    assert debian_photos.missing() == []
    found = debian_photos.photos()
    per_package = {}
    for path in found:
        rel = os.path.relpath(path, debian_photos.cache_dir())
        per_package.setdefault(rel.split(os.sep)[0].split('_')[0], []).append(
            path)
    counts = {k: len(v) for k, v in per_package.items()}
    assert counts == {'kphotoalbum': 24, 'mate-backgrounds': 12,
                      'lomiri-wallpapers-16.04': 13,
                      'lomiri-wallpapers-20.04': 1,
                      'plasma-workspace-wallpapers': 10,
                      'gcompris-qt-data': 105}
    for path in found:
        with Image.open(path) as img:
            assert max(img.size) <= debian_photos.MAX_SIDE
            assert min(img.size) >= debian_photos.MIN_SIDE, path
    # KPhotoAlbum keeps wayne.jpg on its side (800 x 600 on disk, 90
    # degrees in its index.xml): stored upright, portrait.
    kpa = dict((os.path.basename(p), p) for p in per_package['kphotoalbum'])
    assert Image.open(kpa['wayne.jpg']).size == (600, 800)
    assert set(found) <= set(photos.demo_photos())


def test_photos_prepared_under_other_rules_are_not_used(monkeypatch):
    deb = debian_photos.DEBS['gcompris-qt-data']
    before = debian_photos.package_dir(deb)
    monkeypatch.setattr(debian_photos, 'MAX_ASPECT', 3.0)
    assert debian_photos.package_dir(deb) != before
    assert debian_photos.missing() == list(debian_photos.DEBS)
