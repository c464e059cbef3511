"""Preprocessing: 2015 resizing, colour dropping, RMS normalisation."""
import random

import numpy as np
import pytest

from deepcontext.data import batches, decode, photos, preprocess as P


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


@pytest.fixture(scope='module')
def image01(photo):
    """The photo as the loaders see it: resized, float32 in [0, 1]."""
    return P.resize_to_pixels(photo, 300000)


def prep(im, corners, seed, reference, projection=False):
    """Patches at ``corners`` of ``im`` through the fast or reference path."""
    rng, nprng = batches.rngs(seed, reference)
    out = np.empty((len(corners), 3, 96, 96), np.float32)
    return P.prep_grid(im, corners, rng, nprng, out, projection, reference)


def reference_draws(rng):
    """The reference's scalar draws of one patch: (side, keep)."""
    return P.downsample_side(rng), rng.randint(0, 2)


def find_seed(downsample):
    for seed in range(100):
        if (random.Random(seed).random() < P.DOWNSAMPLE_PROB) == downsample:
            return seed


def corr(a, b):
    return abs(np.corrcoef(a.ravel(), b.ravel())[0, 1])


@pytest.mark.parametrize('reference', [True, False])
@pytest.mark.parametrize('downsample', [False, True])
def test_prep_patch_one_informative_channel_rms_50(image01, downsample,
                                                   reference):
    patch = P.crop(image01, (150, 100))
    out = prep(image01, [(150, 100)], find_seed(downsample), reference)[0]
    assert out.shape == (3, 96, 96) and out.dtype == np.float32
    assert out.flags['C_CONTIGUOUS']
    assert np.sqrt(np.mean(out.astype(np.float64) ** 2)) == \
        pytest.approx(50, rel=1e-4)
    cs = [corr(out[c], patch[:, :, c]) for c in range(3)]
    keep = int(np.argmax(cs))
    assert cs[keep] > (0.999 if not downsample else 0.5)
    # the other two channels are uniform noise in [-0.5, 0.5] times the
    # same factor that brought the kept channel to its scale
    k = np.std(out[keep]) / np.std(patch[:, :, keep]) if not downsample \
        else None
    for c in range(3):
        if c == keep:
            assert abs(out[c].mean()) < 1e-3 * 50
            continue
        assert cs[c] < 0.1
        if k is not None:
            noise = out[c] / k
            assert noise.min() >= -0.5 - 1e-5 and noise.max() <= 0.5 + 1e-5
            assert noise.max() - noise.min() > 0.9


@pytest.mark.parametrize('reference', [True, False])
def test_each_channel_kept_equally_often(image01, reference):
    # 3,000 patches: a third each within 4 standard deviations (+-104); a
    # generator keeping 2 channels, or one favouring a channel by 5 points,
    # fails.
    n, corner = 3000, (200, 120)
    patch = P.crop(image01, corner)
    rng, nprng = batches.rngs(9, reference)
    out = np.empty((1, 3, 96, 96), np.float32)
    kept = np.zeros(3, int)
    for _ in range(n):
        P.prep_grid(image01, [corner], rng, nprng, out, reference=reference)
        kept[np.argmax([out[0, c].std() * corr(out[0, c], patch[:, :, c])
                        for c in range(3)])] += 1
    sd = np.sqrt(n * (1 / 3) * (2 / 3))
    assert np.all(np.abs(kept - n / 3) < 4 * sd), kept


def test_downsampling_probability_and_sizes():
    # The draw both paths share: P(downsample) = .33 (4 sd = +-.011 at
    # 30,000 draws: .30 or 1/3 + .02 fail) and side = int(sqrt(U(100,
    # 9025))): its distribution function, side by side, within 4 sd, and
    # its range 10..94 (a range to 95^2 + 191 or from 0 fails).
    n = 30000
    rng = random.Random(1)
    sides = np.array([P.downsample_side(rng) for _ in range(n)])
    down = sides[sides > 0]
    sd = np.sqrt(.33 * .67 / n)
    assert abs(len(down) / n - .33) < 4 * sd
    assert down.min() == 10 and down.max() == 94
    for s in range(10, 95):
        want = ((s + 1) ** 2 - 100) / (9025 - 100)
        got = np.mean(down <= s)
        assert abs(got - min(want, 1)) <= 4 * np.sqrt(
            want * (1 - want) / len(down)) + 1e-9, s


