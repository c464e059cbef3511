"""Tests for deepcontext/data/decode.py, imageset.py, sources.py and photos.py.

All images are real: small crops of the scikit-image photos, re-encoded by
Pillow in the modes and formats the loader meets in the wild.
"""

import math
import os
import pickle

import numpy as np
import pytest
from PIL import Image, ImageFile

from deepcontext.data import photos as dc_photos
from deepcontext.data.decode import ImageError, load_rgb
from deepcontext.data.imageset import ImageSet
from deepcontext.data.sources import open_image_source


@pytest.fixture(scope='module')
def photo():
    """A 120x80 RGB crop of a real photo (chelsea the cat)."""
    path = [p for p in dc_photos.test_photos()
            if os.path.basename(p) == 'chelsea.png'][0]
    with Image.open(path) as img:
        return img.convert('RGB').crop((150, 60, 270, 140))


def _save(img, path, **kwargs):
    img.save(str(path), **kwargs)
    return str(path)


def _check_rgb(arr, shape):
    assert arr.dtype == np.uint8
    assert arr.shape == (shape[1], shape[0], 3)


# ---------------------------------------------------------------- load_rgb

def test_rgb_png_is_exact(photo, tmp_path):
    arr = load_rgb(_save(photo, tmp_path / 'rgb.png'))
    _check_rgb(arr, photo.size)
    np.testing.assert_array_equal(arr, np.asarray(photo))


def test_grey_is_replicated(photo, tmp_path):
    grey = photo.convert('L')
    arr = load_rgb(_save(grey, tmp_path / 'grey.png'))
    _check_rgb(arr, photo.size)
    for c in range(3):
        np.testing.assert_array_equal(arr[:, :, c], np.asarray(grey))


def test_palette_is_looked_up(photo, tmp_path):
    pal = photo.quantize(64)
    assert pal.mode == 'P'
    for name in ('pal.png', 'pal.gif'):
        arr = load_rgb(_save(pal, tmp_path / name))
        _check_rgb(arr, photo.size)
        np.testing.assert_array_equal(arr, np.asarray(pal.convert('RGB')))
        # 64 colours stay close to the photo.
        diff = np.abs(arr.astype(int) - np.asarray(photo, dtype=int))
        assert diff.mean() < 10


