"""Configuration: defaults here, overrides in the user's deepcontext_config.py.

Override, don't edit: copy ``deepcontext_config.py.example`` to
``deepcontext_config.py`` and set the keys you need; every key you do not
set keeps the default below.  Unknown keys and values of the wrong type are
rejected with a message naming them, before any work starts.

Every default is the number of the original train.py unless its comment
says otherwise.
"""
import json
import numbers
import os
import types

_REQUIRED = object()

# key: (default, accepted types, comment).  The comment is the documentation.
KEYS = {
    'out_dir': (_REQUIRED, (str,),
                'Output folder; a run writes into OUT_DIR/<exp_name>_out/.'),
    'images': (None, (str, list, tuple),
               'Image source: an ImageNet root (with train.txt and train/), '
               'a folder searched recursively, a list file, or a list of '
               "those; or, alone, a Caffe LMDB ('lmdb:/path', or a folder "
               'holding data.mdb).'),
    'imagenet_dir': (None, (str,),
                     "The original's key: an ImageNet root.  Use this or "
                     "'images', not both."),
    'jpeg_draft': (False, (bool,),
                   'Decode JPEGs at 1/2, 1/4 or 1/8 scale when still >= 2x '
                   'the resize target: faster, but the images are less sharp '
                   "than the original's full decodes (docs/tools.md, 'JPEG "
                   "draft mode')."),
    'tmp_dir': (None, (str,),
                "Folder (ideally a ramdisk such as /dev/shm) for the "
                "loaders' batch buffers; None uses anonymous shared memory "
                "that needs no files."),
    'gpu': (None, (int,),
            'GPU device id, or None to train on the CPU.'),
    'gpus': (None, (list,),
             'Several GPU device ids, e.g. [0, 1, 2, 3]: one process per GPU, '
             "gradients summed by Caffe's NCCL (needs a CUDA build with "
             'NCCL; batch and learning-rate semantics: docs/gpu.md).  None: '
             "the single device of 'gpu'."),
    'tf32': (False, (bool,),
             'On a GPU, let fp32 convolutions (cuDNN) and matrix products '
             '(cuBLAS) use TF32 tensor cores: about 2.2x faster steps on an '
             "H100 (docs/benchmarks.md), at ~1e-3 relative precision instead "
             "of fp32's.  Off by default, to keep the original's "
             'arithmetic.'),
    'cudnn': (True, (bool,),
              "On a GPU, use cuDNN for convolution, LRN and softmax (the "
              "convolution algorithms are timed once per input shape); "
              "False runs Caffe's own CUDA kernels everywhere (engine: "
              'CAFFE in the written network.prototxt).'),
    'cudnn_workspace_mb': (1024, (int,),
                           'Workspace cap of a cuDNN convolution, per '
                           'stream (Caffe allocates 3 per layer), in MB.  '
                           "1024 lets conv2 use FFT algorithms (faster "
                           "than with Caffe's 256: docs/gpu.md); lower it "
                           'on a small GPU.'),
    'debug_info': (False, (bool,),
                   "True: Caffe's per-layer data/diff magnitudes "
                   '([Forward]/[Backward] lines) in out.log every iteration. '
                   "Off, as the original was in effect: its net's flag is "
                   "overridden by the solver's, which it left false."),
    'exp_name': (None, (str,),
                 "Experiment name; None uses the training script's name "
                 "('train' for train.py), as the original did."),
    'batch_size': (512, (int,),
                   'A batch holds fewer patches than this.'),
    'loader_workers': (3, (int,),
                       'Loader processes; each reads all images in its own '
                       'order.'),
    'loader_shard': (False, (bool,),
                     'Workers split one shared order of the images (each '
                     'image once per pass over all workers) instead of each '
                     'walking all images in its own order (the original).'),
    'loader_restarts': (3, (int,),
                        'A loader worker that dies (killed, out of memory) '
                        'is restarted this many times, then the run stops.'),
    'queue_size': (5, (int,),
                   'Batches each loader may have ready (original Queue(5)).'),
    'min_source_side': (0, (int,),
                        'Skip images whose shorter side is below this many '
                        'pixels; 0 (off) trains on them upscaled, as the '
                        'original (each one under 247 px is reported once '
                        'per loader).'),
    'seed': (None, (int,),
             "Base random seed of the loaders (worker i uses seed + i); None "
             "derives it from the output folder's path with CRC-32."),
    'base_lr': (1e-5, (float,), 'SGD learning rate (fixed policy).'),
    'momentum': (0.0, (float,),
                 'SGD momentum.  0 is what the released code used; the paper '
                 'reports that high momentum (e.g. 0.9) helps.'),
    'weight_decay': (0.0, (float,), 'SGD weight decay.'),
    'snapshot_every': (2000, (int,), 'Snapshot interval in iterations.'),
    'stats_every': (100, (int,),
                    'Interval of the parameter/update-norm statistics and '
                    'the divergence checks.'),
    'max_iter': (None, (int,),
                 'Stop (as after train_quit) at this solver iteration; None '
                 'trains until quit.'),
    'resume': ('ask', (str,),
               "When the output folder has snapshots: 'ask' (y/N prompt, as "
               "the original; an error when not interactive), 'yes', or "
               "'no' (refuse to start)."),
    'projection': (False, (bool,),
                   "Use the paper's projection (remove the green-magenta "
                   "axis) instead of colour dropping."),
}
RESUME_CHOICES = ('ask', 'yes', 'no')


