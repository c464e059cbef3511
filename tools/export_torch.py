"""Export a snapshot to PyTorch and ONNX, checked layer by layer against Caffe.

    python tools/export_torch.py network.prototxt model_iter_N.caffemodel OUT \
        [--keep-batchnorm] [--no-onnx] [--images IMG ...] [--patches 32]

Writes OUT/model.pt (``ContextNet.load``: the state dict under the Caffe
layer names, the input convention), OUT/torch_net.py (the module, plain
torch.nn, importable without Caffe or deepcontext), OUT/model.onnx (the
patch tower conv1 .. relu6, opset 17, one named output per layer) and
OUT/export.json (the per-layer check, file sizes, time).  BatchNorm is
folded with our debatchnorm unless --keep-batchnorm (then BatchNorm2d /
BatchNorm1d in eval mode).  Real photos' patches (default: the embedded
test photos) go through Caffe and PyTorch: every layer conv1 .. fc9 must
agree to 1e-4 relative, and onnxruntime to PyTorch to 1e-5, or the tool
exits 1 with one line and writes nothing.

Needs torch and onnxruntime: `make bridge` (requirements-bridge.txt).
"""
import argparse
import importlib.util
import os
import sys

os.environ.setdefault('GLOG_minloglevel', '2')  # before caffe loads glog

MISSING = [m for m in ('torch', 'onnxruntime', 'onnx')
           if importlib.util.find_spec(m) is None]
if __name__ == '__main__' and MISSING:
    sys.exit('export_torch: %s not installed: make bridge (or .venv/bin/pip '
             'install -r requirements-bridge.txt)' % ', '.join(MISSING))

from deepcontext.data import photos  # noqa: E402
from deepcontext.eval import toolcheck  # noqa: E402
from deepcontext.transfer import torch_export  # noqa: E402


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('definition', help='network.prototxt (or network_no_bn)')
    p.add_argument('weights', help='its caffemodel')
    p.add_argument('out', help='folder for model.pt, torch_net.py, '
                               'model.onnx, export.json')
    p.add_argument('--keep-batchnorm', action='store_true',
                   help='BatchNorm as eval-mode BatchNorm2d/1d layers '
                        'instead of folded into the weights')
    p.add_argument('--no-onnx', action='store_true')
    p.add_argument('--images', nargs='+', default=None,
                   help='photos for the check (default: embedded photos)')
    p.add_argument('--patches', type=int, default=32,
                   help='patches in the check')
    p.add_argument('--input-scale', default='auto',
                   help='recorded for preprocess_reference: auto (50 / RMS '
                        'of BGR minus the ImageNet mean on the images) or '
                        'a number')
    return p.parse_args()


def main():
    args = parse_args()
    toolcheck.net_definition(args.definition, 'definition')
    toolcheck.input_file(args.weights, 'weights')
    if args.patches < 2:
        raise toolcheck.ToolError('--patches must be at least 2')
    images = (toolcheck.image_files(args.images).paths if args.images
              else photos.test_photos())
    scale = None
    if args.input_scale != 'auto':
        try:
            scale = float(args.input_scale)
        except ValueError:
            raise toolcheck.ToolError('--input-scale must be auto or a '
                                      'number, not %r' % args.input_scale)
    try:
        r = torch_export.export(args.definition, args.weights, args.out,
                                images, fold=not args.keep_batchnorm,
                                onnx=not args.no_onnx, patches=args.patches,
                                input_scale=scale)
    except (torch_export.ExportError,
            torch_export.fast_rcnn.ExportError) as e:
        raise toolcheck.ToolError(str(e))
    c = r['check']
    print('PyTorch matches Caffe on %d patches, %d pairs: largest relative '
          'difference %.2g (%s), BatchNorm %s'
          % (c['patches'], c['pairs'], c['worst_relative'], c['worst_layer'],
             r['input']['batchnorm']))
    for name, f in r['files'].items():
        print('wrote %s (%.1f MB)' % (f['path'], f['bytes'] / 1e6))
    print('wrote %s' % os.path.join(args.out, 'export.json'))
    print('export took %.1f s' % r['seconds'])


if __name__ == '__main__':
    toolcheck.run(main, 'export_torch')
