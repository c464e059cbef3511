"""Soak test: train for N minutes while injecting faults; report the losses.

Not run in CI.  Repeatedly starts ``train.py`` on the embedded photos (small
batches, frequent snapshots), and at random moments injects one of:

* ``kill9``       SIGKILL of the trainer (at any moment, snapshots included)
* ``sigterm``     SIGTERM of the trainer (must quit cleanly)
* ``worker``      SIGKILL of one loader worker (must be restarted)

After every fault it checks that no process of the run is left, then
restarts (resume = yes).  At the end it prints what it injected and what was
lost: the iterations trained after the last complete snapshot before each
kill (allowed), and anything beyond that (must be none: a resume from an
older snapshot than the newest complete one, or a corrupt snapshot loaded).

    .venv/bin/python bench/soak.py --minutes 10 [--out /tmp/soak]
"""
import argparse
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time

from deepcontext.train import snapshots

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = '''from deepcontext.data import photos as _d
images = _d.test_photos()
out_dir = %(out)r
batch_size = 48
loader_workers = 2
queue_size = 1
snapshot_every = 5
stats_every = 5
resume = 'yes'
'''


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


def last_iteration(log_path):
    its = re.findall(r'Iteration (\d+), norm_loss', open(log_path).read())
    return int(its[-1]) if its else -1


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--minutes', type=float, default=10)
    p.add_argument('--out', default=None)
    p.add_argument('--seed', type=int, default=0)
    args = p.parse_args()
    rng = random.Random(args.seed)
    work = args.out or tempfile.mkdtemp(prefix='deepcontext-soak-')
    os.makedirs(os.path.join(work, 'out'), exist_ok=True)
    cfg = os.path.join(work, 'soak_config.py')
    with open(cfg, 'w') as f:
        f.write(CONFIG % {'out': os.path.join(work, 'out')})
    outdir = os.path.join(work, 'out', 'train_out')
    log_path = os.path.join(outdir, 'out.log')
    env = dict(os.environ, GLOG_minloglevel='1')
    injected, lost, problems = [], 0, []
    start = time.time()
    end = start + 60 * args.minutes
    while time.time() < end:
        before = snapshots.complete(outdir)
        proc = subprocess.Popen([sys.executable, os.path.join(ROOT,
                                                              'train.py'),
                                 '--config', cfg], cwd=work, env=env,
                                stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        if before and os.path.exists(log_path):
            deadline = time.time() + 300
            want = 'restoring %s' % os.path.join(
                outdir, 'model_iter_%d.solverstate' % before[-1])
            while want not in open(log_path).read():
                if time.time() > deadline or proc.poll() is not None:
                    problems.append('did not resume from model_iter_%d'
                                    % before[-1])
                    break
                time.sleep(0.5)
        time.sleep(rng.uniform(5, 40))
        fault = rng.choice(['kill9', 'kill9', 'sigterm', 'worker'])
        if proc.poll() is not None:
            problems.append('trainer exited by itself (%s)' % proc.returncode)
            continue
        if fault == 'worker':
            workers = [q for q in run_processes(cfg) if q != proc.pid]
            if workers:
                os.kill(rng.choice(workers), signal.SIGKILL)
            time.sleep(rng.uniform(5, 15))
            if proc.poll() is not None:
                problems.append('a worker kill stopped the trainer')
            fault = 'worker+sigterm'
            proc.send_signal(signal.SIGTERM)
        elif fault == 'sigterm':
            proc.send_signal(signal.SIGTERM)
        else:
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=300)
        reached = last_iteration(log_path) + 1
        done = snapshots.complete(outdir)
        lost += reached - (done[-1] if done else 0)
        injected.append('%s at iteration %d (last complete snapshot %s)'
                        % (fault, reached, done[-1] if done else 'none'))
        t0 = time.time()
        while run_processes(cfg) and time.time() - t0 < 30:
            time.sleep(0.2)
        if run_processes(cfg):
            problems.append('processes left after %s: %s'
                            % (fault, run_processes(cfg)))
        print(injected[-1], flush=True)
    print('\n%d faults injected in %.1f minutes' % (
        len(injected), (time.time() - start) / 60))
    print('iterations redone after the last complete snapshot: %d (allowed)'
          % lost)
    print('lost beyond the last snapshot: %s'
          % ('; '.join(problems) if problems else 'nothing'))
    return 1 if problems else 0


if __name__ == '__main__':
    sys.exit(main())