class ConfigError(ValueError):
    """A configuration problem, stated in words a user can act on."""


class Config:
    """Resolved configuration: attribute access, and where it came from."""

    def __init__(self, values, source=None):
        self.__dict__.update(values)
        self._source = source

    def as_dict(self):
        return {k: getattr(self, k) for k in KEYS}

    def to_json(self):
        return json.dumps(self.as_dict(), indent=2, sort_keys=True)

    def describe(self):
        lines = ['configuration (%s):' % (self._source or 'defaults')]
        for k in KEYS:
            lines.append('  %-15s = %r' % (k, getattr(self, k)))
        return '\n'.join(lines)


def _check_type(key, value):
    default, types, _ = KEYS[key]
    if value is None and default is not _REQUIRED:
        return value
    if float in types and isinstance(value, numbers.Real) and \
            not isinstance(value, bool):
        return float(value)
    if bool not in types and isinstance(value, bool):
        raise ConfigError('config key %r must be %s, got a bool'
                          % (key, ' or '.join(t.__name__ for t in types)))
    if not isinstance(value, types):
        raise ConfigError('config key %r must be %s, got %s (%r)'
                          % (key, ' or '.join(t.__name__ for t in types),
                             type(value).__name__, value))
    return value


def resolve(overrides, source=None):
    """Merge overrides into the defaults and validate; return a Config."""
    unknown = sorted(set(overrides) - set(KEYS))
    if unknown:
        raise ConfigError('unknown config key(s) %s in %s; known keys: %s'
                          % (', '.join(unknown), source or 'overrides',
                             ', '.join(KEYS)))
    values = {}
    for key, (default, _, _) in KEYS.items():
        if key in overrides:
            values[key] = _check_type(key, overrides[key])
        elif default is _REQUIRED:
            raise ConfigError('config key %r is missing in %s: %s'
                              % (key, source or 'overrides', KEYS[key][2]))
        else:
            values[key] = default
    cfg = Config(values, source)
    _check_values(cfg)
    return cfg


def _check_values(cfg):
    if cfg.images is not None and cfg.imagenet_dir is not None:
        raise ConfigError("set 'images' or 'imagenet_dir', not both")
    if cfg.images is None and cfg.imagenet_dir is None:
        raise ConfigError("no image source: set 'images' (or the original "
                          "'imagenet_dir')")
    if cfg.resume not in RESUME_CHOICES:
        raise ConfigError('config key resume must be one of %s, got %r'
                          % (', '.join(RESUME_CHOICES), cfg.resume))
    for key in ('batch_size', 'loader_workers', 'queue_size',
                'snapshot_every', 'stats_every', 'cudnn_workspace_mb'):
        if getattr(cfg, key) < 1:
            raise ConfigError('config key %s must be >= 1' % key)
    if cfg.batch_size > 512:
        raise ConfigError('batch_size %d: the original allows at most 512 '
                          'patches a batch' % cfg.batch_size)
    if cfg.gpu is not None and cfg.gpu < 0:
        raise ConfigError('gpu must be a device id >= 0 or None')
    if cfg.gpus is not None:
        if cfg.gpu is not None:
            raise ConfigError("set 'gpu' or 'gpus', not both")
        if not cfg.gpus or any(type(g) is not int or g < 0
                               for g in cfg.gpus):
            raise ConfigError('gpus must be a non-empty list of device ids '
                              '>= 0, got %r' % (cfg.gpus,))
        if len(set(cfg.gpus)) != len(cfg.gpus):
            raise ConfigError('gpus lists a device twice: %r' % (cfg.gpus,))


def image_source(cfg):
    """The image source the config names (for images.open_image_source)."""
    return cfg.images if cfg.images is not None else cfg.imagenet_dir


def load(path='deepcontext_config.py', **overrides):
    """Load a config file (a Python module of assignments), then overrides.

    Raises
    ------
    ConfigError
        The file is missing, does not run, or sets bad keys or values.
    """
    if not os.path.isfile(path):
        raise ConfigError('config file %s not found: copy '
                          'deepcontext_config.py.example to it and set '
                          'out_dir and the image source' % path)
    # Compiled from the text each time, not imported: the import system's
    # bytecode cache judges a .pyc fresh by the source's mtime in whole
    # seconds and its size, so a config rewritten within the same second
    # with a same-length edit (gpus = [0, 0] -> [0, 1]) ran the old values;
    # nor does this leave a __pycache__ beside the user's config.
    module = types.ModuleType('deepcontext_user_config')
    module.__file__ = path
    try:
        with open(path, 'rb') as f:
            code = compile(f.read(), path, 'exec', dont_inherit=True)
        exec(code, vars(module))
    except Exception as e:  # any error in user code: say where it is
        raise ConfigError('config file %s failed to run: %s: %s'
                          % (path, type(e).__name__, e)) from e
    values = {k: v for k, v in vars(module).items()
              if not k.startswith('_') and not callable(v) and
              not isinstance(v, type(os))}
    values.update(overrides)
    return resolve(values, source=os.path.abspath(path))
