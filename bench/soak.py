"""Soak test: train for N minutes while injecting faults; report the losses.

Not run in CI.  Repeatedly starts ``train.py`` on a folder of the embedded
photos (small batches, frequent snapshots, loader buffers in /dev/shm), and
at random moments injects one of:

* ``kill9``       SIGKILL of the trainer (at any moment, snapshots included)
* ``sigterm``     SIGTERM of the trainer (must quit cleanly, status 143)
* ``worker``      SIGKILL of one loader worker (must be restarted)
* ``fill``        another writer fills the disk of the output folder (a
                  tmpfs, as root): the run must end by itself within
                  seconds, with its reason on stderr and a documented status
* ``corrupt``     (between runs) same-size bytes changed in the newest
                  snapshot: the next start must reject it and resume from
                  the pair before

and all along:

* ``fifo``        a FIFO named ``fifo.jpg`` among the images: skipped with a
                  line, never blocking a worker;
* ``shm``         after every kill -9, the next start must remove the dead
                  run's buffer files from ``tmp_dir``.

After every fault it checks that no process of the run is left, then
restarts (resume = yes).  Old snapshots are pruned every second (the
newest two pairs kept) so the small disk holds the run.  At the end it
prints what it injected, how it ended, and what was lost: the iterations
trained after the last complete snapshot before each kill (allowed), and
anything beyond that (must be none: a resume from another pair than
expected, a run that ended without a reason, a process or buffer left
behind).

    .venv/bin/python bench/soak.py --minutes 10 [--out DIR] [--disk-mb 2600]
"""
import argparse
import collections
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from deepcontext.data import photos
from deepcontext.data.loader import child_pids
from deepcontext.train import snapshots

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = '''images = %(images)r
out_dir = %(out)r
tmp_dir = %(shm)r
batch_size = 48
loader_workers = 2
queue_size = 1
snapshot_every = 5
stats_every = 5
resume = 'yes'
'''
# How a run that ended by itself may end (README, exit status).
ENDS = {1: 'stopped', 4: 'disk full', -6: 'Caffe aborted'}


def run_processes(marker):
    pids = []
    for pid in os.listdir('/proc'):
        if pid.isdigit():
            try:
                with open('/proc/%s/cmdline' % pid, 'rb') as f:
                    if marker.encode() in f.read():
                        with open('/proc/%s/stat' % pid) as st:
                            if ') Z' not in st.read():
                                pids.append(int(pid))
            except OSError:
                continue
    return pids


def loader_workers(trainer, marker):
    """The workers: children of the loaders' nursery (the trainer's child
    with the same command line), not the nursery itself."""
    return [w for n in child_pids(trainer) if n in run_processes(marker)
            for w in child_pids(n)]


def read(path):
    try:
        with open(path, errors='replace') as f:
            return f.read()
    except OSError:
        return ''


def last_iteration(log_path):
    its = re.findall(r'Iteration (\d+), norm_loss', read(log_path))
    return int(its[-1]) if its else -1


def wait_for(predicate, proc, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        if proc.poll() is not None:
            return predicate()
        time.sleep(0.2)
    return False


def corrupt(outdir, rng):
    """Change bytes of the newest complete pair, keeping its size."""
    done = snapshots.complete(outdir)
    if not done:
        return None
    model, state, _ = snapshots.paths(outdir, done[-1])
    path, data = rng.choice([(model, os.urandom(4096)),
                             (state, b'\xff' * 64)])
    with open(path, 'r+b') as f:
        f.write(data)
    return done[-1]


def prune(outdir, keep=2):
    """Delete all but the newest ``keep`` complete pairs, and rejected/."""
    for it in snapshots.complete(outdir)[:-keep]:
        snapshots.remove(outdir, it)
    shutil.rmtree(os.path.join(outdir, snapshots.REJECTED),
                  ignore_errors=True)


def mount_tmpfs(path, mb):
    os.makedirs(path, exist_ok=True)
    r = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=%dm' % mb,
                        'tmpfs', path], capture_output=True, text=True)
    return r.returncode == 0


def fill(folder):
    """Another writer takes every free byte; returns its file."""
    path = os.path.join(folder, 'filler')
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b'\0' * (1 << 20))
    except OSError:
        pass
    try:
        while True:
            os.write(fd, b'\0')
    except OSError:
        pass
    os.close(fd)
    return path


