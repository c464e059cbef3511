"""Snapshots that are complete, verified, or never loaded.

Caffe writes a snapshot as two files, model_iter_N.caffemodel and
model_iter_N.solverstate, in place; a process killed while writing them
leaves a truncated pair that may even parse, and a disk or a copy may later
change bytes without changing sizes.  So:

* Before the step that snapshots, the trainer checks the free space and
  writes ``model_iter_N.writing`` (its intent).  A pair left with that file
  and no marker is a crash's leftover: removed at the next start.
* After Caffe has written the pair, both files are flushed to disk and
  hashed, and only then is ``model_iter_N.complete`` published (JSON: the
  iteration, each file's size and SHA-256, the net's parameter shapes and
  the solver type), written to a temporary name and renamed, which is
  atomic.  SHA-256 runs at about 0.9 GB/s here (SHA-NI), about 0.6 s for a
  pair of 2 x 254 MB, once per snapshot and once per start; it is what
  ``sha256sum`` prints, so a pair can be checked by hand.
* Before restoring, :func:`verify` re-reads the newest pair: a pair whose
  sizes, hashes or iteration disagree with its marker is rejected (the
  trainer reports it and moves it to ``rejected/``), and the next older
  pair is tried.  A pair made by another net (parameter shapes) or solver
  is refused, not skipped: the configuration, not the pair, is wrong.
* Markers of earlier releases hold only the two sizes.  They are verified
  by loading: both files are parsed (protobuf, about 0.6 s) and checked
  against the net (layer names, shapes, the solver's history, the
  iteration), then the marker is rewritten with hashes.

Caffe's file names and formats are unchanged, so other tools read the
snapshots as before.  To resume from a pair written by another tool (e.g.
the 2015 code), mark it; the files are parsed first and refused if they do
not parse::

    python -m deepcontext.train.snapshots mark OUTDIR N
"""
import glob
import hashlib
import json
import os
import re
import shutil
import sys

from caffe.proto import caffe_pb2
from google.protobuf.message import DecodeError

_NAME = re.compile(
    r'model_iter_(\d+)\.(caffemodel|solverstate|complete|writing|restoring)$')
VERSION = 2
REJECTED = 'rejected'    # the folder rejected pairs are moved into


class SnapshotError(RuntimeError):
    """A snapshot could not be written; the previous ones are intact."""


class ForeignSnapshot(ValueError):
    """A pair made by another net or solver than this run's."""


def paths(outdir, iteration):
    base = os.path.join(outdir, 'model_iter_%d' % iteration)
    return base + '.caffemodel', base + '.solverstate', base + '.complete'


def side_file(outdir, iteration, kind):
    """model_iter_N.writing or .restoring: an operation in progress."""
    return os.path.join(outdir, 'model_iter_%d.%s' % (iteration, kind))


