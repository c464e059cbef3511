"""Shared test helpers: a real BatchNorm snapshot, and running train.py."""
import os
import subprocess
import sys

import numpy as np
import pytest

os.environ.setdefault('GLOG_minloglevel', '2')
import caffe  # noqa: E402

from deepcontext.data import batches, photos  # noqa: E402
from deepcontext.eval import features, neighbours  # noqa: E402
from deepcontext.model import nets, pycaffe, solver  # noqa: E402


@pytest.fixture(scope='session')
def bn_snapshot(tmp_path_factory):
    """(network.prototxt, network_no_bn.prototxt, caffemodel) after 4 SGD
    steps on real patches, so the BatchNorm statistics are real."""
    out = str(tmp_path_factory.mktemp('bn_snapshot'))
    nets.write_nets(out, batch_size=24)
    path = solver.write_solver(os.path.join(out, 'solver.prototxt'),
                               solver.gen_solver(out, base_lr=1e-3))
    caffe.set_mode_cpu()
    caffe.set_random_seed(0)   # the same fillers, so the same snapshot
    s = caffe.get_solver(path)
    data = batches.real_patches(photos.test_photos(), 24, seed=1)
    rs = np.random.RandomState(0)
    pairs = np.stack([np.arange(23), np.arange(1, 24)], 1)
    for _ in range(4):
        pycaffe.set_inputs(s.net, data, pairs, rs.randint(0, 8, 23))
        s.step(1)
    model = os.path.join(out, 'model.caffemodel')
    s.net.save(model)
    return (os.path.join(out, 'network.prototxt'),
            os.path.join(out, 'network_no_bn.prototxt'), model)


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(ROOT, 'train.py')


def write_config(tmp_path, **extra):
    (tmp_path / 'out').mkdir(exist_ok=True)
    settings = dict(out_dir=str(tmp_path / 'out'), batch_size=48,
                    loader_workers=2, queue_size=1, snapshot_every=10,
                    stats_every=5, resume='yes')
    settings.update(extra)
    lines = ['from deepcontext.data import photos as _d',
             'images = _d.test_photos()']
    lines += ['%s = %r' % kv for kv in settings.items()]
    path = tmp_path / 'deepcontext_config.py'
    path.write_text('\n'.join(lines) + '\n')
    return str(path)


def processes_with(marker):
    """PIDs of live processes whose command line mentions marker."""
    found = []
    for pid in os.listdir('/proc'):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            with open('/proc/%s/cmdline' % pid, 'rb') as f:
                cmd = f.read().decode(errors='replace')
            with open('/proc/%s/stat' % pid) as f:
                zombie = f.read().split(') ')[1].startswith('Z')
        except OSError:
            continue
        if marker in cmd and not zombie:
            found.append(int(pid))
    return found


def run_train(tmp_path, cfg, *args, timeout=600):
    env = dict(os.environ, GLOG_minloglevel='1')
    return subprocess.run([sys.executable, TRAIN, '--config', cfg] +
                          list(args), cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=timeout)


def run_driver(tmp_path, source, cfg, timeout=600, **env):
    """Run the script ``source`` with the arguments TRAIN and cfg (a driver
    that execs train.py in one namespace, as IPython's %run -i does)."""
    driver = tmp_path / 'driver.py'
    driver.write_text(source)
    return subprocess.run([sys.executable, str(driver), TRAIN, cfg],
                          cwd=tmp_path, capture_output=True, text=True,
                          timeout=timeout,
                          env=dict(os.environ, **dict(
                              {'GLOG_minloglevel': '1'}, **env)))


# The start of a driver: train.py exec'd in one namespace until a pause
# file, written as soon as the trainer exists, makes it return.
PAUSED_RUN = '''
import os, sys, threading, time
train, cfg = sys.argv[1], sys.argv[2]
sys.argv = [train, '--config', cfg, '--max-iter', '1000']
ns = {'__file__': train, '__name__': '__main__'}
code = compile(open(train).read(), train, 'exec')

def pause_when_running():
    while 'trainer' not in ns:
        time.sleep(0.05)
    open('train_pause', 'w').close()

threading.Thread(target=pause_when_running, daemon=True).start()
exec(code, ns)                                   # %run -i train.py
'''


# ---- evaluation: a trained snapshot, held-out photos, the tools
BN_EPS = 1e-5   # Caffe's BatchNorm default, as in gen_net