def set_up(work, disk_mb):
    images = os.path.join(work, 'images')
    os.makedirs(images, exist_ok=True)
    for path in photos.test_photos():
        shutil.copy(path, images)
    fifo = os.path.join(images, 'fifo.jpg')
    if not os.path.exists(fifo):
        os.mkfifo(fifo)
    out = os.path.join(work, 'disk')
    small = disk_mb > 0 and mount_tmpfs(out, disk_mb)
    os.makedirs(out, exist_ok=True)
    shm = tempfile.mkdtemp(prefix='soak-', dir='/dev/shm')
    cfg = os.path.join(work, 'soak_config.py')
    with open(cfg, 'w') as f:
        f.write(CONFIG % {'images': images, 'out': out, 'shm': shm})
    return cfg, out, shm, small


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--minutes', type=float, default=10)
    p.add_argument('--out', default=None)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--disk-mb', type=int, default=2600,
                   help='size of the tmpfs for the output folder (root '
                        'only; 0: no small disk, no fill faults)')
    args = p.parse_args()
    rng = random.Random(args.seed)
    work = args.out or tempfile.mkdtemp(prefix='deepcontext-soak-')
    cfg, disk, shm, small = set_up(work, args.disk_mb)
    outdir = os.path.join(disk, 'train_out')
    log_path = os.path.join(outdir, 'out.log')
    err_path = os.path.join(work, 'stderr.txt')
    env = dict(os.environ, GLOG_minloglevel='1')
    faults = ['kill9', 'kill9', 'sigterm', 'worker', 'corrupt'] + \
        (['fill'] if small else [])
    counts, ends = collections.Counter(), collections.Counter()
    injected, problems, lost, fill_seconds = [], [], 0, []
    expect, rejected = None, None
    start = time.time()
    end = start + 60 * args.minutes
    try:
        while time.time() < end:
            done = snapshots.complete(outdir)
            if expect is None and done:
                expect = done[-1]
            with open(err_path, 'w') as err:
                proc = subprocess.Popen(
                    [sys.executable, os.path.join(ROOT, 'train.py'),
                     '--config', cfg], cwd=work, env=env,
                    stdout=subprocess.DEVNULL, stderr=err)
            log_at = len(read(log_path))
            started = wait_for(lambda: 'training from iteration' in
                               read(log_path)[log_at:], proc, 300)
            new = read(log_path)[log_at:]
            want = ('restoring %s' % snapshots.paths(outdir, expect)[1]
                    if expect else 'training from iteration 0')
            if started and want not in new:
                problems.append('expected "%s" after the start' % want)
            if rejected and 'model_iter_%d rejected' % rejected not in new:
                problems.append('corrupt model_iter_%d not rejected'
                                % rejected)
            stale = os.listdir(shm)
            if started and len(stale) > 1:
                problems.append('buffers of dead runs in %s: %s'
                                % (shm, stale))
            expect = rejected = None
            wake = time.time() + rng.uniform(5, 40)
            while time.time() < wake:   # old pairs go: the disk is small
                prune(outdir)
                time.sleep(1)
            fault = rng.choice(faults)
            if proc.poll() is not None:
                problems.append('trainer exited by itself (%s): %s' % (
                    proc.returncode, read(err_path).strip()[-300:]))
                continue
            counts[fault] += 1
            if fault in ('worker', 'corrupt'):
                if fault == 'worker':
                    workers = loader_workers(proc.pid, cfg)
                    if workers:
                        os.kill(rng.choice(workers), signal.SIGKILL)
                    time.sleep(rng.uniform(5, 15))
                    if proc.poll() is not None:
                        problems.append('a worker kill stopped the trainer')
                proc.send_signal(signal.SIGTERM)
            elif fault == 'sigterm':
                proc.send_signal(signal.SIGTERM)
            elif fault == 'fill':
                t0 = time.time()
                filler = fill(disk)
                try:
                    proc.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    problems.append('the run went on with a full disk')
                    proc.kill()
                fill_seconds.append(time.time() - t0)
                os.remove(filler)
                why = read(err_path).strip().splitlines()
                if proc.returncode not in ENDS or not why:
                    problems.append('full disk: exit %s, stderr %r' % (
                        proc.returncode, why[-1:]))
                else:
                    ends[ENDS[proc.returncode]] += 1
            else:
                proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=300)
            if fault in ('sigterm', 'worker', 'corrupt') and \
                    proc.returncode != 128 + signal.SIGTERM:
                problems.append('%s: exit %s' % (fault, proc.returncode))
            reached = last_iteration(log_path) + 1
            done = snapshots.complete(outdir)
            lost += max(0, reached - (done[-1] if done else 0))
            if fault == 'corrupt':
                rejected = corrupt(outdir, rng)
                if rejected is not None:
                    done = snapshots.complete(outdir)[:-1]
            expect = done[-1] if done else 0
            injected.append('%s at iteration %d (resume from %s)'
                            % (fault, reached, expect or 'scratch'))
            t0 = time.time()
            while run_processes(cfg) and time.time() - t0 < 30:
                time.sleep(0.2)
            if run_processes(cfg):
                problems.append('processes left after %s: %s'
                                % (fault, run_processes(cfg)))
            prune(outdir)
            print(injected[-1], flush=True)
        if 'fifo.jpg' not in read(log_path):
            problems.append('the FIFO among the images was not reported')
    finally:
        for pid in run_processes(cfg):
            os.kill(pid, signal.SIGKILL)
        if small:
            time.sleep(1)
            subprocess.run(['umount', '-l', disk])
        shutil.rmtree(shm, ignore_errors=True)
    print('\n%d faults injected in %.1f minutes: %s' % (
        len(injected), (time.time() - start) / 60,
        ', '.join('%s %d' % kv for kv in sorted(counts.items()))))
    if fill_seconds:
        print('full disk: the run ended by itself after %.1f-%.1f s (%s)'
              % (min(fill_seconds), max(fill_seconds),
                 ', '.join('%s %d' % kv for kv in sorted(ends.items()))))
    print('iterations redone after the last complete snapshot: %d (allowed)'
          % lost)
    print('lost beyond the last snapshot: %s'
          % ('; '.join(problems) if problems else 'nothing'))
    return 1 if problems else 0


if __name__ == '__main__':
    sys.exit(main())