@pytest.mark.parametrize('reference', [True, False])
def test_noise_is_uniform_minus_half_to_half(image01, reference):
    # Noise recovered from patches not downsampled: out[c] / k, with k the
    # factor of the kept channel.  Range, mean, variance 1/12, fourth moment
    # 1/80 and a flat histogram; U(0, 1), U(-1, 1) or a normal fail.
    corner = (60, 40)
    patch = P.crop(image01, corner).astype(np.float64)
    rng, nprng = batches.rngs(4, reference)
    out = np.empty((1, 3, 96, 96), np.float32)
    values = []
    while len(values) < 60:
        probe = random.Random()
        probe.setstate(rng.getstate())
        side, keep = reference_draws(probe)
        P.prep_grid(image01, [corner], rng, nprng, out, reference=reference)
        if side:
            continue
        k = out[0, keep].std(dtype=np.float64) / patch[:, :, keep].std()
        values.append(np.delete(out[0], keep, axis=0) / k)
    x = np.concatenate(values).ravel()
    n = len(x)
    assert -0.5 - 1e-5 <= x.min() < -0.4999 and 0.4999 < x.max() < 0.5 + 1e-5
    assert abs(x.mean()) < 4 * np.sqrt(1 / 12 / n)
    assert np.mean(x ** 2) == pytest.approx(1 / 12, rel=4e-3)
    assert np.mean(x ** 4) == pytest.approx(1 / 80, rel=6e-3)
    hist = np.histogram(x, bins=20, range=(-.5, .5))[0]
    assert np.all(np.abs(hist - n / 20) < 5 * np.sqrt(n / 20))


def test_fast_path_makes_the_reference_choices(image01):
    # Same seed, same scalar draws: the same channel kept and the same
    # patches downsampled to the same sides, so the kept channels agree up
    # to the RMS factor (which the different noise changes); the random
    # stream is left in the same state.
    h, w = image01.shape[:2]
    corners = [(x, y) for y in (0, 150, h - 96) for x in (5, 160, w - 96)]
    for seed in range(12):
        fast = prep(image01, corners, seed, False)
        ref = prep(image01, corners, seed, True)
        rng = random.Random(seed)
        for i in range(len(corners)):
            side, keep = reference_draws(rng)
            a, b = fast[i, keep], ref[i, keep]
            np.testing.assert_allclose(a / a.std(), b / b.std(), atol=2e-5)
            for c in set(range(3)) - {keep}:
                assert corr(fast[i, c], ref[i, c]) < 0.1


def test_pipeline_same_choices_as_reference():
    # Whole pretext batches: the same images, grid offsets, jitter, pairs
    # and labels (the batches), and each patch's kept channel.
    paths = photos.test_photos()[:2]
    fast = list(batches.pretext_batches(paths, seed=5, batch_size=128))
    ref = list(batches.pretext_batches(paths, seed=5, batch_size=128,
                                       reference=True))
    assert len(fast) == len(ref)
    for (df, pf, lf, uf), (dr, pr, lr, ur) in zip(fast, ref):
        assert df.shape == dr.shape and uf == ur
        assert np.array_equal(pf, pr) and np.array_equal(lf, lr)
        for a, b in zip(df, dr):
            keep = int(np.argmax([corr(a[c], b[c]) for c in range(3)]))
            np.testing.assert_allclose(a[keep] / a[keep].std(),
                                       b[keep] / b[keep].std(), atol=2e-5)


