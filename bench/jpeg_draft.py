"""JPEG draft mode against full decoding: time and image statistics.

For every embedded JPEG photo and resize targets of 150k, 300k and 450k
pixels (the ends and middle of the loader's range), decodes the photo in
full and in draft mode, resizes both as the loader does
(``preprocess.resize_to_pixels``, 2015 bilinear without anti-aliasing), and
compares the resized images: mean and standard deviation of the pixels, and
sharpness as the mean absolute difference of neighbouring pixels (0..255
units).  Draft mode with a margin m decodes at the smallest DCT scale that
keeps the image at least m times the target on both sides; the library uses
m = decode.DRAFT_MARGIN (2).  Margin 1 is emulated by asking for a quarter
of the pixels (half the sides) with the library's margin 2.

    .venv/bin/python bench/jpeg_draft.py
"""
import argparse
import time

import numpy as np
from PIL import Image

from deepcontext.data import decode, photos, preprocess

TARGETS = (150000, 300000, 450000)


def sharpness(im):
    """Mean absolute difference of neighbouring pixels, 0..255 units."""
    return 255 * 0.5 * (np.abs(np.diff(im, axis=0)).mean() +
                        np.abs(np.diff(im, axis=1)).mean())


def stats(path, target, draft_pixels):
    """(seconds to decode and resize, scale drafted, mean, std, sharpness)."""
    t0 = time.perf_counter()
    im = decode.load_rgb(path, draft_pixels=draft_pixels)
    out = preprocess.resize_to_pixels(im, target)
    dt = time.perf_counter() - t0
    with Image.open(path) as img:
        scale = img.size[0] / float(im.shape[1])
    return dt, scale, out.mean(), out.std(), sharpness(out)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--repeat', type=int, default=1,
                   help='decode each photo this many times (best time kept)')
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    paths = []
    for p in photos.demo_photos():
        with Image.open(p) as img:
            if img.format == 'JPEG':
                paths.append(p)
    print('%d embedded JPEG photos; per image: decode + resize time, share '
          'drafted, resized-image statistics (draft vs full)' % len(paths))
    print('%-8s %-7s %9s %9s %8s %16s %16s %18s' % (
        'target', 'margin', 'full ms', 'draft ms', 'drafted', 'mean f/d',
        'std f/d', 'sharpness d/f'))
    for target in TARGETS:
        for margin, draft_pixels in ((2, target), (1, target // 4)):
            rows = []
            for path in paths:
                full = min((stats(path, target, None)
                            for _ in range(args.repeat)), key=lambda r: r[0])
                draft = min((stats(path, target, draft_pixels)
                             for _ in range(args.repeat)),
                            key=lambda r: r[0])
                rows.append(full + draft)
            r = np.array(rows)
            ratio = r[:, 9] / r[:, 4]
            print('%-8d %-7d %9.1f %9.1f %7.0f%% %7.4f/%-7.4f %7.4f/%-7.4f '
                  '%.3f [%.3f, %.3f]' % (
                      target, margin, 1e3 * r[:, 0].mean(),
                      1e3 * r[:, 5].mean(), 100 * (r[:, 6] > 1.5).mean(),
                      r[:, 2].mean(), r[:, 7].mean(), r[:, 3].mean(),
                      r[:, 8].mean(), np.median(ratio), ratio.min(),
                      ratio.max()))
    print('sharpness d/f: median [min, max] over photos of draft / full')


if __name__ == '__main__':
    main()