def test_alpha_is_dropped_not_composited(photo, tmp_path):
    rgba = photo.convert('RGBA')
    alpha = np.zeros((photo.size[1], photo.size[0]), np.uint8)
    alpha[:, photo.size[0] // 2:] = 255  # left half fully transparent
    rgba.putalpha(Image.fromarray(alpha))
    arr = load_rgb(_save(rgba, tmp_path / 'rgba.png'))
    _check_rgb(arr, photo.size)
    np.testing.assert_array_equal(arr, np.asarray(photo))

    grey_alpha = photo.convert('L').convert('LA')
    arr = load_rgb(_save(grey_alpha, tmp_path / 'la.png'))
    np.testing.assert_array_equal(arr[:, :, 1], np.asarray(photo.convert('L')))


def test_cmyk_jpeg(photo, tmp_path):
    arr = load_rgb(_save(photo.convert('CMYK'), tmp_path / 'cmyk.jpg',
                         quality=95))
    _check_rgb(arr, photo.size)
    diff = np.abs(arr.astype(int) - np.asarray(photo, dtype=int))
    assert diff.mean() < 6


def test_16_bit_png_is_scaled_not_clipped(photo, tmp_path):
    grey = np.asarray(photo.convert('L'))
    # 257 * v spans 0..65535 exactly as v spans 0..255.
    img16 = Image.fromarray(grey.astype(np.uint16) * 257)
    assert img16.mode == 'I;16'
    arr = load_rgb(_save(img16, tmp_path / 'grey16.png'))
    _check_rgb(arr, photo.size)
    np.testing.assert_array_equal(arr[:, :, 0], grey)
    np.testing.assert_array_equal(arr[:, :, 2], grey)


def test_16_bit_tiff_and_ppm(photo, tmp_path):
    grey = np.asarray(photo.convert('L'))
    values = grey.astype(np.uint16) * 257
    tiff = _save(Image.fromarray(values), tmp_path / 'grey16.tif')
    np.testing.assert_array_equal(load_rgb(tiff)[:, :, 0], grey)
    # Pillow opens a 16-bit PGM as 32-bit mode 'I'.
    pgm = tmp_path / 'grey16.pgm'
    header = 'P5\n{} {}\n65535\n'.format(*photo.size).encode()
    pgm.write_bytes(header + values.astype('>u2').tobytes())
    with Image.open(str(pgm)) as img:
        assert img.mode == 'I'
    np.testing.assert_array_equal(load_rgb(pgm)[:, :, 1], grey)


def test_float_tiff_in_unit_range(photo, tmp_path):
    grey = np.asarray(photo.convert('L'))
    img = Image.fromarray(grey.astype(np.float32) / 255.0)
    assert img.mode == 'F'
    arr = load_rgb(_save(img, tmp_path / 'float.tif'))
    _check_rgb(arr, photo.size)
    np.testing.assert_array_equal(arr[:, :, 0], grey)


def test_bilevel(photo, tmp_path):
    arr = load_rgb(_save(photo.convert('1'), tmp_path / 'bw.png'))
    _check_rgb(arr, photo.size)
    assert set(np.unique(arr)) <= {0, 255}
    assert len(np.unique(arr)) == 2


def test_exif_orientation_is_not_applied(photo, tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    arr = load_rgb(_save(photo, tmp_path / 'rotated.jpg', exif=exif))
    # Stored orientation, as scipy.misc.imread returned it.
    _check_rgb(arr, photo.size)


def test_first_frame_of_animation(photo, tmp_path):
    frames = [photo, photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    path = _save(frames[0], tmp_path / 'anim.gif', save_all=True,
                 append_images=frames[1:])
    arr = load_rgb(path)
    with Image.open(path) as img:
        assert img.n_frames == 2
        np.testing.assert_array_equal(arr, np.asarray(img.convert('RGB')))


def _assert_image_error(path, *words):
    with pytest.raises(ImageError) as info:
        load_rgb(path)
    message = str(info.value)
    assert os.path.basename(str(path)) in message
    for word in words:
        assert word in message
    assert info.value.path == str(path)
    return info.value


def test_truncated_jpeg(photo, tmp_path):
    full = tmp_path / 'full.jpg'
    photo.resize((480, 320)).save(str(full), quality=90)
    data = full.read_bytes()
    cut = tmp_path / 'truncated.jpg'
    cut.write_bytes(data[:len(data) // 2])
    _assert_image_error(cut, 'truncated')
    # The failure must not have switched Pillow to accepting truncation.
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_truncated_png(photo, tmp_path):
    full = _save(photo, tmp_path / 'full.png')
    cut = tmp_path / 'truncated.png'
    with open(full, 'rb') as f:
        cut.write_bytes(f.read()[:300])
    _assert_image_error(cut)


def test_zero_bytes(tmp_path):
    empty = tmp_path / 'empty.jpg'
    empty.write_bytes(b'')
    _assert_image_error(empty, 'empty')


def test_text_named_jpg(tmp_path):
    text = tmp_path / 'notes.jpg'
    text.write_text('this is not a picture\n')
    _assert_image_error(text, 'not a recognised image')


def test_missing_file(tmp_path):
    _assert_image_error(tmp_path / 'gone.png', 'no such file')


def test_folder_is_not_an_image(tmp_path):
    folder = tmp_path / 'dir.png'
    folder.mkdir()
    _assert_image_error(folder)


def test_decompression_bomb(photo, tmp_path, monkeypatch):
    path = _save(photo, tmp_path / 'bomb.png')
    pixels = photo.size[0] * photo.size[1]
    # Over the limit (Pillow warns) and over twice the limit (Pillow raises).
    for limit in (pixels - 1, pixels // 3):
        monkeypatch.setattr(Image, 'MAX_IMAGE_PIXELS', limit)
        _assert_image_error(path, 'decompression bomb')
    monkeypatch.setattr(Image, 'MAX_IMAGE_PIXELS', pixels)
    _check_rgb(load_rgb(path), photo.size)


def test_image_error_pickles(tmp_path):
    err = ImageError(str(tmp_path / 'x.jpg'), 'some reason')
    copy = pickle.loads(pickle.dumps(err))
    assert str(copy) == str(err)
    assert 'x.jpg' in str(copy) and 'some reason' in str(copy)
    assert (copy.path, copy.reason) == (err.path, err.reason)


# ---------------------------------------------------------------- ImageSet

def _write_tree(root, photo, relpaths):
    for rel in relpaths:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        photo.save(str(path), format='PNG')


def test_from_imagenet_root(tmp_path):
    root = tmp_path / 'imagenet'
    (root / 'train').mkdir(parents=True)
    (root / 'train.txt').write_bytes(
        b'n02/n02_7.JPEG 1\n'
        b'\n'
        b'   n01/n01_3.JPEG\t0  \r\n'
        b'n01/n01_10.JPEG 0\n')
    images = ImageSet.from_imagenet_root(str(root))
    train = os.path.join(str(root), 'train')
    # File order, first column, files not required to exist.
    assert images.paths == [os.path.join(train, 'n02', 'n02_7.JPEG'),
                            os.path.join(train, 'n01', 'n01_3.JPEG'),
                            os.path.join(train, 'n01', 'n01_10.JPEG')]
    assert len(images) == 3
    assert images[1] == images.paths[1]
    assert 'ImageNet root' in images.describe()
    assert '3 images' in images.describe()


def test_from_imagenet_root_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match='nowhere'):
        ImageSet.from_imagenet_root(str(tmp_path / 'nowhere'))
    with pytest.raises(FileNotFoundError, match='train.txt'):
        ImageSet.from_imagenet_root(str(tmp_path))
    (tmp_path / 'train.txt').write_text('\n\n')
    with pytest.raises(ValueError, match=str(tmp_path)):
        ImageSet.from_imagenet_root(str(tmp_path))


def test_from_folder_is_sorted_and_filtered(photo, tmp_path):
    folder = tmp_path / 'photos'
    # Created in scrambled order; mixed-case extensions.
    _write_tree(folder, photo, ['b/z.PNG', 'a.jpg', 'b/a.png', 'a-b.tiff',
                                'c/d/e.WebP', 'a/z.jpeg'])
    (folder / 'notes.txt').write_text('not an image')
    (folder / 'b' / 'model.caffemodel').write_bytes(b'\0')
    _write_tree(folder, photo, ['.hidden.png', '.cache/x.png'])
    images = ImageSet.from_folder(str(folder))
    rel = [os.path.relpath(p, str(folder)).replace(os.sep, '/')
           for p in images.paths]
    # Plain string order of the relative path ('-' < '.' < '/').
    assert rel == ['a-b.tiff', 'a.jpg', 'a/z.jpeg', 'b/a.png', 'b/z.PNG',
                   'c/d/e.WebP']
    assert all(os.path.isabs(p) for p in images.paths)
    assert ImageSet.from_folder(str(folder)).paths == images.paths
    assert 'folder' in images.describe() and '6 images' in images.describe()


def test_from_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match='missing_dir'):
        ImageSet.from_folder(str(tmp_path / 'missing_dir'))
    (tmp_path / 'empty' / 'sub').mkdir(parents=True)
    (tmp_path / 'empty' / 'readme.txt').write_text('no images here')
    with pytest.raises(ValueError, match='empty'):
        ImageSet.from_folder(str(tmp_path / 'empty'))


def test_from_list_resolves_against_list_folder(tmp_path, monkeypatch):
    lists = tmp_path / 'lists'
    lists.mkdir()
    elsewhere = tmp_path / 'elsewhere'
    elsewhere.mkdir()
    absolute = str(tmp_path / 'abs' / 'one.jpg')
    list_file = lists / 'images.txt'
    list_file.write_bytes(
        b'\xef\xbb\xbf# demo list\r\n'
        b'rel/two.png\r\n'
        b'\n'
        b'   \n'
        + absolute.encode() + b'\n'
        b'  ../up/three.jpg  \n'
        b'# trailing comment\n')
    monkeypatch.chdir(str(elsewhere))
    images = ImageSet.from_list('../lists/images.txt')
    assert images.paths == [str(lists / 'rel' / 'two.png'), absolute,
                            str(tmp_path / 'up' / 'three.jpg')]
    assert str(list_file) in images.describe()


def test_from_list_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match='nolist.txt'):
        ImageSet.from_list(str(tmp_path / 'nolist.txt'))
    only_comments = tmp_path / 'comments.txt'
    only_comments.write_text('# nothing\n\n')
    with pytest.raises(ValueError, match='comments.txt'):
        ImageSet.from_list(str(only_comments))


def test_open_dispatch(photo, tmp_path):
    root = tmp_path / 'imagenet'
    root.mkdir()
    (root / 'train.txt').write_text('n01/x.JPEG 0\n')
    folder = tmp_path / 'folder'
    _write_tree(folder, photo, ['p.png', 'q.png'])
    list_file = tmp_path / 'list.txt'
    list_file.write_text('folder/q.png\nfolder/r.png\n')
    single = str(folder / 'p.png')

    assert open_image_source(str(root)).kind == 'ImageNet root'
    assert open_image_source(folder).kind == 'folder'
    assert open_image_source(str(list_file)).kind == 'list'
    assert open_image_source(single).paths == [single]
    images = open_image_source(str(folder))
    assert open_image_source(images) is images
    assert ImageSet.open(str(folder)).paths == images.paths

    union = open_image_source((str(list_file), str(folder), single,
                               str(root)))
    # Given order, first occurrence kept.
    assert union.paths == [str(folder / 'q.png'), str(folder / 'r.png'),
                           str(folder / 'p.png'),
                           str(root / 'train' / 'n01' / 'x.JPEG')]
    assert '4 images' in union.describe()
    assert open_image_source([str(folder)]).paths == images.paths


def test_open_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match='no_such_source'):
        open_image_source(str(tmp_path / 'no_such_source'))
    with pytest.raises(FileNotFoundError, match='missing.jpg'):
        open_image_source([str(tmp_path / 'missing.jpg')])
    with pytest.raises(ValueError):
        open_image_source([])
    (tmp_path / 'nothing').mkdir()
    with pytest.raises(ValueError, match='nothing'):
        open_image_source(str(tmp_path / 'nothing'))


# ---------------------------------------------------------------- demo data

def test_test_photos_decode():
    photos = dc_photos.test_photos()
    assert len(photos) >= 8
    assert photos == sorted(photos)
    for path in photos:
        arr = load_rgb(path)
        assert arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[2] == 3
        assert min(arr.shape[:2]) >= dc_photos.MIN_SIDE
        assert arr.std() > 10  # a photo, not a flat test card


def test_demo_photos_exist_and_fit_the_patch_grid():
    photos = dc_photos.demo_photos()
    assert photos == dc_photos.demo_photos()  # deterministic
    assert len(set(photos)) == len(photos)
    assert set(dc_photos.test_photos()) <= set(photos)
    assert len(photos) > len(dc_photos.test_photos())
    for path in photos:
        assert os.path.isabs(path) and os.path.isfile(path)
        with Image.open(path) as img:
            width, height = img.size
        # The loader resizes to at least 150k pixels and needs both sides
        # > 2 * 96 + 48 + 7 = 247 for a 2x2 patch grid.
        scale = math.sqrt(150000.0 / (width * height))
        assert min(width, height) * scale > 247, path
