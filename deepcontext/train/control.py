"""Pause/quit control of a running training loop, as the original.

``touch <exp>_pause`` in the working folder: the loop returns after the
current step, with the solver live.  ``touch <exp>_quit``: the loop stops,
the loaders stop, and the run ends cleanly.  Ctrl-C (SIGINT) and SIGTERM ask
for the same clean quit after the current step; a second Ctrl-C raises
KeyboardInterrupt (cleanup still runs).  Python runs signal handlers only
between its own instructions, so neither takes effect inside
``solver.step``: both act when the step returns.
"""
import os
import signal

from deepcontext.train import runlog

PAUSE, QUIT = 'pause', 'quit'


class Control:
    """Watches the control files and turns signals into a quit request."""

    def __init__(self, exp_name, folder='.'):
        self.pause_file = os.path.join(folder, exp_name + '_pause')
        self.quit_file = os.path.join(folder, exp_name + '_quit')
        self.signal_received = None
        self._saved = {}

    def clear(self):
        """Remove stale control files (a fresh start, as the original)."""
        for path in (self.pause_file, self.quit_file):
            if os.path.isfile(path):
                os.remove(path)

    def poll(self):
        """PAUSE, QUIT or None.  A pause file is consumed, so running the
        script again continues (the original left it for the user to
        delete)."""
        if self.signal_received is not None or os.path.isfile(self.quit_file):
            return QUIT
        if os.path.isfile(self.pause_file):
            os.remove(self.pause_file)
            return PAUSE
        return None

    def _handler(self, signum, frame):
        if signum == signal.SIGINT and self.signal_received == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal_received = signum
        runlog.log('received %s: quitting cleanly after this step (Ctrl-C '
                   'again to skip the clean-up steps)'
                   % signal.Signals(signum).name, level='W')

    def install(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._saved[sig] = signal.signal(sig, self._handler)

    def uninstall(self):
        for sig, old in self._saved.items():
            signal.signal(sig, old)
        self._saved = {}