def held_out(n):
    """Test photos the bn_snapshot fixture never trained on."""
    return photos.test_photos()[4:4 + n]


@pytest.fixture(scope='module')
def trained(bn_snapshot):
    return features.load_net(bn_snapshot[2])


@pytest.fixture(scope='module')
def patches():
    return neighbours.sample_patches(held_out(3), per_image=4, seed=0)


def run_tool(name, *args):
    r = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', name)]
                       + [str(a) for a in args], capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout


# A VOC-layout fixture from the embedded photos, shorter side 300 px, with
# boxes drawn by hand (1-based, as in VOC's XML): (photo, id, set, objects).
VOC_FIXTURE = (
    ('astronaut.png', 'astronaut', 'trainval',
     [('person', 10, 5, 215, 300, 0)]),
    ('camera.png', 'camera', 'trainval', [('person', 1, 35, 195, 300, 0)]),
    ('chelsea.png', 'chelsea', 'trainval', [('cat', 1, 1, 420, 300, 0)]),
    ('motorcycle_left.png', 'motorcycle_left', 'trainval',
     [('motorbike', 55, 45, 410, 275, 0), ('chair', 20, 60, 170, 180, 1)]),
    ('motorcycle_right.png', 'motorcycle_right', 'test',
     [('motorbike', 55, 45, 410, 275, 0), ('chair', 20, 60, 170, 180, 1)]),
    ('camera.png', 'camera_test', 'test', [('person', 1, 35, 195, 300, 0)]),
)


def fixture_proposals(objects, width, height, rng, count=40):
    """Boxes near each object (some IoU >= 0.5) plus random ones, 1-based."""
    boxes = []
    for _, x1, y1, x2, y2, _ in objects:
        w, h = x2 - x1, y2 - y1
        for _ in range(count // (2 * len(objects))):
            j = rng.uniform(-0.25, 0.25, 4) * [w, h, w, h]
            boxes.append([x1 + j[0], y1 + j[1], x2 + j[2], y2 + j[3]])
    while len(boxes) < count:
        x1, y1 = rng.uniform(1, width - 40), rng.uniform(1, height - 40)
        boxes.append([x1, y1, rng.uniform(x1 + 30, width),
                      rng.uniform(y1 + 30, height)])
    boxes = np.clip(np.round(boxes), 1, [width, height, width, height])
    return boxes


@pytest.fixture(scope='session')
def voc_fixture(tmp_path_factory):
    """dict root, trainval_mat (Fast R-CNN's selective-search format) and
    test_boxes (the plain box file) of a 6-image VOC folder."""
    import scipy.io
    from PIL import Image
    from deepcontext.data import voc
    root = str(tmp_path_factory.mktemp('VOCdevkit') / 'VOC2007')
    rng = np.random.RandomState(0)
    paths = {os.path.basename(p): p for p in photos.test_photos()}
    sets = {'trainval': [], 'test': []}
    props = {'trainval': [], 'test': []}
    sizes = {}
    for photo, i, image_set, objects in VOC_FIXTURE:
        im = Image.open(paths[photo]).convert('RGB')
        f = 300.0 / min(im.size)
        sizes[i] = (round(im.size[0] * f), round(im.size[1] * f))
        sets[image_set].append((i, sizes[i][0], sizes[i][1], objects))
        props[image_set].append(
            fixture_proposals(objects, sizes[i][0], sizes[i][1], rng))

    def write_image(i, path):
        photo = [p for p, j, _, _ in VOC_FIXTURE if j == i][0]
        Image.open(paths[photo]).convert('RGB').resize(sizes[i]).save(
            path, quality=95)
    for image_set, images in sets.items():
        voc.write_voc(root, image_set, images, write_image)
    mat = os.path.join(root, 'voc_2007_trainval.mat')
    cells = np.empty((1, len(props['trainval'])), object)
    for k, b in enumerate(props['trainval']):
        cells[0, k] = b[:, (1, 0, 3, 2)]      # y1 x1 y2 x2, 1-based
    scipy.io.savemat(mat, {'boxes': cells})
    box_file = os.path.join(root, 'test_boxes.txt')
    with open(box_file, 'w') as f:
        for (i, _, _, _), b in zip(sets['test'], props['test']):
            f.writelines('%s %d %d %d %d\n' % ((i,) + tuple(r)) for r in b)
    return dict(root=root, trainval_mat=mat, test_boxes=box_file,
                proposals=props)
