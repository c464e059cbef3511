"""Bad input to the tools and train.py: one line, a non-zero exit, no
traceback, and never a NaN result on disk (deepcontext/eval/toolcheck.py)."""
import os
import shutil
import subprocess
import sys

import caffe
import numpy as np
import pytest

from conftest import ROOT, TRAIN, write_config
from deepcontext.data import photos


def tool(name, *args, cwd=None):
    return subprocess.run([sys.executable, os.path.join(ROOT, 'tools', name)]
                          + [str(a) for a in args], capture_output=True,
                          text=True, timeout=300, cwd=cwd)


def one_line_failure(r, *words):
    assert r.returncode != 0, r.stdout[-2000:]
    assert 'Traceback' not in r.stderr and 'Check failed' not in r.stderr, \
        r.stderr[-3000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr[-3000:]
    for w in words:
        assert w in lines[0], lines[0]


@pytest.fixture(scope='module')
def photo_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp('photos')
    for path in photos.test_photos()[:4]:
        shutil.copy(path, folder)
    return folder


@pytest.fixture(scope='module')
def not_an_lmdb(tmp_path_factory):
    folder = tmp_path_factory.mktemp('corrupt_lmdb')
    (folder / 'data.mdb').write_bytes(np.random.RandomState(0).bytes(65536))
    return folder


def test_missing_weights(tmp_path, photo_dir, bn_snapshot):
    missing = tmp_path / 'nope.caffemodel'
    one_line_failure(tool('eval_pretext.py', '--weights', missing,
                          '--images', photo_dir), 'no such file', 'nope')
    one_line_failure(tool('linear_probe.py', '--weights', missing),
                     'no such file')
    net, no_bn, _ = bn_snapshot
    one_line_failure(tool('debatchnorm.py', net, missing, no_bn,
                          tmp_path / 'o.caffemodel'), 'inmodel', 'no such')
    one_line_failure(tool('export_fast_rcnn.py', no_bn, missing, tmp_path),
                     'no such file')
    one_line_failure(tool('rescale.py', no_bn, '-l', missing, '-o',
                          tmp_path / 'o.caffemodel'), 'no such file')


def test_an_lmdb_where_image_files_are_expected(photo_dir, not_an_lmdb,
                                                tmp_path):
    for name in ('eval_pretext.py', 'nn_patches.py'):
        one_line_failure(tool(name, '--random', '--images', not_an_lmdb,
                              '--out', tmp_path), 'is an LMDB')


def test_pack_lmdb_missing_source(tmp_path):
    one_line_failure(tool('pack_lmdb.py', tmp_path / 'no_such_folder',
                          tmp_path / 'db'), 'no_such_folder')
    assert not (tmp_path / 'db').exists()


def test_rescale_unknown_reinit_layer(tmp_path, bn_snapshot):
    _, no_bn, _ = bn_snapshot
    one_line_failure(tool('rescale.py', no_bn, '-o', tmp_path / 'o.caffemodel',
                          '--reinit', 'fc77'), 'fc77', 'conv1')


def test_rescale_refuses_to_write_nan(tmp_path, bn_snapshot):
    _, no_bn, _ = bn_snapshot
    net = caffe.Net(no_bn, caffe.TEST)
    for blobs in net.params.values():
        for b in blobs:
            b.data[...] = np.nan
    weights = str(tmp_path / 'nan.caffemodel')
    net.save(weights)
    out = tmp_path / 'rescaled.caffemodel'
    r = tool('rescale.py', no_bn, '-l', weights, '-o', out,
             '--batch-size', 8, '--batches', 1, '--rounds', 1)
    assert r.returncode != 0 and 'NaN' in r.stderr, r.stdout + r.stderr
    assert 'Traceback' not in r.stderr, r.stderr
    assert not out.exists()


def test_debatchnorm_takes_a_folder_of_images(tmp_path, photo_dir,
                                              bn_snapshot):
    net, no_bn, model = bn_snapshot
    r = tool('debatchnorm.py', net, model, no_bn, tmp_path / 'o.caffemodel',
             '--images', photo_dir, '--patches', 8)
    assert r.returncode == 0, r.stdout + r.stderr
    assert 'check passed' in r.stdout


@pytest.mark.parametrize('setting, message', [
    ("tmp_dir = %r", 'tmp_dir'),
    ("images = 'lmdb:%s'", 'MDB_INVALID'),
])
def test_train_refuses_unusable_tmp_dir_and_corrupt_lmdb(tmp_path, setting,
                                                         message, not_an_lmdb):
    blocker = tmp_path / 'a_file'
    blocker.write_text('x')
    cfg = write_config(tmp_path)
    value = str(blocker / 'sub') if 'tmp_dir' in setting else not_an_lmdb
    with open(cfg, 'a') as f:
        f.write(setting % str(value) + '\n')
    r = subprocess.run([sys.executable, TRAIN, '--config', cfg], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    one_line_failure(r, message)
    assert r.returncode == 1
