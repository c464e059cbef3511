"""Tests for deepcontext/data/lmdb_source.py and tools/pack_lmdb.py.

Real photos (the embedded test photos), real LMDBs, real pycaffe: Caffe's
own ``caffe.io.array_to_datum`` / ``datum_to_array`` are the independent
reference for raw records, and Caffe's Data layer reads a packed database.
Caffe's ``convert_imageset`` cannot be the reference writer: this Caffe is
built without OpenCV, and the tool then refuses to run ("This tool requires
OpenCV"), so the convert_imageset-style databases here are written with
``caffe.io.array_to_datum`` and convert_imageset's key format.
"""
import io
import os
import pickle
import shutil
import subprocess
import sys

import lmdb
import numpy as np
import pytest
from google.protobuf import text_format
from PIL import Image

import caffe
import caffe.io
from caffe.proto import caffe_pb2
from deepcontext.data import decode, lmdb_source, loader, photos as dc_photos, sources

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# caffe.io's datum helpers use numpy's deprecated tostring / fromstring.
pytestmark = pytest.mark.filterwarnings('ignore::DeprecationWarning:caffe.io')


@pytest.fixture(scope='module')
def photos():
    """The 12 test photos (PNG and JPEG) as a file source."""
    return sources.open_image_source(dc_photos.test_photos())


@pytest.fixture(scope='module')
def packed(photos, tmp_path_factory):
    """{'encoded': path, 'raw': path}: the test photos packed both ways."""
    out = tmp_path_factory.mktemp('packed')
    dbs = {}
    for form in ('encoded', 'raw'):
        dbs[form] = str(out / form)
        lmdb_source.pack(photos, dbs[form], raw=(form == 'raw'),
                         commit_every=5, progress=None)
    return dbs


def write_db(path, records):
    """An LMDB holding ``records``, a list of (key, value) bytes."""
    env = lmdb.open(str(path), map_size=1 << 26)
    with env.begin(write=True) as txn:
        for key, value in records:
            txn.put(key, value)
    env.close()
    return str(path)


def read_records(path):
    env = lmdb.open(str(path), readonly=True, lock=False)
    with env.begin() as txn:
        records = list(txn.cursor())
    env.close()
    return records


def big_jpeg():
    """The smallest embedded JPEG over 4 megapixels (draft-mode tests)."""
    sizes = []
    for p in dc_photos.demo_photos():
        with Image.open(p) as img:
            if img.format == 'JPEG' and img.size[0] * img.size[1] > 4e6:
                sizes.append((os.path.getsize(p), p))
    return min(sizes)[1]


# ------------------------------------------------------ reading both forms

def test_files_encoded_and_raw_lmdb_give_the_same_pixels(photos, packed):
    enc = sources.open_image_source(packed['encoded'])
    raw = sources.open_image_source('lmdb:' + packed['raw'])
    assert isinstance(enc, lmdb_source.LmdbImageSet)
    assert len(enc) == len(raw) == len(photos) == 12
    assert 'LMDB' in enc.describe() and '12 images' in enc.describe()
    for i in range(len(photos)):
        expected = photos.load(i)
        name = os.path.basename(photos.paths[i])
        assert enc.key(i) == b'%08d_%s' % (i, name.encode())
        assert raw.key(i) == enc.key(i)
        np.testing.assert_array_equal(enc.load(i), expected)
        np.testing.assert_array_equal(raw.load(i), expected)


def test_encoded_records_keep_the_file_bytes(photos, packed):
    for i, (key, value) in enumerate(read_records(packed['encoded'])):
        datum = caffe_pb2.Datum.FromString(value)
        assert datum.encoded
        with open(photos.paths[i], 'rb') as f:
            assert datum.data == f.read()
        with Image.open(photos.paths[i]) as img:
            assert (datum.width, datum.height) == img.size


def test_raw_records_are_what_caffe_io_writes(photos, packed):
    for i, (key, value) in enumerate(read_records(packed['raw'])):
        datum = caffe_pb2.Datum.FromString(value)
        bgr_chw = photos.load(i)[:, :, ::-1].transpose(2, 0, 1)
        assert not datum.encoded and datum.channels == 3
        np.testing.assert_array_equal(caffe.io.datum_to_array(datum),
                                      bgr_chw)
        reference = caffe.io.array_to_datum(np.ascontiguousarray(bgr_chw), 0)
        assert datum.data == reference.data


