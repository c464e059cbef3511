"""Run log: glog-style lines, and a tee of stdout/stderr into out.log.

The tee works on file descriptors 1 and 2, as the original's did, so Caffe's
own C++ log lines (glog writes to stderr) reach out.log with ours.  It is a
thread in this process, not a ``tee`` child, so nothing outlives the run.

Every line keeps glog's 2015 prefix (``I1129 23:14:42.123456 PID file:line]``,
no year), ours and Caffe's alike, so Caffe's own tools/extra/parse_log.py
reads out.log as it is: :func:`glog_2015_prefix` asks glog 0.6 for that form
and must run before Caffe (and so glog) is loaded.  Each run starts with
Caffe's "Solving" line, which parse_log.py takes as time zero and which
pycaffe's ``solver.step`` never prints.

``Tee(path, quiet=True)`` keeps the terminal to deepcontext's lines, warnings
and errors; out.log still receives everything, Caffe's INFO lines included
(glog's own GLOG_minloglevel would drop them from both).
"""
import datetime
import os
import re
import sys
import threading

WHERE = 'train.py:0'

# glog's prefix: level, month+day (or year+month+day), time, thread, file:line
_GLOG = re.compile(rb'^([IWEF])\d{4,8} \d\d:\d\d:\d\d\.\d+ +\d+ ([^ :\]]+):\d+\] ')
# what follows a multi-line Caffe message: protobuf text ("key: v", "x {", "}")
_CONTINUATION = re.compile(rb'^\s*([\w.]+:( |$)|[\w.]+ \{|\})')
_GLOG_NOTICE = b'WARNING: Logging before InitGoogleLogging()'


def glog_2015_prefix():
    """Ask glog (0.6 writes the year) for the 2015 prefix parse_log.py reads.

    Effective only before Caffe's library is loaded (glog reads its flags
    from the environment once); an explicit setting of the user's wins.
    """
    os.environ.setdefault('GLOG_log_year_in_prefix', 'false')


def glog_line(msg, level='I', where=WHERE):
    now = datetime.datetime.now()
    return '%s%s %s %d %s] %s' % (level, now.strftime('%m%d'),
                                  now.strftime('%H:%M:%S.%f'), os.getpid(),
                                  where, msg)


def log(msg, level='I'):
    print(glog_line(msg, level), flush=True)


def solving(net_name, lr_policy):
    """The lines Caffe's Solver::Solve starts with (solver.cpp), which
    parse_log.py and extract_seconds.py take as the start of a run."""
    log('Solving %s' % net_name)
    log('Learning Rate Policy: %s' % lr_policy)


class TerminalFilter:
    """Which lines of the log go to the terminal in quiet mode.

    Hidden: Caffe's INFO lines (a glog prefix naming a file other than
    ours), the protobuf text that continues them, and glog's notice about
    logging before InitGoogleLogging.  Everything else is shown: our lines,
    Caffe's warnings and errors, Python's messages and tracebacks.
    """

    def __init__(self):
        self._partial = b''
        self._hiding = False

    def _shown(self, line):
        m = _GLOG.match(line)
        if m:
            self._hiding = (m.group(1) == b'I' and
                            m.group(2) != WHERE.split(':')[0].encode())
        elif line.startswith(_GLOG_NOTICE):
            self._hiding = True
        elif not (self._hiding and _CONTINUATION.match(line)):
            self._hiding = False
        return not self._hiding

    def feed(self, chunk):
        """The part of ``chunk`` to show; an unfinished line waits."""
        lines = (self._partial + chunk).split(b'\n')
        self._partial = lines.pop()
        return b''.join(l + b'\n' for l in lines if self._shown(l))

    def flush(self):
        rest, self._partial = self._partial, b''
        return rest if rest and self._shown(rest) else b''


class Tee:
    """Copy everything written to fds 1 and 2 into a log file (appending).

    ``quiet``: the terminal leaves out Caffe's INFO lines (TerminalFilter).
    """

    def __init__(self, path, quiet=False):
        self.path = path
        self.quiet = quiet
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
        shown = TerminalFilter() if self.quiet else None

        def to_terminal(data):
            try:
                if data:
                    os.write(term, data)
            except OSError:   # the terminal went away; keep logging
                pass

        def pump():
            with os.fdopen(rfd, 'rb', buffering=0) as r, logf:
                while True:
                    chunk = r.read(65536)
                    if not chunk:
                        if shown is not None:
                            to_terminal(shown.flush())
                        return
                    logf.write(chunk)
                    logf.flush()
                    to_terminal(chunk if shown is None else shown.feed(chunk))

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