def _fsync(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256(path):
    with open(path, 'rb') as f:
        return hashlib.file_digest(f, 'sha256').hexdigest()


def net_identity(layers):
    """A short name for a net's parameters: the SHA-256 of every layer
    name and blob shape, in order.

    Parameters
    ----------
    layers : iterable of (layer name, list of shapes), e.g. from
        :func:`live_layers` (a pycaffe net) or a parsed caffemodel
    """
    text = ';'.join('%s:%s' % (name, ','.join('x'.join(map(str, s))
                                              for s in shapes))
                    for name, shapes in layers)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def live_layers(net):
    return [(name, [tuple(b.data.shape) for b in blobs])
            for name, blobs in net.params.items()]


def _file_layers(model):
    return [(layer.name, [tuple(b.shape.dim) for b in layer.blobs])
            for layer in model.layer if layer.blobs]


def _write_json(path, content):
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
        json.dump(content, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def begin(outdir, iteration):
    """Before the step that makes Caffe write the pair of ``iteration``:
    record the intent (and drop a stale marker of that name)."""
    _, _, marker = paths(outdir, iteration)
    if os.path.exists(marker):
        os.remove(marker)
    _write_json(side_file(outdir, iteration, 'writing'), {'pid': os.getpid()})
    _fsync(outdir)


def mark_complete(outdir, iteration, layers=None, solver_type='SGD'):
    """Flush a written pair to disk, hash it and publish its marker.

    ``layers`` (see :func:`net_identity`) records which net made it; without
    it the pair is checked for its content and iteration only.
    """
    model, state, marker = paths(outdir, iteration)
    content = {'version': VERSION, 'iteration': iteration,
               'solver': solver_type}
    if layers is not None:
        content['net'] = net_identity(layers)
    for key, path in (('caffemodel', model), ('solverstate', state)):
        _fsync(path)
        content[key] = {'bytes': os.path.getsize(path),
                        'sha256': sha256(path)}
    _write_json(marker, content)
    writing = side_file(outdir, iteration, 'writing')
    if os.path.exists(writing):
        os.remove(writing)
    _fsync(outdir)   # the rename itself reaches the disk


def read_marker(outdir, iteration):
    """The marker's content, or None when absent or unreadable."""
    try:
        with open(paths(outdir, iteration)[2]) as f:
            content = json.load(f)
    except (OSError, ValueError):
        return None
    return content if isinstance(content, dict) else None


def _sizes(content):
    """(caffemodel bytes, solverstate bytes) of a marker of any version."""
    if content.get('version') == VERSION:
        return content['caffemodel']['bytes'], content['solverstate']['bytes']
    return content['caffemodel'], content['solverstate']


def is_complete(outdir, iteration):
    """A readable marker whose sizes match the files (cheap; the content is
    checked by :func:`verify` before a restore)."""
    model, state, _ = paths(outdir, iteration)
    content = read_marker(outdir, iteration)
    try:
        return content is not None and (
            (os.path.getsize(model), os.path.getsize(state)) ==
            tuple(_sizes(content)))
    except (OSError, KeyError, TypeError):
        return False


def _iterations(outdir):
    found = set()
    for path in glob.glob(os.path.join(outdir, 'model_iter_*')):
        m = _NAME.match(os.path.basename(path))
        if m:
            found.add(int(m.group(1)))
    return sorted(found)


def complete(outdir):
    """Iterations with a complete snapshot pair, ascending."""
    if not os.path.isdir(outdir):
        return []
    return [i for i in _iterations(outdir) if is_complete(outdir, i)]


def incomplete(outdir):
    """Iterations with snapshot files but no valid marker (never loaded)."""
    if not os.path.isdir(outdir):
        return []
    return [i for i in _iterations(outdir) if not is_complete(outdir, i)]


def crash_leftover(outdir, iteration):
    """True when an unmarked pair is ours: its writing was cut short."""
    return (os.path.exists(side_file(outdir, iteration, 'writing')) and
            not is_complete(outdir, iteration))


def remove(outdir, iteration):
    """Delete every file of a pair (a crash's leftover)."""
    for kind in ('caffemodel', 'solverstate', 'complete', 'writing',
                 'restoring'):
        path = side_file(outdir, iteration, kind)
        if os.path.exists(path):
            os.remove(path)


def reject(outdir, iteration):
    """Move every file of a pair into OUTDIR/rejected/ (kept, never loaded
    nor overwritten); returns that folder."""
    dest = os.path.join(outdir, REJECTED)
    os.makedirs(dest, exist_ok=True)
    for kind in ('caffemodel', 'solverstate', 'complete', 'writing',
                 'restoring'):
        path = side_file(outdir, iteration, kind)
        if os.path.exists(path):
            target, n = os.path.join(dest, os.path.basename(path)), 1
            while os.path.exists(target):
                target = os.path.join(dest, '%s.%d' % (os.path.basename(path),
                                                       n))
                n += 1
            os.replace(path, target)
    return dest


def state_header(path):
    """(iter, learned_net) from the head of a solverstate, without parsing
    the history: fields 1 and 2 come first in what Caffe writes."""
    with open(path, 'rb') as f:
        head = f.read(4096)
    fields, pos = {}, 0
    try:
        while pos < len(head) and len(fields) < 2:
            key, pos = _varint(head, pos)
            if key == (1 << 3):                      # iter, varint
                fields['iter'], pos = _varint(head, pos)
            elif key == (2 << 3) | 2:                # learned_net, bytes
                n, pos = _varint(head, pos)
                fields['learned_net'] = head[pos:pos + n].decode()
                pos += n
            else:
                break
    except (IndexError, UnicodeDecodeError):
        pass
    return fields.get('iter'), fields.get('learned_net')


def _varint(data, pos):
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7f) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def _check_identity(content, iteration, layers, solver_type):
    if layers is not None and 'net' in content and \
            content['net'] != net_identity(layers):
        raise ForeignSnapshot(
            'model_iter_%d was made by another net (its parameter shapes '
            'differ from this run\'s)' % iteration)
    if content.get('solver', solver_type) != solver_type:
        raise ForeignSnapshot('model_iter_%d was made by a %s solver, this '
                              'run has %s' % (iteration, content['solver'],
                                              solver_type))


def verify(outdir, iteration, layers=None, solver_type='SGD'):
    """Why the pair of ``iteration`` must not be restored, or None.

    Checks the marker against the files (sizes, SHA-256, iteration), the
    solverstate's own iteration and caffemodel path; for markers of earlier
    releases (sizes only), parses both files against ``layers`` and, when
    they pass, rewrites the marker with hashes.  Raises ForeignSnapshot
    when the pair belongs to another net or solver.
    """
    model, state, _ = paths(outdir, iteration)
    content = read_marker(outdir, iteration)
    if content is None:
        return 'no readable completion marker'
    if not is_complete(outdir, iteration):
        return 'file sizes differ from its completion marker'
    if content.get('version') == VERSION:
        if content.get('iteration') != iteration:
            return 'its marker names iteration %s' % content.get('iteration')
        _check_identity(content, iteration, layers, solver_type)
        for key, path in (('caffemodel', model), ('solverstate', state)):
            if sha256(path) != content[key]['sha256']:
                return ('%s content changed since it was written (SHA-256 '
                        'differs from its marker)' % os.path.basename(path))
    it, learned = state_header(state)
    if it != iteration:
        return 'its solverstate holds iteration %s' % it
    if learned is not None and os.path.basename(learned) != \
            os.path.basename(model):
        return 'its solverstate names another caffemodel (%s)' % learned
    if learned is not None and not os.path.isfile(learned):
        return ('its solverstate names %s, which does not exist (was the '
                'folder moved?)' % learned)
    if content.get('version') != VERSION:
        problem, _ = _load_check(model, state, iteration, layers)
        if problem:
            return problem
        mark_complete(outdir, iteration, layers, solver_type)
    return None


def _load_check(model_path, state_path, iteration, layers):
    """Parse a pair (markers of earlier releases, ``mark``).

    Returns (why it is bad or None, its layers as in :func:`net_identity`).
    """
    model, state = caffe_pb2.NetParameter(), caffe_pb2.SolverState()
    for message, path in ((model, model_path), (state, state_path)):
        with open(path, 'rb') as f:
            try:
                message.ParseFromString(f.read())
            except DecodeError as e:
                return ('%s does not parse (%s)' % (os.path.basename(path),
                                                    e), None)
    found = _file_layers(model)
    if layers is not None and found != [(n, [tuple(s) for s in shapes])
                                        for n, shapes in layers]:
        raise ForeignSnapshot(
            'model_iter_%d was made by another net (its layers or parameter '
            'shapes differ from this run\'s)' % iteration)
    blobs = [b for layer in model.layer for b in layer.blobs]
    history = list(state.history)
    if any(len(b.data) != _count(b.shape.dim) for b in blobs + history):
        return 'a blob holds fewer or more values than its shape', found
    if [tuple(h.shape.dim) for h in history] != \
            [tuple(b.shape.dim) for b in blobs]:
        return 'its solverstate history does not match its net', found
    if state.iter != iteration:
        return 'its solverstate holds iteration %d' % state.iter, found
    return None, found


def _count(shape):
    n = 1
    for d in shape:
        n *= d
    return n


def estimate_bytes(outdir, net):
    """Bytes the next snapshot needs: the last pair's, or 2.2x the weights
    (the caffemodel and the solver history are one copy each, plus room)."""
    done = complete(outdir)
    if done:
        model, state, _ = paths(outdir, done[-1])
        return os.path.getsize(model) + os.path.getsize(state)
    count = sum(b.data.size for blobs in net.params.values() for b in blobs)
    return int(2.2 * 4 * count)


def ensure_space(outdir, net, iteration, margin=1.2):
    """Raise SnapshotError unless the snapshot of ``iteration`` fits.

    Called before the step that makes Caffe write it: Caffe aborts the
    process when a write fails, so a full disk must be caught before.
    """
    need = estimate_bytes(outdir, net) * margin
    free = shutil.disk_usage(outdir).free
    if free < need:
        raise SnapshotError(
            'not enough disk space in %s for the snapshot of iteration %d: '
            '%.1f MB free, about %.1f MB needed; the previous snapshot is '
            'intact' % (outdir, iteration, free / 1e6, need / 1e6))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 3 or argv[0] != 'mark' or not argv[2].isdigit():
        print('usage: python -m deepcontext.train.snapshots mark OUTDIR N',
              file=sys.stderr)
        return 2
    outdir, it = argv[1], int(argv[2])
    model, state, _ = paths(outdir, it)
    for path in (model, state):
        if not os.path.isfile(path):
            print('%s not found' % path, file=sys.stderr)
            return 1
    problem, layers = _load_check(model, state, it, None)
    if problem:
        print('not marked: model_iter_%d: %s' % (it, problem),
              file=sys.stderr)
        return 1
    mark_complete(outdir, it, layers)
    print('marked model_iter_%d complete' % it)
    return 0


if __name__ == '__main__':
    sys.exit(main())
