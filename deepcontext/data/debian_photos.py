"""Photos from Debian packages, fetched once into the cache.

The demo's photo pool (``photos.py``) grows with photographs that Debian
packages ship: KPhotoAlbum's demo album, wallpaper packages (MATE's nature
set, Lomiri's, Plasma's) and GCompris's photos, which sit inside Qt
resource files (``qt_resources.py``).  GCompris's categorisation pictures
also make a small labelled set in ImageFolder layout
(:func:`gcompris_categories`).

Each package is pinned by version and SHA-256 (Debian 12 "bookworm"),
downloaded from ``$DEBIAN_MIRROR`` (default ``http://deb.debian.org/debian``)
or taken from ``$DEEPCONTEXT_DEBS`` (a folder holding the .deb files, e.g.
from ``apt-get download``, for
machines without network), and unpacked with Python's own ``ar`` reading and
``tarfile``: no root, no dpkg, nothing installed system-wide.  Only the
photos listed here are kept, in ``$DEEPCONTEXT_CACHE/photos/`` (default
``~/.cache/deepcontext/photos``); the .deb is not kept.

Preparation, the same for every photo: a photo whose longer side exceeds
:data:`MAX_SIDE` is shrunk to it with Pillow's Lanczos filter and stored as
JPEG quality 95 (wallpapers are 2-15 megapixels; ImageNet's photos average
about 0.1-0.2, and the loader resizes every image to 150k-450k pixels
anyway); a smaller one is stored byte for byte.  KPhotoAlbum's demo keeps
four photos rotated on disk and the upright angle in its ``index.xml``;
those four are turned upright here.

The selection (by name, from contact sheets of every candidate) keeps
photographs only: illustrations, renderings, gradients, logos and
paintings are left out; so are packages whose pictures are nearly all
diagrams or screenshots (opencv-doc) or illustrations (gnome-backgrounds,
ukui-wallpapers, sway-backgrounds).

``python -m deepcontext.data.debian_photos`` fetches what is missing (the
Makefile runs it) and prints one line per package.
"""

import argparse
import collections
import hashlib
import io
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request

from PIL import Image

from deepcontext.data.qt_resources import parse_rcc

# Longer side, in pixels, above which a photo is shrunk when prepared.
MAX_SIDE = 1024
# Smallest accepted shorter side, in pixels, of a demo photo as stored (for
# every source: photos.py takes it from here): tiny images would mostly be
# upsampled blur after the loader resizes them to 150k-450k pixels.
MIN_SIDE = 256
# Largest accepted ratio of the longer to the shorter side: at the loader's
# smallest size (150k pixels) both sides must exceed 2 * 96 + 48 + 7 = 247
# for a 2x2 patch grid, i.e. a ratio below (sqrt(150000) / 247) ** 2 = 2.46.
MAX_ASPECT = 2.4

_Deb = collections.namedtuple('_Deb', 'name version filename sha256 size')

DEBS = {d.name: d for d in [
    _Deb('kphotoalbum', '5.9.1-1',
         'pool/main/k/kphotoalbum/kphotoalbum_5.9.1-1_amd64.deb',
         '00f8b26b5db1beb30a822d15f464b3c68ffa556d267870aa98a59aaaaf81ec43',
         12186928),
    _Deb('mate-backgrounds', '1.26.0-1',
         'pool/main/m/mate-backgrounds/mate-backgrounds_1.26.0-1_all.deb',
         '7bf4c2209f34b4f61ba6d24c8b58c28b361e82e4b943aae6d42c030169af9e04',
         46638500),
    _Deb('lomiri-wallpapers-16.04', '20.04.0-2',
         'pool/main/l/lomiri-wallpapers/'
         'lomiri-wallpapers-16.04_20.04.0-2_all.deb',
         'a99ff6a3bfe451e4cc0682ecb3cc82e71740626d59e4845ae34a0a0e45421eab',
         15783184),
    _Deb('lomiri-wallpapers-20.04', '20.04.0-2',
         'pool/main/l/lomiri-wallpapers/'
         'lomiri-wallpapers-20.04_20.04.0-2_all.deb',
         'd44e89b8473aafe64a5b678f014862dc31335aaaf18665c544d985d854f1a709',
         11377208),
    _Deb('plasma-workspace-wallpapers', '4:5.27.5-2',
         'pool/main/p/plasma-workspace-wallpapers/'
         'plasma-workspace-wallpapers_5.27.5-2_all.deb',
         '32cd18b71c8c938a18b3b351f217c02ac590e323caa3cf322fbb875ce8892f8b',
         94047772),
    _Deb('gcompris-qt-data', '3.1-2',
         'pool/main/g/gcompris-qt/gcompris-qt-data_3.1-2_all.deb',
         'e9cf06ab2105529068df73085784e835d2ff03f870d2a8091f09125d40abac9f',
         44196292),
]}

