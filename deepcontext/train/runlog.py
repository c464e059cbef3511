"""Run log: glog-style lines, and a tee of stdout/stderr into out.log.

The tee works on file descriptors 1 and 2, as the original's did, so Caffe's
own C++ log lines (glog writes to stderr) reach out.log with ours.  It is a
thread in this process, not a ``tee`` child, so nothing outlives the run.
Lines keep glog's prefix so Caffe's tools/extra/parse_log.py-style parsers
read them.
"""
import datetime
import os
import sys
import threading


def glog_line(msg, level='I', where='train.py:0'):
    now = datetime.datetime.now()
    return '%s%s %s %d %s] %s' % (level, now.strftime('%m%d'),
                                  now.strftime('%H:%M:%S.%f'), os.getpid(),
                                  where, msg)


def log(msg, level='I'):
    print(glog_line(msg, level), flush=True)


class Tee:
    """Copy everything written to fds 1 and 2 into a log file (appending)."""

    def __init__(self, path):
        self.path = path
        self._saved = None
        self._thread = None

    def start(self):
        sys.stdout.flush()
        sys.stderr.flush()
        self._saved = (os.dup(1), os.dup(2))
        rfd, wfd = os.pipe()
        os.dup2(wfd, 1)
        os.dup2(wfd, 2)
        os.close(wfd)
        logf = open(self.path, 'ab')
        term = self._saved[0]

        def pump():
            with os.fdopen(rfd, 'rb', buffering=0) as r, logf:
                while True:
                    chunk = r.read(65536)
                    if not chunk:
                        return
                    logf.write(chunk)
                    logf.flush()
                    try:
                        os.write(term, chunk)
                    except OSError:   # the terminal went away; keep logging
                        pass

        self._thread = threading.Thread(target=pump, name='deepcontext-tee',
                                        daemon=True)
        self._thread.start()
        # Python-level streams may not be fds 1 and 2 (pytest, IDEs): point
        # them at the tee too while it runs.
        self._streams = (sys.stdout, sys.stderr)
        sys.stdout = open(1, 'w', buffering=1, closefd=False)
        sys.stderr = open(2, 'w', buffering=1, closefd=False)
        return self

    def stop(self):
        if self._saved is None:
            return
        sys.stdout.flush()
        sys.stderr.flush()
        sys.stdout, sys.stderr = self._streams
        out, err = self._saved
        os.dup2(out, 1)   # closes our last write ends of the pipe ...
        os.dup2(err, 2)
        self._thread.join(timeout=10)   # ... so the pump sees EOF
        os.close(out)
        os.close(err)
        self._saved = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
