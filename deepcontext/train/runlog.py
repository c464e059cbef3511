"""Run log: glog-style lines, and a tee of stdout/stderr into out.log.

The tee works on file descriptors 1 and 2, as the original's did, so Caffe's
own C++ log lines (glog writes to stderr) reach out.log with ours.  It is a
child process, as the original's ``tee -a`` was, so that when Caffe aborts
the process its FATAL line still reaches the terminal and out.log; the
child ends as soon as the trainer's pipes close, so nothing outlives the
run.  Our warnings and errors go to stderr, our other lines to stdout.

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
import errno
import os
import re
import select
import signal
import subprocess
import sys
import time

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


def log(msg, level='I', stderr=None):
    """One glog line: INFO to stdout, warnings and errors to stderr;
    ``stderr=True`` for INFO too (how a run ended)."""
    if stderr is None:
        stderr = level != 'I'
    print(glog_line(msg, level), flush=True,
          file=sys.stderr if stderr else sys.stdout)


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

    The copying is done by another process (``python -m
    deepcontext.train.runlog``, as the original ran ``tee -a``), so a
    process that Caffe aborts still has its last words, glog's FATAL line,
    copied to the terminal and into the log.  fd 1 and fd 2 keep separate
    pipes: the terminal's stdout and stderr stay apart, and the log gets
    whole lines in the order they came.  The copier ignores Ctrl-C and
    SIGTERM, ends when the last writer has closed its pipes, and is not a
    child of the trainer (it detaches, in its own session), so killing the
    trainer's process tree (its loaders) leaves the log intact.

    If the log cannot be written (a full disk), the child keeps copying to
    the terminal, says so on stderr, and :meth:`failure` tells the trainer.
    ``quiet``: the terminal leaves out Caffe's INFO lines (TerminalFilter).
    """

    def __init__(self, path, quiet=False):
        self.path = path
        self.quiet = quiet
        self._saved = None
        self._status = None
        self._failure = None

    def start(self):
        sys.stdout.flush()
        sys.stderr.flush()
        self._saved = (os.dup(1), os.dup(2))
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        self._status, status_w = os.pipe()
        self._failure = None
        self._said = ''
        self._ended = False
        cmd = [sys.executable, '-m', 'deepcontext.train.runlog', self.path,
               str(out_r), str(err_r), str(status_w)]
        root = os.path.dirname(os.path.dirname(os.path.dirname(
            os.path.abspath(__file__))))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [root] + [p for p in [os.environ.get('PYTHONPATH')] if p]))
        try:
            # its own session: the terminal's Ctrl-C and hang-up reach the
            # trainer, which decides; the copier drains to the end.  What
            # we start forks the copier and exits at once.
            subprocess.run(
                cmd + (['--quiet'] if self.quiet else []),
                stdin=subprocess.DEVNULL, stdout=self._saved[0],
                stderr=self._saved[1], pass_fds=(out_r, err_r, status_w),
                env=env, start_new_session=True, check=True)
        finally:
            for fd in (out_r, err_r, status_w):
                os.close(fd)
        os.dup2(out_w, 1)
        os.dup2(err_w, 2)
        os.close(out_w)
        os.close(err_w)
        os.set_blocking(self._status, False)
        # Python-level streams may not be fds 1 and 2 (pytest, IDEs): point
        # them at the tee too while it runs.
        self._streams = (sys.stdout, sys.stderr)
        sys.stdout = open(1, 'w', buffering=1, closefd=False)
        sys.stderr = open(2, 'w', buffering=1, closefd=False)
        return self

    def failure(self):
        """Why the log cannot be written, as (errno name, message), or None
        (the latest start's answer; also after :meth:`stop`)."""
        if self._failure is None and self._status is not None:
            said = self._read_status()
            if not said and self._ended and self._saved is not None:
                said = 'EPIPE the process copying into the log has ended'
            if said:
                name, _, message = said.strip().partition(' ')
                self._failure = (name, message)
        return self._failure

    def _read_status(self):
        """What the copier said since the last call ('' if nothing)."""
        try:
            said = os.read(self._status, 4096)
        except BlockingIOError:
            return ''
        if not said:
            self._ended = True
        self._said += said.decode()
        return self._said if self._failure is None else ''

    def stop(self):
        if self._saved is None:
            return
        sys.stdout.flush()
        sys.stderr.flush()
        sys.stdout, sys.stderr = self._streams
        out, err = self._saved
        os.dup2(out, 1)   # closes our last write ends of the pipes ...
        os.dup2(err, 2)
        # ... so the copier sees EOF, copies the rest and closes the status
        # pipe; if a child of ours still holds the pipes, it ends with them
        deadline = time.time() + 30
        while not self._ended and time.time() < deadline:
            select.select([self._status], [], [], deadline - time.time())
            self._read_status()
        self.failure()
        os.close(self._status)
        self._status = None
        os.close(out)
        os.close(err)
        self._saved = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


