"""Preprocessing: 2015 resizing, colour dropping, RMS normalisation."""
import random

import numpy as np
import pytest

from deepcontext.data import decode, photos, preprocess as P


def resize_2015(im, shape):
    """Independent reference: scikit-image 0.11's resize (warp, order 1).

    Output pixel (r, c) samples the input at ((r + .5) * sy - .5,
    (c + .5) * sx - .5) bilinearly; neighbours outside the image are 0;
    the result is clipped to the input's range (0 included).
    """
    im = np.asarray(im, dtype=np.float64)
    if im.ndim == 2:
        im = im[:, :, None]
    H, W = im.shape[:2]
    h, w = shape
    rr = (np.arange(h) + .5) * (H / h) - .5
    cc = (np.arange(w) + .5) * (W / w) - .5
    r0 = np.floor(rr).astype(int)
    c0 = np.floor(cc).astype(int)
    fr = (rr - r0)[:, None, None]
    fc = (cc - c0)[None, :, None]
    pad = np.zeros((H + 4, W + 4, im.shape[2]))
    pad[2:-2, 2:-2] = im

    def at(r, c):
        return pad[np.clip(r, -2, H + 1)[:, None] + 2,
                   np.clip(c, -2, W + 1)[None, :] + 2]

    out = (at(r0, c0) * (1 - fr) * (1 - fc) + at(r0, c0 + 1) * (1 - fr) * fc
           + at(r0 + 1, c0) * fr * (1 - fc) + at(r0 + 1, c0 + 1) * fr * fc)
    return np.clip(out, min(im.min(), 0), im.max())


@pytest.fixture(scope='module')
def photo():
    return decode.load_rgb(photos.test_photos()[0])


@pytest.mark.parametrize('shape', [(31, 47), (96, 96), (300, 200),
                                   (613, 811), (10, 10)])
def test_resize_matches_2015_scikit_image(photo, shape):
    im = photo[:400, :500].astype(np.float64) / 255
    got = P.resize_bilinear(im, shape)
    assert got.shape == shape + (3,)
    np.testing.assert_allclose(got, resize_2015(im, shape), atol=1e-6)


def test_resize_uint8_scales_to_unit_range(photo):
    patch = photo[:96, :96]
    got = P.resize_bilinear(patch, (17, 17))
    want = resize_2015(patch.astype(np.float64) / 255, (17, 17))
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_no_antialiasing_when_downsampling():
    # A 1-pixel checkerboard halved: bilinear at the 2015 sample positions
    # averages 2x2 blocks; an anti-aliased resize would blur further.
    board = (np.indices((64, 64)).sum(0) % 2).astype(np.float64)
    got = P.resize_bilinear(board, (16, 16))
    np.testing.assert_allclose(got, resize_2015(board, (16, 16))[:, :, 0],
                               atol=1e-9)


def test_resize_image_equals_caffe_io(photo):
    import caffe.io
    im = photo.astype(np.float32) / 255
    for shape in ((250, 330), (700, 900)):
        np.testing.assert_allclose(P.resize_image(im, shape),
                                   caffe.io.resize_image(im, shape),
                                   atol=1e-6)


def test_resize_to_pixels(photo):
    out = P.resize_to_pixels(photo, 200000)
    # the original: caffe.io.resize_image(im.astype(float32) / 255, shape)
    import caffe.io
    want = caffe.io.resize_image(photo.astype(np.float32) / 255, out.shape[:2])
    np.testing.assert_allclose(out, want, atol=2e-6)
    assert out.dtype == np.float32
    assert abs(out.shape[0] * out.shape[1] - 200000) < sum(out.shape[:2])
    assert 0 <= out.min() and out.max() <= 1


def rng_pair(seed):
    return random.Random(seed), np.random.RandomState(seed)


def find_seed(downsample):
    for seed in range(100):
        if (random.Random(seed).random() < P.DOWNSAMPLE_PROB) == downsample:
            return seed


@pytest.mark.parametrize('downsample', [False, True])
def test_prep_patch_one_informative_channel_rms_50(photo, downsample):
    patch = photo[100:196, 150:246].astype(np.float32)
    rng, nprng = rng_pair(find_seed(downsample))
    out = P.prep_patch(patch, rng, nprng)
    assert out.shape == (3, 96, 96) and out.dtype == np.float32
    assert out.flags['C_CONTIGUOUS']
    assert np.sqrt(np.mean(out.astype(np.float64) ** 2)) == \
        pytest.approx(50, rel=1e-4)
    corr = [abs(np.corrcoef(out[c].ravel(), patch[:, :, c].ravel())[0, 1])
            for c in range(3)]
    keep = int(np.argmax(corr))
    assert corr[keep] > (0.999 if not downsample else 0.5)
    # the other two channels are uniform noise in [-0.5, 0.5] times the
    # same factor that brought the kept channel to its scale
    k = np.std(out[keep]) / np.std(patch[:, :, keep]) if not downsample \
        else None
    for c in range(3):
        if c == keep:
            assert abs(out[c].mean()) < 1e-3 * 50
            continue
        assert corr[c] < 0.1
        if k is not None:
            noise = out[c] / k
            assert noise.min() >= -0.5 - 1e-5 and noise.max() <= 0.5 + 1e-5
            assert noise.max() - noise.min() > 0.9


def test_prep_patch_keeps_each_channel_equally_often(photo):
    patch = photo[:96, :96].astype(np.float32)
    rng, nprng = rng_pair(7)
    kept = np.zeros(3, int)
    downsampled = 0
    for _ in range(600):
        state = rng.getstate()
        out = P.prep_patch(patch, rng, nprng)
        probe = random.Random()
        probe.setstate(state)
        downsampled += probe.random() < P.DOWNSAMPLE_PROB
        kept[np.argmax(out.reshape(3, -1).std(1) *
                       [abs(np.corrcoef(out[c].ravel(),
                                        patch[:, :, c].ravel())[0, 1])
                        for c in range(3)])] += 1
    assert all(150 < k < 250 for k in kept)
    assert 150 < downsampled < 250


def test_projection_removes_green_magenta_axis(photo):
    patch = photo[200:296, 200:296].astype(np.float32)
    rng, nprng = rng_pair(find_seed(False))
    out = P.prep_patch(patch, rng, nprng, projection=True)
    along = np.tensordot(np.array([-1., 2., -1.]), out.astype(np.float64),
                         axes=1)
    assert np.abs(along).max() < 1e-3
    assert np.sqrt(np.mean(out.astype(np.float64) ** 2)) == \
        pytest.approx(50, rel=1e-4)


@pytest.mark.parametrize('shape', [(31, 47), (96, 96), (613, 811)])
def test_resize_equals_scikit_image_without_antialiasing(photo, shape):
    from skimage.transform import resize
    im = photo[:300, :400]
    want = resize(im, shape, order=1, mode='constant', cval=0,
                  anti_aliasing=False)
    np.testing.assert_allclose(P.resize_bilinear(im, shape), want,
                               atol=1e-9)
    gray = im[:, :, 1].astype(np.float32) / 255
    np.testing.assert_allclose(P.resize_bilinear(gray, shape),
                               resize(gray, shape, order=1, mode='constant',
                                      anti_aliasing=False), atol=1e-6)
