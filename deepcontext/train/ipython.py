"""The original workflow as typed: ``execfile('train.py')`` in IPython.

Python 3 removed ``execfile``.  This module is an IPython extension that
puts it back into the interactive namespace, with Python 2's meaning: run
the file in the caller's namespace, so ``solver`` and ``trainer`` stay there
after a pause and a second ``execfile('train.py')`` continues.

``python -m deepcontext.train.ipython --install`` (run by ``make venv``)
writes ``<venv>/etc/ipython/ipython_config.py``, which IPython reads at
every start from that venv, whatever the profile, and which loads this
extension.  It appends to the profile's extensions instead of replacing
them.
"""
import argparse
import os
import sys

CONFIG = '''\
# Written by `python -m deepcontext.train.ipython --install` (make venv):
# execfile() in the namespace, for the original `execfile('train.py')`.
c.InteractiveShellApp.extensions.append('deepcontext.train.ipython')
'''


def execfile(filename, globals=None, locals=None):
    """Run a Python file in the caller's namespace (Python 2's execfile).

    ``__file__`` names the file while it runs, as under ``%run``, so
    train.py names its control files and output folder after it.
    """
    if globals is None:
        caller = sys._getframe(1)
        globals = caller.f_globals
        if locals is None:
            locals = caller.f_locals
    with open(filename, 'rb') as f:
        code = compile(f.read(), filename, 'exec')
    missing = object()
    saved = globals.get('__file__', missing)
    globals['__file__'] = filename
    try:
        exec(code, globals, globals if locals is None else locals)
    finally:
        if saved is missing:
            globals.pop('__file__', None)
        else:
            globals['__file__'] = saved


def load_ipython_extension(ipython):
    ipython.push({'execfile': execfile})


def config_path(prefix=sys.prefix):
    return os.path.join(prefix, 'etc', 'ipython', 'ipython_config.py')


def install(prefix=sys.prefix):
    """Write the venv-wide IPython config that loads this extension."""
    path = config_path(prefix)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w') as f:
        f.write(CONFIG)
    return path


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--install', action='store_true',
                   help="write this Python's etc/ipython/ipython_config.py")
    if p.parse_args().install:
        print('wrote %s' % install())


if __name__ == '__main__':
    main()
