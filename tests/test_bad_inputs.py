"""Bad images and bad configs: skipped or refused with one clear line."""
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from deepcontext.data import photos
from deepcontext.model import pycaffe
from conftest import ROOT, TRAIN, processes_with, write_config


def make_zoo(folder):
    """Good-but-unusual images, and broken ones, from a real photo."""
    folder.mkdir()
    photo = Image.open(photos.test_photos()[0]).convert('RGB')
    photo = photo.resize((640, 480))
    good = {
        'grey.png': photo.convert('L'),
        'cmyk.jpg': photo.convert('CMYK'),
        'palette.png': photo.convert('P'),
        'alpha.png': photo.convert('RGBA'),
        '16bit.png': Image.fromarray(
            (np.asarray(photo.convert('L'), np.uint16) * 257)),
    }
    for name, im in good.items():
        im.save(folder / name)
    exif = photo.getexif()
    exif[0x0112] = 6   # orientation: rotate 90
    photo.save(folder / 'exif_rotated.jpg', exif=exif)
    jpeg = (folder / 'exif_rotated.jpg').read_bytes()
    (folder / 'truncated.jpg').write_bytes(jpeg[:len(jpeg) // 3])
    (folder / 'zero.jpg').write_bytes(b'')
    (folder / 'not_an_image.png').write_text('this is text\n')
    # every image is resized to 150k-450k pixels, so only an extreme aspect
    # ratio is too small for a 2x2 grid: 1200x40 becomes at most ~2080x70
    photo.resize((1200, 40)).save(folder / 'thin.png')
    # 10000 x 9000 bilevel: 90 M pixels, over Pillow's bomb limit
    Image.new('1', (10000, 9000)).save(folder / 'huge.png')
    return ['truncated.jpg', 'zero.jpg', 'not_an_image.png', 'thin.png',
            'huge.png'], list(good) + ['exif_rotated.jpg']


def test_bad_images_are_skipped_with_one_line_each(tmp_path):
    bad, good = make_zoo(tmp_path / 'zoo')
    cfg = write_config(tmp_path, loader_workers=1)
    with open(cfg, 'a') as f:
        f.write('images = %r\n' % str(tmp_path / 'zoo'))
    r = subprocess.run([sys.executable, TRAIN, '--config', cfg,
                        '--max-iter', '14'], cwd=tmp_path, capture_output=True,
                       text=True, timeout=600,
                       env=dict(os.environ, GLOG_minloglevel='1'))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    log = (tmp_path / 'out' / 'train_out' / 'out.log').read_text()
    skips = [l for l in log.splitlines() if 'skipping image' in l]
    for name in bad:
        mine = [l.split('] ', 1)[1] for l in skips if name in l]
        assert mine, name
        # one line per file each time it comes up, naming a reason
        assert all(len(l) > len(name) + 30 for l in mine), mine
    for name in good:
        assert not any(name in l for l in skips), name
    assert 'Iteration 13, norm_loss' in log


def test_no_usable_image_fails_fast_with_a_message(tmp_path):
    zoo = tmp_path / 'broken'
    zoo.mkdir()
    (zoo / 'a.jpg').write_bytes(b'')
    (zoo / 'b.png').write_text('nope')
    cfg = write_config(tmp_path)
    with open(cfg, 'a') as f:
        f.write('images = %r\n' % str(zoo))
    r = subprocess.run([sys.executable, TRAIN, '--config', cfg],
                       cwd=tmp_path, capture_output=True, text=True,
                       timeout=300, env=dict(os.environ,
                                             GLOG_minloglevel='1'))
    assert r.returncode == 1
    assert 'no usable image' in r.stderr
    assert processes_with(cfg) == []


@pytest.mark.parametrize('line, message', [
    ('out_dir = 5', "config key 'out_dir' must be str"),
    ('batch_sz = 512', 'unknown config key(s) batch_sz'),
    ('images = "/no/such/folder"', '/no/such/folder'),
    ('out_dir = "/no/such/out"', 'out_dir /no/such/out does not exist'),
    ('batch_size = 1024', 'at most 512'),
    ('resume = "maybe"', 'resume must be one of'),
])
def test_config_errors_are_one_clear_line(tmp_path, line, message):
    cfg = write_config(tmp_path)
    with open(cfg, 'a') as f:
        f.write(line + '\n')
    r = subprocess.run([sys.executable, TRAIN, '--config', cfg],
                       cwd=tmp_path, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode != 0
    assert message in r.stderr, r.stderr
    assert 'Traceback' not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / 'out' / 'train_out').exists()


def test_missing_config_and_missing_key(tmp_path):
    r = subprocess.run([sys.executable, TRAIN, '--config',
                        str(tmp_path / 'nope.py')], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and 'not found' in r.stderr
    (tmp_path / 'c.py').write_text('images = "x"\n')
    r = subprocess.run([sys.executable, TRAIN, '--config',
                        str(tmp_path / 'c.py')], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    assert "config key 'out_dir' is missing" in r.stderr


# Where no GPU can be used, Caffe itself aborts with a CHECK failure and a
# stack trace (status 134).  What `gpu = 0` is told instead, by build: the
# CPU-only build refuses it; a CUDA build under CUDA_VISIBLE_DEVICES='' sees
# no device, or, on a machine without NVIDIA's driver, no driver.
NO_GPU = ('this pycaffe is a CPU-only build' if pycaffe.cpu_only() else
          r"no CUDA device is visible \(CUDA_VISIBLE_DEVICES=''\)|"
          r'no NVIDIA driver here \(libcuda\.so\.1 not found\)')


def test_a_gpu_that_cannot_be_used_is_one_line(tmp_path):
    cfg = write_config(tmp_path, gpu=0)
    env = dict(os.environ, CUDA_VISIBLE_DEVICES='')
    r = subprocess.run([sys.executable, TRAIN, '--config', cfg],
                       cwd=tmp_path, capture_output=True, text=True,
                       timeout=120, env=env)
    assert r.returncode == 1, r.stderr
    assert re.fullmatch('deepcontext: gpu=0 requested, but (%s)' % NO_GPU,
                        r.stderr.strip()), r.stderr
    assert not (tmp_path / 'out' / 'train_out').exists()
    assert processes_with(cfg) == []
    # the evaluation tools say the same through toolcheck.run
    r = subprocess.run([sys.executable,
                        os.path.join(ROOT, 'tools', 'eval_pretext.py'),
                        '--gpu', '0', '--images', photos.test_photos()[0]],
                       capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 1, r.stderr
    assert re.fullmatch('eval_pretext: GPU 0: (%s)' % NO_GPU,
                        r.stderr.strip()), r.stderr
