"""Batches onto the GPU while the previous step computes.

On the CPU path the trainer writes each batch into the ``data`` blob's host
memory and Caffe uploads it at the start of the forward pass: a 56 MB copy
on the main thread, then a synchronous 56 MB upload, both while the GPU
has nothing to do.  :class:`GpuFeed` instead copies the next batch straight
from the loader's shared-memory buffer (page-locked once with
cudaHostRegister) into a device staging buffer, on its own CUDA stream, while
the current step runs; before the next step a device-to-device copy (about
0.05 ms on an H100) moves it into the blob.  The numbers are the same: the
bytes the loader wrote are the bytes the net sees.

The CUDA runtime is reached through ctypes (the libcudart that libcaffe
loaded, so the same context), and the blob's device pointer through
``pycaffe.reshape_data_on_gpu``.  Small inputs (pair indices, labels) go
the usual way (pycaffe.set_pairs).
"""
import ctypes

import numpy as np

from deepcontext.data import sampling
from deepcontext.model import pycaffe

_H2D, _D2D = 1, 3                  # cudaMemcpyKind
_STREAM_NON_BLOCKING = 1           # cudaStreamNonBlocking
_EVENT_DISABLE_TIMING = 2          # cudaEventDisableTiming
_DEFAULT_STREAM = None             # the legacy default stream, Caffe's


class CudaError(RuntimeError):
    pass


def load_cudart():
    """The CUDA runtime library libcaffe uses, or None (CPU-only build)."""
    lib = pycaffe.cudart()
    if lib is None:
        return None
    lib.cudaMemcpyAsync.argtypes = [ctypes.c_void_p, ctypes.c_void_p,
                                    ctypes.c_size_t, ctypes.c_int,
                                    ctypes.c_void_p]
    lib.cudaHostRegister.argtypes = [ctypes.c_void_p, ctypes.c_size_t,
                                     ctypes.c_uint]
    lib.cudaHostUnregister.argtypes = [ctypes.c_void_p]
    lib.cudaMalloc.argtypes = [ctypes.POINTER(ctypes.c_void_p),
                               ctypes.c_size_t]
    lib.cudaFree.argtypes = [ctypes.c_void_p]
    for fn in ('cudaEventRecord', 'cudaStreamWaitEvent'):
        getattr(lib, fn).argtypes = [ctypes.c_void_p, ctypes.c_void_p] + (
            [ctypes.c_uint] if fn == 'cudaStreamWaitEvent' else [])
    for fn in ('cudaEventSynchronize', 'cudaEventDestroy',
               'cudaStreamDestroy', 'cudaStreamSynchronize'):
        getattr(lib, fn).argtypes = [ctypes.c_void_p]
    return lib


class GpuFeed:
    """Double-buffered input feed from one BatchLoader into one net.

    Use per step::

        batch = feed.next()   # batch k into the net, k+1 on its way
        solver.step(1)

    ``next`` returns the batch now in the net: its pairs and labels are
    valid; its pixel buffer is already back with the loader.
    """

    def __init__(self, net, loader, max_patches, cudart=None):
        self.rt = cudart or load_cudart()
        if self.rt is None:
            raise CudaError('libcudart not found')
        self.net = net
        self.loader = loader
        self.nbytes = max_patches * int(np.prod(sampling.PATCH_SHAPE)) * 4
        self.staging = ctypes.c_void_p()
        self._check(self.rt.cudaMalloc(ctypes.byref(self.staging),
                                       self.nbytes), 'cudaMalloc')
        self.stream = ctypes.c_void_p()
        self._check(self.rt.cudaStreamCreateWithFlags(
            ctypes.byref(self.stream), _STREAM_NON_BLOCKING), 'stream')
        self.copied = self._event()     # staging holds the next batch
        self.consumed = self._event()   # staging may be overwritten
        self.registered = set()         # host addresses page-locked
        self.pending = None             # the batch staged, not yet used

    def _check(self, rc, what):
        if rc != 0:
            raise CudaError('%s: %s' % (what, self.rt.cudaGetErrorString(rc)
                                        .decode()))

    def _event(self):
        ev = ctypes.c_void_p()
        self._check(self.rt.cudaEventCreateWithFlags(
            ctypes.byref(ev), _EVENT_DISABLE_TIMING), 'event')
        return ev

    def _pin(self, buf):
        """Page-lock a loader buffer (once): async copies need it."""
        addr = buf.__array_interface__['data'][0]
        if addr not in self.registered:
            self._check(self.rt.cudaHostRegister(addr, buf.nbytes, 0),
                        'cudaHostRegister')
            self.registered.add(addr)

    def _stage(self, timeout):
        """Take the next loader batch and start copying it to the GPU."""
        batch = self.loader.get(timeout)
        data = batch.data
        if data.nbytes > self.nbytes:
            raise ValueError('batch of %d patches exceeds the feed'
                             % data.shape[0])
        self._pin(self.loader.buffers[batch.worker][batch.slot])
        rt = self.rt
        self._check(rt.cudaStreamWaitEvent(self.stream, self.consumed, 0),
                    'wait')
        self._check(rt.cudaMemcpyAsync(self.staging,
                                       data.__array_interface__['data'][0],
                                       data.nbytes, _H2D, self.stream),
                    'cudaMemcpyAsync H2D')
        self._check(rt.cudaEventRecord(self.copied, self.stream), 'record')
        self.pending = batch

    def next(self, timeout=600.0):
        """Put the staged batch into the net and stage the one after it."""
        if self.pending is None:                 # first step
            self._stage(timeout)
        batch = self.pending
        rt = self.rt
        dst = pycaffe.reshape_data_on_gpu(self.net, batch.data.shape)
        self._check(rt.cudaStreamWaitEvent(_DEFAULT_STREAM, self.copied, 0),
                    'wait')
        self._check(rt.cudaMemcpyAsync(dst, self.staging, batch.data.nbytes,
                                       _D2D, _DEFAULT_STREAM),
                    'cudaMemcpyAsync D2D')
        self._check(rt.cudaEventRecord(self.consumed, _DEFAULT_STREAM),
                    'record')
        pycaffe.set_pairs(self.net, batch.pairs, batch.labels)
        # the upload from the loader's buffer is done: give it back
        self._check(rt.cudaEventSynchronize(self.copied), 'sync')
        self.loader.release(batch)
        self.pending = None
        self._stage(timeout)
        return batch

    def close(self):
        """Finish copies, return a staged batch, unpin, free.  Idempotent."""
        rt = self.rt
        if rt is None:
            return
        rt.cudaStreamSynchronize(self.stream)
        if self.pending is not None:
            batch, self.pending = self.pending, None
            try:
                self.loader.release(batch)
            except ValueError:   # the loader closed first: its queues are shut
                pass
        for addr in self.registered:
            rt.cudaHostUnregister(addr)
        self.registered = set()
        rt.cudaEventDestroy(self.copied)
        rt.cudaEventDestroy(self.consumed)
        rt.cudaStreamDestroy(self.stream)
        rt.cudaFree(self.staging)
        self.rt = None