def test_reads_a_convert_imageset_style_database(photos, tmp_path):
    colour = photos.load(0)
    grey = colour[:120, :90, 1].copy()
    with open(photos.paths[-1], 'rb') as f:
        jpeg = f.read()
    encoded = caffe_pb2.Datum(data=jpeg, encoded=True, label=7)
    db = write_db(tmp_path / 'caffe_lmdb', [
        # convert_imageset's keys: line number, '_', the listed path.
        (b'00000000_n01/a.png', caffe.io.array_to_datum(
            np.ascontiguousarray(colour[:, :, ::-1].transpose(2, 0, 1)),
            3).SerializeToString()),
        (b'00000001_n01/b.png', caffe.io.array_to_datum(
            grey[np.newaxis], 4).SerializeToString()),
        (b'00000002_n02/c.jpg', encoded.SerializeToString()),
    ])
    source = sources.open_image_source(db)
    np.testing.assert_array_equal(source.load(0), colour)
    np.testing.assert_array_equal(source.load(1), np.dstack([grey] * 3))
    np.testing.assert_array_equal(source.load(2),
                                  decode.load_rgb(photos.paths[-1]))


def test_corrupt_records_name_their_key_and_database(photos, tmp_path):
    with open(photos.paths[-1], 'rb') as f:
        jpeg = f.read()
    good = caffe.io.array_to_datum(np.zeros((3, 4, 5), np.uint8))
    short = caffe_pb2.Datum(channels=3, height=4, width=5, data=b'\0' * 59)
    floats = caffe.io.array_to_datum(np.zeros((3, 4, 5), np.float32))
    four = caffe.io.array_to_datum(np.zeros((4, 4, 5), np.uint8))
    bad = {
        b'00000001_not_a_datum': (b'\xff' * 40, 'not a Caffe Datum'),
        b'00000002_truncated.jpg': (caffe_pb2.Datum(
            data=jpeg[:len(jpeg) // 2], encoded=True).SerializeToString(),
            'truncated'),
        b'00000003_text.jpg': (caffe_pb2.Datum(
            data=b'not an image', encoded=True).SerializeToString(),
            'not a recognised image'),
        b'00000004_short': (short.SerializeToString(), 'holds 59 bytes'),
        b'00000005_floats': (floats.SerializeToString(), 'float_data'),
        b'00000006_four': (four.SerializeToString(), '4 channels'),
        b'00000007_empty': (b'', 'without pixels'),
    }
    db = write_db(tmp_path / 'corrupt',
                  [(b'00000000_good', good.SerializeToString())] +
                  [(k, v) for k, (v, _) in bad.items()])
    source = sources.open_image_source(db)
    assert source.load(0).shape == (4, 5, 3)
    for i, (key, (_, words)) in enumerate(bad.items(), 1):
        with pytest.raises(decode.ImageError) as info:
            source.load(i)
        message = str(info.value)
        assert key.decode() in message and db in message, message
        assert words in message, message


def test_loader_skips_a_corrupt_record_after_fork(photos, tmp_path):
    records = []
    for i in (0, 1, 2):
        with open(photos.paths[i], 'rb') as f:
            datum = caffe_pb2.Datum(data=f.read(), encoded=True)
        records.append((b'%08d_ok%d.png' % (i, i), datum.SerializeToString()))
    records.append((b'00000003_broken.png', b'\x08\x03garbage'))
    db = write_db(tmp_path / 'with_corrupt', records)
    source = sources.open_image_source(db)
    source.load(0)          # the parent opens its environment before forking
    messages = []
    with loader.BatchLoader(source, [3], 64, queue_size=1,
                            log=messages.append) as ld:
        for _ in range(6):   # 4 images a pass: the broken one comes up
            b = ld.get(timeout=120)
            assert 0 < b.data.shape[0] < 64
            ld.release(b)
    text = '\n'.join(messages)
    assert '00000003_broken.png' in text and db in text, text
    assert source._pid == os.getpid()
    np.testing.assert_array_equal(source.load(1), photos.load(1))


def test_a_pickled_source_opens_its_own_environment(photos, packed):
    source = sources.open_image_source(packed['encoded'])
    source.load(0)
    copy = pickle.loads(pickle.dumps(source))
    assert copy._env is None
    np.testing.assert_array_equal(copy.load(3), photos.load(3))
    source.close()
    np.testing.assert_array_equal(source.load(3), photos.load(3))


def test_open_errors(photos, packed, tmp_path):
    with pytest.raises(ValueError, match='LMDB'):
        sources.open_image_source([packed['encoded'], photos.paths[0]])
    with pytest.raises(FileNotFoundError, match='data.mdb'):
        sources.open_image_source('lmdb:' + str(tmp_path))
    empty = write_db(tmp_path / 'empty', [])
    with pytest.raises(ValueError, match='no records'):
        sources.open_image_source(empty)
    source = sources.open_image_source(packed['raw'])
    with pytest.raises(IndexError):
        source.load(len(source))


# ------------------------------------------------------------- draft mode

def test_draft_mode_decodes_big_jpegs_smaller(tmp_path):
    path = big_jpeg()
    folder = tmp_path / 'big'
    folder.mkdir()
    shutil.copy(path, str(folder / 'big.jpg'))
    db = str(tmp_path / 'big_lmdb')
    lmdb_source.pack(sources.open_image_source(str(folder)), db,
                     progress=None)
    full = decode.load_rgb(path)
    h, w = full.shape[:2]
    for target in (150000, 450000):
        drafted = decode.load_rgb(path, draft_pixels=target)
        th, tw = (int(h * (target / (h * w)) ** .5),
                  int(w * (target / (h * w)) ** .5))
        # Still at least twice the resize target on both sides, and the
        # smallest DCT scale that keeps that margin.
        assert drafted.shape[0] >= 2 * th and drafted.shape[1] >= 2 * tw
        scale = round(w / drafted.shape[1])
        assert scale in (1, 2, 4, 8)
        assert w // (2 * scale) < 2 * tw or h // (2 * scale) < 2 * th
        for draft in (False, True):
            source = sources.open_image_source(db, draft=draft)
            files = sources.open_image_source(str(folder), draft=draft)
            expected = drafted if draft else full
            np.testing.assert_array_equal(source.load(0, target), expected)
            np.testing.assert_array_equal(files.load(0, target), expected)
    assert decode.load_rgb(path, draft_pixels=150000).shape[0] < h
    # PNGs have no draft mode.
    png = dc_photos.test_photos()[0]
    np.testing.assert_array_equal(decode.load_rgb(png, draft_pixels=1000),
                                  decode.load_rgb(png))


# ---------------------------------------------------------------- packing

def test_pack_resumes_where_it_stopped(photos, packed, tmp_path):
    db = str(tmp_path / 'resumed')
    first = lmdb_source.pack(photos, db, commit_every=2, limit=5,
                             progress=None)
    assert first == {'written': 5, 'skipped': 0, 'records': 5, 'first': 0}
    log = io.StringIO()
    second = lmdb_source.pack(photos, db, commit_every=2, progress=log,
                              progress_every=2)
    assert second['first'] == 5 and second['written'] == 7
    assert second['records'] == 12
    assert 'packed 7/7 images (100.0%)' in log.getvalue()
    assert read_records(db) == read_records(packed['encoded'])
    third = lmdb_source.pack(photos, db, progress=None)
    assert third['written'] == 0 and third['records'] == 12
    with pytest.raises(lmdb_source.PackError, match='--raw'):
        lmdb_source.pack(photos, db, raw=True, progress=None)
    other = sources.open_image_source(dc_photos.test_photos()[:3])
    with pytest.raises(lmdb_source.PackError, match='another source'):
        lmdb_source.pack(other, packed['raw'], raw=True, progress=None)


def test_pack_skips_unreadable_files(photos, tmp_path):
    folder = tmp_path / 'mixed'
    folder.mkdir()
    shutil.copy(photos.paths[0], str(folder / 'a.png'))
    (folder / 'b.jpg').write_text('not a picture')
    (folder / 'c.png').write_bytes(b'')
    shutil.copy(photos.paths[-1], str(folder / 'd.jpg'))
    source = sources.open_image_source(str(folder))
    for raw in (False, True):
        log = io.StringIO()
        db = str(tmp_path / ('mixed_raw' if raw else 'mixed_enc'))
        result = lmdb_source.pack(source, db, raw=raw, progress=log)
        assert result['written'] == 2 and result['skipped'] == 2
        assert 'b.jpg' in log.getvalue() and 'c.png' in log.getvalue()
        # The skipped images' indices stay unused: key = source index.
        assert [k for k, _ in read_records(db)] == [b'00000000_a.png',
                                                    b'00000003_d.jpg']


def test_pack_max_side_and_map_growth(photos, tmp_path, monkeypatch):
    # A map far too small for the images: pack must grow it.
    monkeypatch.setattr(lmdb_source, 'INITIAL_MAP_SIZE', 1 << 16)
    for raw in (False, True):
        db = str(tmp_path / ('small_raw' if raw else 'small_enc'))
        lmdb_source.pack(photos, db, raw=raw, max_side=200, commit_every=4,
                         progress=None)
        # The file cannot outgrow the map: it was grown.
        assert os.path.getsize(os.path.join(db, 'data.mdb')) > 1 << 16
        source = sources.open_image_source(db)
        for i in range(len(photos)):
            im = source.load(i)
            assert max(im.shape[:2]) == 200
            datum = caffe_pb2.Datum.FromString(read_records(db)[i][1])
            if raw or not photos.paths[i].endswith('.jpg'):
                # Raw and PNG records are lossless: exactly the shrunk image.
                np.testing.assert_array_equal(
                    im, lmdb_source._shrink(photos.load(i), 200))
            else:
                assert Image.open(io.BytesIO(datum.data)).format == 'JPEG'


# ------------------------------------------------------------------ Caffe

def test_caffe_data_layer_reads_a_raw_lmdb(photos, tmp_path):
    db = str(tmp_path / 'for_caffe')
    lmdb_source.pack(photos, db, raw=True, max_side=160, progress=None)
    net = caffe_pb2.NetParameter()
    data = net.layer.add(name='data', type='Data', top=['data', 'label'])
    data.data_param.source = db
    data.data_param.batch_size = 2
    data.data_param.backend = caffe_pb2.DataParameter.LMDB
    # Images differ in size; Caffe's TEST-phase crop is centred.
    data.transform_param.crop_size = 64
    net.layer.add(name='silence', type='Silence', bottom=['label'])
    path = str(tmp_path / 'data_net.prototxt')
    with open(path, 'w') as f:
        f.write(text_format.MessageToString(net))
    caffe.set_mode_cpu()
    cnet = caffe.Net(path, caffe.TEST)
    ours = sources.open_image_source(db)
    for batch in range(2):
        out = cnet.forward()['data']
        assert out.shape == (2, 3, 64, 64)
        for k in range(2):
            im = ours.load(2 * batch + k)
            y, x = (im.shape[0] - 64) // 2, (im.shape[1] - 64) // 2
            expected = im[y:y + 64, x:x + 64, ::-1].transpose(2, 0, 1)
            np.testing.assert_array_equal(out[k], expected)


def test_pack_tool_resumes(photos, packed, tmp_path):
    db = str(tmp_path / 'tool_db')
    list_file = tmp_path / 'photos.txt'
    list_file.write_text('\n'.join(photos.paths) + '\n')
    cmd = [sys.executable, os.path.join(ROOT, 'tools', 'pack_lmdb.py'),
           str(list_file), db]
    run = subprocess.run(cmd + ['--limit', '4'], capture_output=True,
                         text=True, check=True)
    assert '4 records' in run.stderr
    run = subprocess.run(cmd, capture_output=True, text=True, check=True)
    assert '12 records; this run wrote 8' in run.stderr
    assert read_records(db) == read_records(packed['encoded'])
    run = subprocess.run(cmd[:-1] + [packed['raw'], db],
                         capture_output=True, text=True)
    assert run.returncode != 0 and 'is an LMDB' in run.stderr