class FixedNoise:
    """A RandomState stand-in whose uniform draw returns given values."""

    def __init__(self, values):
        self.values = values

    def uniform(self, low, high, size):
        assert (low, high) == (0, 1) and self.values.shape == size
        return self.values.astype(np.float64)


def test_fast_patch_equals_reference_given_the_same_draws(image01):
    # Every downsampled side 10..94 and every kept channel, patches at the
    # image's edges: crop, downsampling, colour dropping and RMS scaling
    # equal the numpy reference to float32 rounding.
    h, w = image01.shape[:2]
    rng = random.Random(0)
    sides = [0, 0, 0] + list(range(10, 95))
    xy = np.array([(rng.choice([0, w - 96, rng.randint(0, w - 96)]),
                    rng.choice([0, h - 96, rng.randint(0, h - 96)]))
                   for _ in sides], np.int32)
    keep = np.arange(len(sides), dtype=np.int32) % 3
    side = np.array(sides, np.int32)
    noise = np.random.default_rng(0).random((len(sides), 2, 96, 96),
                                            np.float32)
    out = np.empty((len(sides), 3, 96, 96), np.float32)
    P.prep_grid_given(image01, xy, keep, side, noise, out)
    for i in range(len(sides)):
        want = P.prep_patch_reference(P.crop(image01, tuple(xy[i])),
                                      Scripted(side[i], keep[i]),
                                      FixedNoise(noise[i]))
        np.testing.assert_allclose(out[i], want, rtol=0,
                                   atol=2e-6 * np.abs(want).max())


class Scripted(random.Random):
    """A Random whose draws make one patch's ``side`` and ``keep``."""

    def __init__(self, side, keep):
        super().__init__(0)
        self.values = [0.0, ((side + .5) ** 2 - 100) / 8925] if side \
            else [.99]
        self.keep = int(keep)

    def random(self):
        return self.values.pop(0)

    def randint(self, a, b):
        return self.keep


def test_scripted_draws_give_every_side():
    for side in range(10, 95):
        assert P.downsample_side(Scripted(side, 0)) == side
    assert P.downsample_side(Scripted(0, 0)) == 0


@pytest.mark.parametrize('target', [150000, 199999, 333333, 450000, 40000])
def test_resize_to_pixels_c_equals_numpy_bit_for_bit(photo, target):
    got = P.resize_to_pixels(photo, target)
    want = P.resize_to_pixels(photo, target, reference=True)
    assert got.dtype == want.dtype == np.float32
    assert np.array_equal(got, want)
    dim = (photo[:200, :300] // 2 + 40)    # lo > 0, a narrower range
    assert np.array_equal(P.resize_to_pixels(dim, 91234),
                          P.resize_to_pixels(dim, 91234, reference=True))


def test_prep_grid_refuses_a_patch_outside_the_image(image01):
    h, w = image01.shape[:2]
    with pytest.raises(ValueError, match='leaves'):
        prep(image01, [(w - 95, 0)], 0, False)


def test_projection_removes_green_magenta_axis(image01):
    out = prep(image01, [(200, 200)], find_seed(False), False,
               projection=True)[0]
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


def test_c_noise_is_numpys_sfc64_float32_stream():
    # The same numbers as Generator(SFC64).random(dtype=float32), odd
    # lengths included (numpy keeps half of a 64-bit word for the next
    # draw), and the generator left in the same state.
    for seed in (0, 1, 2 ** 40 + 3):
        ours = np.random.Generator(np.random.SFC64(seed))
        numpys = np.random.Generator(np.random.SFC64(seed))
        for shape in [(3,), (1, 2, 96, 96), (5,), (0,), (4, 2, 96, 96)]:
            assert np.array_equal(P.uniform_float32(ours, shape),
                                  numpys.random(shape, np.float32))
        a, b = ours.bit_generator.state, numpys.bit_generator.state
        assert np.array_equal(a['state']['state'], b['state']['state'])
        assert (a['has_uint32'], a['uinteger']) == \
            (b['has_uint32'], b['uinteger'])
        assert ours.random() == numpys.random()