# KPhotoAlbum's demo album: every photo (qt-logo.jpg is a photo of three
# people in Qt shirts).  Clockwise angles from the album's index.xml.
_KPA_DIR = 'usr/share/kphotoalbum/demo/'
_KPA = (
    'anne_helene.jpg', 'bar55.jpg', 'bar55_2.jpg', 'blackie.jpg',
    'cold_water.jpg', 'donna.jpg', 'donna_2.jpg', 'grand_canyon_1.jpg',
    'grand_canyon_2.jpg', 'grand_canyon_3.jpg', 'jesper.jpg', 'jesper_2.jpg',
    'new_wave_1.jpg', 'new_wave_2.jpg', 'pool.jpg', 'pool_2.jpg',
    'qt-logo.jpg', 'skagen.jpg', 'skagen_2.jpg', 'snow.jpg', 'spiff.jpg',
    'spiff_2.jpg', 'sunset.jpg', 'wayne.jpg')
_KPA_CLOCKWISE = {'new_wave_1.jpg': 90, 'grand_canyon_1.jpg': 180,
                  'wayne.jpg': 90, 'pool_2.jpg': 270}

# MATE's nature folder (all photographs); abstract/ and desktop/ are art.
_MATE_DIR = 'usr/share/backgrounds/mate/nature/'
_MATE = (
    'Aqua.jpg', 'Blinds.jpg', 'Dune.jpg', 'FreshFlower.jpg', 'Garden.jpg',
    'GreenMeadow.jpg', 'LadyBird.jpg', 'RainDrops.jpg', 'Storm.jpg',
    'TwoWings.jpg', 'Wood.jpg', 'YellowFlower.jpg')

# Lomiri (Ubuntu Touch) wallpapers.  Left out: analogpattern (an abstract
# bokeh texture), umang (a gradient), Fossa and Painting-Colors
# (illustrations), Infinite-Sea (a tinted composite).
_LOMIRI_DIR = 'usr/share/backgrounds/'
_LOMIRI_16 = (
    'Bridge_by_Sander_Klootwijk.jpg', 'Dragonfly_by_Bolly.jpg',
    'Picture_0B_by_freespace.jpg', 'Picture_1A_by_freespace.jpg',
    'Wine_by_Jakkub_Mede.jpg', 'aitzgorri_by_Aitzol_Berasategi.jpg',
    'free_by_Peter_Nerlich.jpg', 'friends_by_Aitzol_Berasategi.jpg',
    'greentock_by_Peter_Nerlich.jpg', 'life_by_Aitzol_Berasategi.jpg',
    'picosdeeuropa_by_Aitzol_Berasategi.jpg',
    'seeding_by_Clements_Engelhardt.jpg', 'sunset_by_Aitzol_Berasategi.jpg')
_LOMIRI_20 = ('Kleiber_by_Lukas_Baubkus.jpg',)

# Plasma's wallpapers that are photographs (the others are renderings);
# each at its largest size.  Stored as <Name>.jpg.
_PLASMA_DIR = 'usr/share/wallpapers/'
_PLASMA = {
    'BytheWater': '2560x1600.jpg', 'ColdRipple': '2560x1600.jpg',
    'EveningGlow': '2560x1600.jpg', 'FallenLeaf': '2560x1600.jpg',
    'Grey': '2560x1600.jpg', 'Kite': '2560x1600.jpg',
    'OneStandsOut': '2560x1600.jpg', 'Path': '2560x1600.jpg',
    'Volna': '5120x2880.jpg', 'summer_1am': '2560x1600.jpg'}

