"""Snapshots that are complete or absent, never half-written.

Caffe writes a snapshot as two files, model_iter_N.caffemodel and
model_iter_N.solverstate, in place; a process killed while writing them
leaves a truncated pair that may even parse.  The trainer therefore
checks the free space before the step that snapshots, and after Caffe has
written the pair, flushes both files to disk and only then publishes a
marker model_iter_N.complete (JSON with both sizes), itself written to a
temporary name and renamed, which is atomic.  A pair counts only with a marker whose sizes
match.  Caffe's file names and formats are unchanged, so other tools read
the snapshots as before.

To resume from a pair written by another tool (e.g. the 2015 code), mark it
after checking it yourself::

    python -m deepcontext.train.snapshots mark OUTDIR N
"""
import glob
import json
import os
import re
import shutil
import sys

_NAME = re.compile(r'model_iter_(\d+)\.(caffemodel|solverstate|complete)$')


class SnapshotError(RuntimeError):
    """A snapshot could not be written; the previous ones are intact."""


def paths(outdir, iteration):
    base = os.path.join(outdir, 'model_iter_%d' % iteration)
    return base + '.caffemodel', base + '.solverstate', base + '.complete'


def _fsync(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def mark_complete(outdir, iteration):
    """Flush a written pair to disk and publish its completion marker."""
    model, state, marker = paths(outdir, iteration)
    for path in (model, state):
        _fsync(path)
    tmp = marker + '.tmp'
    with open(tmp, 'w') as f:
        json.dump({'caffemodel': os.path.getsize(model),
                   'solverstate': os.path.getsize(state)}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, marker)
    _fsync(outdir)   # the rename itself reaches the disk


def is_complete(outdir, iteration):
    model, state, marker = paths(outdir, iteration)
    try:
        with open(marker) as f:
            sizes = json.load(f)
        return (os.path.getsize(model) == sizes['caffemodel'] and
                os.path.getsize(state) == sizes['solverstate'])
    except (OSError, ValueError, KeyError, TypeError):
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
    if len(argv) != 3 or argv[0] != 'mark':
        print('usage: python -m deepcontext.train.snapshots mark OUTDIR N',
              file=sys.stderr)
        return 2
    outdir, it = argv[1], int(argv[2])
    model, state, _ = paths(outdir, it)
    for path in (model, state):
        if not os.path.isfile(path):
            print('%s not found' % path, file=sys.stderr)
            return 1
    mark_complete(outdir, it)
    print('marked model_iter_%d complete' % it)
    return 0


if __name__ == '__main__':
    sys.exit(main())