_FATAL = re.compile(rb'^F\d{4,8} [^]]*\] (.*)$')
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class _Copier:
    """The tee's child: pipes -> terminal (fds 1, 2) and the log file."""

    def __init__(self, path, status_fd, quiet):
        self.path = path
        self.status_fd = status_fd
        self.quiet = quiet
        self.error = None      # the first OSError writing the log
        self.lost = 0          # bytes not written to the log since then
        self.fatal = None      # glog's FATAL message, when Caffe aborted
        self.at_line_start = True
        try:
            self.logfd = os.open(path, os.O_WRONLY | os.O_APPEND |
                                 os.O_CREAT, 0o644)
        except OSError as e:
            self.logfd = None
            self._failed(e)

    def _failed(self, e):
        if self.error is None:
            self.error = e
            name = errno.errorcode.get(e.errno, 'EIO')
            try:
                os.write(self.status_fd, ('%s %s\n' % (name, e.strerror))
                         .encode())
            except OSError:
                pass
            self.terminal(2, (glog_line('cannot write %s: %s' % (
                self.path, e.strerror), 'E') + '\n').encode())

    def terminal(self, fd, data):
        try:
            while data:
                data = data[os.write(fd, data):]
        except OSError:   # the terminal went away; keep logging
            pass

    def log(self, data):
        if self.logfd is None:
            self.lost += len(data)
            return
        if self.lost:   # room again: say what is missing, then go on
            note = glog_line('%d bytes of this log were not written (%s)'
                             % (self.lost, self.error.strerror), 'W') + '\n'
            data = (b'' if self.at_line_start else b'\n') + note.encode() \
                + data
        try:
            while data:
                n = os.write(self.logfd, data)
                self.at_line_start = data[n - 1:n] == b'\n'
                data = data[n:]
            self.lost = 0
        except OSError as e:
            self._failed(e)
            self.lost += len(data)

    def run(self, streams):
        """Copy until every stream ends.  ``streams``: read fd -> terminal
        fd."""
        shown = {fd: TerminalFilter() if self.quiet else None
                 for fd in streams}
        pending = {fd: b'' for fd in streams}
        while streams:
            waiting = any(pending.values())
            ready, _, _ = select.select(list(streams), [], [],
                                        0.2 if waiting else None)
            if not ready:   # idle: unfinished lines go to the log as they are
                for fd in pending:
                    self.log(pending[fd])
                    pending[fd] = b''
            for fd in ready:
                chunk = os.read(fd, 65536)
                term = streams[fd]
                if not chunk:
                    if shown[fd] is not None:
                        self.terminal(term, shown[fd].flush())
                    self.log(pending.pop(fd))
                    del streams[fd]
                    os.close(fd)
                    continue
                self.terminal(term, chunk if shown[fd] is None
                              else shown[fd].feed(chunk))
                lines, sep, pending[fd] = (pending[fd] + chunk).rpartition(
                    b'\n')
                if sep:
                    self.log(lines + b'\n')
                    self._watch(lines)
        self.finish()

    def _watch(self, lines):
        for line in lines.split(b'\n'):
            m = _FATAL.match(line)
            if m and self.fatal is None:
                self.fatal = m.group(1).decode(errors='replace')

    def finish(self):
        if self.fatal is not None:
            line = glog_line('aborted by Caffe: %s (exit status 134, '
                             'SIGABRT)' % self.fatal, 'E') + '\n'
            self.terminal(2, line.encode())
            self.log(line.encode())
        if self.lost:
            self.terminal(2, (glog_line(
                '%s misses the last %d bytes of this run: %s' % (
                    self.path, self.lost, self.error.strerror), 'E') +
                '\n').encode())


def main(argv=None):
    """The tee's child process: runlog PATH OUT_FD ERR_FD STATUS_FD
    [--quiet]."""
    argv = sys.argv[1:] if argv is None else argv
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    path, out_fd, err_fd, status_fd = argv[0], int(argv[1]), int(argv[2]), \
        int(argv[3])
    if os.fork():   # detach: the trainer's process tree does not hold us
        os._exit(0)
    _Copier(path, status_fd, '--quiet' in argv[4:]).run({out_fd: 1,
                                                         err_fd: 2})
    return 0


if __name__ == '__main__':
    sys.exit(main())
