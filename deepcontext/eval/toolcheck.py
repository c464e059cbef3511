"""Checks of the tools' inputs and outputs: one line and a non-zero exit.

Caffe ends the process with a C++ stack trace (glog FATAL) on a missing or
unparsable file, and numpy writes NaN without a word, so every tool checks
what it reads before Caffe sees it and what it writes before it is on
disk.  A failed check raises :class:`ToolError`; :func:`run` turns it into
one line on stderr and exit status 1.
"""
import math
import os
import sys

import numpy as np
from google.protobuf import text_format

from deepcontext.data import imageset, sources
from deepcontext.model import pycaffe


class ToolError(Exception):
    """A tool cannot do what it was asked; the message says why."""


def run(main, tool):
    """Call ``main()``; a ToolError (or pycaffe.NoGPU) ends the process:
    'tool: message', status 1."""
    try:
        main()
    except (ToolError, pycaffe.NoGPU) as e:
        sys.exit('%s: %s' % (tool, e))


def input_file(path, what):
    """``path`` if it is a readable file, else ToolError naming ``what``."""
    if path is None:
        return None
    if not os.path.isfile(path):
        raise ToolError('%s %s: no such file' % (what, path))
    if not os.access(path, os.R_OK):
        raise ToolError('%s %s: not readable' % (what, path))
    return path


def net_definition(path, what='network definition'):
    """The NetParameter of a prototxt (ToolError if missing or unparsable)."""
    input_file(path, what)
    try:
        return pycaffe.read_netparam(path)
    except (text_format.ParseError, UnicodeDecodeError) as e:
        raise ToolError('%s %s is not a network prototxt: %s'
                        % (what, path, str(e).splitlines()[0]))


def net_files(args):
    """Check ``args.weights`` and ``args.definition`` (toolargs' options)."""
    input_file(args.weights, 'weights')
    if args.definition is not None:
        net_definition(args.definition)


def image_files(specs):
    """The ImageSet of folders, list files or files (what ``images``
    takes, except an LMDB: these tools read image files)."""
    for spec in specs:
        if imageset.lmdb_path(spec) is not None:
            raise ToolError('%s is an LMDB; this tool reads image files (a '
                            'folder, a list file or images)' % spec)
    try:
        return sources.open_image_source(list(specs))
    except (OSError, ValueError) as e:
        raise ToolError('images: %s' % e)


def known_layers(net, names, what='layer'):
    """ToolError unless every name is a parameter layer of ``net``."""
    unknown = [n for n in names if n not in net.params]
    if unknown:
        raise ToolError('unknown %s %s; the net has %s'
                        % (what, ', '.join(unknown), ', '.join(net.params)))


def finite_net(net, what):
    """ToolError if a weight of ``net`` is NaN or infinite (never saved)."""
    bad = [name for name, blobs in net.params.items()
           if not all(np.isfinite(b.data).all() for b in blobs)]
    if bad:
        raise ToolError('%s has NaN or infinite weights in %s: refusing to '
                        'write it' % (what, ', '.join(bad)))


def finite_numbers(value, what):
    """ToolError if a number anywhere in ``value`` (dicts, lists) is NaN or
    infinite."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            stack.extend(v.values())
        elif isinstance(v, (list, tuple)):
            stack.extend(v)
        elif isinstance(v, float) and not math.isfinite(v):
            raise ToolError('%s holds NaN or infinite results: refusing to '
                            'write it' % what)