# GCompris activities whose raster pictures (shorter side >= MIN_SIDE) are
# all photographs: 33 + 15 + 9 + 48 with the pinned version (a 49th,
# cabrillo.webp, 1024 x 359, is too elongated for a patch grid).
_GCOMPRIS_RCC = 'usr/share/gcompris-qt/rcc/'
_GCOMPRIS_PHOTO_SETS = ('erase', 'explore_world_animals',
                        'explore_farm_animals', 'explore_monuments')
# The categorisation activity's picture folders used as classes (the
# alphabets and numbers folders hold one picture each).
_GCOMPRIS_CLASSES = ('fishes', 'monuments', 'others', 'renewable', 'tools')
_RASTER = ('.jpg', '.jpeg', '.png', '.webp')


class FetchError(RuntimeError):
    """A package could not be downloaded, verified or unpacked."""


def cache_dir():
    """Where prepared photos live: ``$DEEPCONTEXT_CACHE/photos``."""
    root = os.environ.get('DEEPCONTEXT_CACHE', '~/.cache/deepcontext')
    return os.path.join(os.path.expanduser(root), 'photos')


def _selection_key():
    """Short hash of the selection and preparation rules: a cache written
    under other rules is not used (and is removed by the next fetch)."""
    rules = (MAX_SIDE, MIN_SIDE, MAX_ASPECT, _KPA, sorted(
        _KPA_CLOCKWISE.items()), _MATE, _LOMIRI_16, _LOMIRI_20,
        sorted(_PLASMA.items()), _GCOMPRIS_PHOTO_SETS, _GCOMPRIS_CLASSES)
    return hashlib.sha256(repr(rules).encode()).hexdigest()[:8]


def package_dir(deb):
    """Folder of one package's prepared photos: the package version and
    the selection rules' key in the name."""
    version = deb.version.replace(':', '_')
    return os.path.join(cache_dir(), '%s_%s-%s' % (deb.name, version,
                                                   _selection_key()))


def _fetched(deb):
    return os.path.exists(os.path.join(package_dir(deb), 'COMPLETE'))


def missing():
    """Names of the pinned packages whose photos are not in the cache."""
    return [name for name, deb in DEBS.items() if not _fetched(deb)]


