"""Solver definition: a caffe_pb2.SolverParameter, as the original's template.

The original rendered solver_mko.prototxt with base_lr=1e-5 and
weight_decay=0 and left momentum at its template default 0 (the template
writes no momentum line then).  The paper reports that high momentum helps;
``momentum`` is a config key, 0 by default to keep the released numbers.
"""
import os

from caffe.proto import caffe_pb2
from google.protobuf import text_format

BASE_LR = 1e-5
SNAPSHOT_EVERY = 2000
MAX_ITER = 1000000000   # "forever": training stops on quit, not on max_iter


def gen_solver(outdir, net_file='network.prototxt', base_lr=BASE_LR,
               momentum=0.0, weight_decay=0.0, snapshot=SNAPSHOT_EVERY,
               gpu=False, max_iter=MAX_ITER, debug_info=False):
    """The training solver as a SolverParameter.

    Parameters
    ----------
    outdir : str
        The experiment's output folder: holds the net, and the snapshots
        ``model_iter_N.caffemodel`` / ``.solverstate``.
    gpu : bool
        solver_mode GPU (as the original) or CPU.
    debug_info : bool
        Caffe's per-layer log every displayed step.  Solver::Step sets the
        net's flag from this one (``display && debug_info``), so the net's
        own ``debug_info`` (the original's, kept) has no effect in training.

    Returns
    -------
    caffe_pb2.SolverParameter
    """
    s = caffe_pb2.SolverParameter()
    s.net = os.path.join(outdir, net_file)
    s.type = 'SGD'
    s.base_lr = base_lr
    s.lr_policy = 'fixed'
    s.max_iter = max_iter
    if momentum > 0:
        s.momentum = momentum
    s.weight_decay = weight_decay
    s.snapshot = snapshot
    s.snapshot_prefix = os.path.join(outdir, 'model')
    s.solver_mode = (caffe_pb2.SolverParameter.GPU if gpu
                     else caffe_pb2.SolverParameter.CPU)
    s.display = 1
    if debug_info:          # unset when off: the original's solver file
        s.debug_info = True
    return s


def write_solver(path, solver_param):
    with open(path, 'w') as f:
        f.write(text_format.MessageToString(solver_param))
    return path