def _download(deb, dest):
    """The .deb into ``dest`` (a file path), verified; returns dest."""
    local = os.environ.get('DEEPCONTEXT_DEBS')
    if local:
        # The mirror's file name, or apt-get download's (epoch as %3a).
        name = os.path.basename(deb.filename)
        names = [name, name.replace('_%s_' % deb.version.split(':')[-1],
                                    '_%s_' % deb.version.replace(':', '%3a'))]
        found = [os.path.join(local, n) for n in names
                 if os.path.isfile(os.path.join(local, n))]
        if not found:
            raise FetchError('%s not found (DEEPCONTEXT_DEBS=%s)'
                             % (name, local))
        shutil.copyfile(found[0], dest)
    else:
        mirror = os.environ.get('DEBIAN_MIRROR',
                                'http://deb.debian.org/debian').rstrip('/')
        url = '%s/%s' % (mirror, deb.filename)
        try:
            with urllib.request.urlopen(url, timeout=60) as r, \
                    open(dest, 'wb') as f:
                shutil.copyfileobj(r, f, 1 << 20)
        except (urllib.error.URLError, OSError) as err:
            raise FetchError(
                'cannot download %s: %s; set DEBIAN_MIRROR to a Debian '
                'mirror, or DEEPCONTEXT_DEBS to a folder with the .deb'
                % (url, getattr(err, 'reason', err)))
    h = hashlib.sha256()
    with open(dest, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            h.update(block)
    if h.hexdigest() != deb.sha256:
        raise FetchError('%s: SHA-256 %s, expected %s (not the pinned %s %s)'
                         % (os.path.basename(deb.filename), h.hexdigest(),
                            deb.sha256, deb.name, deb.version))
    return dest


def deb_members(path):
    """The files of a .deb's data archive, as {path: bytes}.

    A .deb is an ``ar`` archive (``!<arch>``, then 60-byte member headers)
    whose ``data.tar.*`` member holds the files; paths lose their leading
    ``./``.
    """
    with open(path, 'rb') as f:
        blob = f.read()
    if blob[:8] != b'!<arch>\n':
        raise FetchError('%s: not a Debian package (no ar header)' % path)
    pos = 8
    while pos + 60 <= len(blob):
        name = blob[pos:pos + 16].decode('ascii').strip().rstrip('/')
        size = int(blob[pos + 48:pos + 58].decode('ascii').strip())
        start = pos + 60
        if name.startswith('data.tar'):
            members = {}
            with tarfile.open(fileobj=io.BytesIO(blob[start:start + size]),
                              mode='r:*') as tar:
                for info in tar:
                    if info.isfile():
                        name = info.name
                        if name.startswith('./'):
                            name = name[2:]
                        members[name] = tar.extractfile(info).read()
            return members
        pos = start + size + (size % 2)
    raise FetchError('%s: no data.tar member' % path)


def _selection(deb_name, members):
    """(stored name, bytes, clockwise angle) for each photo kept."""
    if deb_name == 'kphotoalbum':
        return [(n, members[_KPA_DIR + n], _KPA_CLOCKWISE.get(n, 0))
                for n in _KPA]
    if deb_name == 'mate-backgrounds':
        return [(n, members[_MATE_DIR + n], 0) for n in _MATE]
    if deb_name.startswith('lomiri-wallpapers'):
        names = _LOMIRI_16 if deb_name.endswith('16.04') else _LOMIRI_20
        return [(n, members[_LOMIRI_DIR + n], 0) for n in names]
    if deb_name == 'plasma-workspace-wallpapers':
        return [(name + '.jpg',
                 members['%s%s/contents/images/%s' % (_PLASMA_DIR, name, f)],
                 0) for name, f in sorted(_PLASMA.items())]
    if deb_name == 'gcompris-qt-data':
        return _gcompris_selection(members)
    raise KeyError(deb_name)


def _gcompris_selection(members):
    """GCompris's photo sets, and the categorisation classes."""
    def resources(activity):
        member = '%s%s.rcc' % (_GCOMPRIS_RCC, activity)
        return sorted(parse_rcc(members[member], member).items())

    kept = []
    for activity in _GCOMPRIS_PHOTO_SETS:
        for key, data in resources(activity):
            if key.lower().endswith(_RASTER) and _fits(data):
                kept.append(('%s/%s' % (activity, key.split('/')[-1]),
                             data, 0))
    for key, data in resources('categorization'):
        parts = key.split('/')
        if (key.lower().endswith(_RASTER) and len(parts) >= 2
                and parts[-2] in _GCOMPRIS_CLASSES):
            kept.append(('categorization/%s/%s' % (parts[-2], parts[-1]),
                         data, 0))
    return kept


def _fits(data):
    """Large enough, and not too elongated for a 2x2 patch grid."""
    with Image.open(io.BytesIO(data)) as img:
        return (min(img.size) >= MIN_SIDE
                and max(img.size) <= MAX_ASPECT * min(img.size))


def prepare(data, clockwise=0):
    """One photo as stored: (bytes, extension or None to keep the name's).

    Shrunk to MAX_SIDE (Lanczos, JPEG quality 95) if larger, turned
    upright if ``clockwise``; else the original bytes.
    """
    img = Image.open(io.BytesIO(data))
    if max(img.size) <= MAX_SIDE and not clockwise:
        return data, None
    img = img.convert('RGB')
    if clockwise:
        img = img.rotate(-clockwise, expand=True)
    if max(img.size) > MAX_SIDE:
        scale = MAX_SIDE / float(max(img.size))
        size = tuple(max(1, int(round(s * scale))) for s in img.size)
        img = img.resize(size, Image.LANCZOS)
    out = io.BytesIO()
    img.save(out, 'JPEG', quality=95)
    return out.getvalue(), '.jpg'


def fetch(report=print):
    """Fetch, verify and prepare every package not yet in the cache.

    Raises
    ------
    FetchError
        A download, checksum or unpacking failed; nothing partial is left.
    """
    os.makedirs(cache_dir(), exist_ok=True)
    for deb in DEBS.values():
        if not _fetched(deb):
            _fetch_one(deb, report)
        for stale in os.listdir(cache_dir()):
            # The same package prepared under other rules or versions.
            path = os.path.join(cache_dir(), stale)
            if stale.startswith(deb.name + '_') and path != package_dir(deb):
                shutil.rmtree(path)


def _fetch_one(deb, report):
    """Download, verify and prepare one package into its cache folder."""
    final = package_dir(deb)
    with tempfile.TemporaryDirectory(dir=cache_dir(),
                                     prefix='.fetch-') as tmp:
        report('fetching %s %s (%.0f MB) ...'
               % (deb.name, deb.version, deb.size / 1e6))
        path = _download(deb, os.path.join(tmp, 'package.deb'))
        members = deb_members(path)
        os.remove(path)
        out = os.path.join(tmp, 'photos')
        count = 0
        for name, data, clockwise in _selection(deb.name, members):
            stored, ext = prepare(data, clockwise)
            if ext:
                name = os.path.splitext(name)[0] + ext
            dest = os.path.join(out, name)
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            with open(dest, 'wb') as f:
                f.write(stored)
            count += 1
        with open(os.path.join(out, 'COMPLETE'), 'w') as f:
            f.write('%s %s %s %d photos\n'
                    % (deb.name, deb.version, deb.sha256, count))
        if os.path.exists(final):
            shutil.rmtree(final)
        os.rename(out, final)
        report('  %d photos in %s' % (count, final))


def _require(deb_name):
    deb = DEBS[deb_name]
    if not _fetched(deb):
        raise FileNotFoundError(
            'the photos of Debian package %s are not in %s; fetch them with: '
            'make photos (or python -m deepcontext.data.debian_photos)'
            % (deb_name, cache_dir()))
    return package_dir(deb)


def photos():
    """Every prepared photo (categorisation pictures excluded).

    Returns
    -------
    list of str
        Absolute paths: packages in DEBS order, then sorted by stored name.

    Raises
    ------
    FileNotFoundError
        If a package has not been fetched, naming the command that does.
    """
    paths = []
    for name in DEBS:
        root = _require(name)
        rel = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if d != 'categorization']
            rel += [os.path.relpath(os.path.join(dirpath, f), root)
                    for f in filenames if f.lower().endswith(_RASTER)]
        paths += [os.path.join(root, r)
                  for r in sorted(rel, key=lambda r: r.replace(os.sep, '/'))]
    return paths


def gcompris_categories():
    """GCompris's categorisation pictures in ImageFolder layout.

    Returns
    -------
    str
        A folder with one sub-folder per class (fishes, monuments, others,
        renewable, tools; 28 / 27 / 17 / 29 / 39 pictures, 119-320 pixels a
        side), for ``labelled_folder.open_labelled``.
    """
    return os.path.join(_require('gcompris-qt-data'), 'categorization')


def main(argv=None):
    parser = argparse.ArgumentParser(
        description='Fetch the Debian packages of the demo photo pool into '
                    'the cache (%s).' % cache_dir())
    parser.parse_args(argv)
    try:
        fetch()
    except FetchError as err:
        print('deepcontext: %s' % err, file=sys.stderr)
        return 1
    for name, deb in DEBS.items():
        with open(os.path.join(package_dir(deb), 'COMPLETE')) as f:
            print('%-28s %s' % (name, f.read().split(' ', 3)[3].strip()))
    return 0


if __name__ == '__main__':
    sys.exit(main())
