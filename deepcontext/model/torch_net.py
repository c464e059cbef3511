"""The context-prediction network in plain ``torch.nn``: no Caffe needed.

``tools/export_torch.py`` writes a trained snapshot as this module's state
dict (``model.pt``) and an ONNX file of the patch tower; this file is
copied beside them, so ``torch`` and numpy are all a user needs::

    from torch_net import ContextNet          # or deepcontext.model.torch_net
    net = ContextNet.load('model.pt')         # eval mode
    x = preprocess_reference(images_rgb_0_255, scale=net.input['input_scale'])
    maps = net.features(x, upto='relu5')      # {layer name: output}

Layer for layer ``deepcontext/model/nets.py``: conv1 (11x11, stride 4,
pad 5) .. conv5, pool5 (3x3x256 on a 96x96 patch), fc6, and the pair head
fc7 .. fc9 over two patches' relu6 outputs.  Where Caffe and PyTorch
differ, the module follows Caffe:

* pooling rounds the output size up (``ceil_mode=True``; Caffe drops a
  last window that would start in the padding, as PyTorch does);
* LRN is Caffe's ACROSS_CHANNELS, ``x / (1 + alpha / 5 * sum x^2) ^ 0.75``
  over 5 channels, which is ``nn.LocalResponseNorm(5, alpha, 0.75, 1)``
  (:class:`LRN`, the same numbers in an ONNX-friendly form);
* fc6 reads pool5 flattened channel-major (C, H, W), as Caffe's
  InnerProduct does;
* BatchNorm (kept on request) has no scale or shift, the statistics Caffe
  stored, each layer's eps; by default it is folded into the layer before.

State dict keys are the Caffe layer names: ``conv1.weight``, ...,
``fc6.bias``, and with BatchNorm kept ``bn3.running_mean`` ...

Inputs.  The net was trained on RGB 96x96 patches, per patch mean removed
and scaled to RMS 50 (with one colour channel kept and the others noise:
colour dropping).  Two deterministic evaluation inputs are given here:
:func:`preprocess_reference`, the references' BGR 0-255 minus the ImageNet
mean put back in RGB order and multiplied by the input scale measured at
export (``net.input['input_scale']``), and :func:`preprocess_deepcontext`,
the toolkit's grey input (``deepcontext.eval.features.prep_eval``).
"""
import collections

import torch
from torch import nn

PATCH_SIDE = 96
NUM_LABELS = 8
TARGET_RMS = 50.0
IMAGENET_BGR_MEAN = (104.0, 117.0, 123.0)
# (name, in, out, kernel, stride, pad, BatchNorm in the training net)
CONVS = (('conv1', 3, 96, 11, 4, 5, False), ('conv2', 96, 256, 5, 1, 2, False),
         ('conv3', 256, 384, 3, 1, 1, True), ('conv4', 384, 384, 3, 1, 1, True),
         ('conv5', 384, 256, 3, 1, 1, True))
# The pair head: (name, inputs, outputs, BatchNorm, ReLU)
HEAD = (('fc7', 2 * 4096, 4096, True, True), ('fc8', 4096, 4096, False, True),
        ('fc9', 4096, NUM_LABELS, False, False))


def _pool():
    return nn.MaxPool2d(3, stride=2, ceil_mode=True)


class LRN(nn.LocalResponseNorm):
    """``nn.LocalResponseNorm`` (the same numbers: Caffe's ACROSS_CHANNELS
    with k = 1), written with unsqueeze instead of PyTorch's view on
    traced sizes, so an ONNX export keeps the channel count static (the
    BatchNorm after conv3 needs it)."""

    def forward(self, x):
        if self.size % 2 != 1:
            raise ValueError('LRN: odd local sizes only (Caffe\'s rule)')
        # The mean of x^2 over size channels, zeros beyond the edges.
        div = nn.functional.avg_pool3d(
            x.mul(x).unsqueeze(1), (self.size, 1, 1), stride=1,
            padding=(self.size // 2, 0, 0), count_include_pad=True)
        div = div.squeeze(1).mul(self.alpha).add(self.k).pow(self.beta)
        return x / div


def _lrn(alpha=1e-4):
    return LRN(5, alpha=alpha, beta=0.75, k=1.0)


class ContextNet(nn.Module):
    """The patch tower (conv1 .. relu6) and, optionally, the pair head.

    Parameters
    ----------
    batchnorm : bool
        Keep BatchNorm (``bn3``-``bn7``, eval-mode statistics, no affine)
        instead of having it folded into the weights.
    pair_head : bool
        Include fc7 .. fc9 (the 8-way relative-position classifier).
    eps : dict layer -> float, BatchNorm eps (Caffe's default 1e-5)
    input : dict, the input convention (written by the export)
    """

    def __init__(self, batchnorm=False, pair_head=True, eps=None, input=None):
        super().__init__()
        eps = eps or {}
        self.batchnorm, self.pair_head = batchnorm, pair_head
        self.input = dict(input or {})
        self.tower = collections.OrderedDict()
        for name, cin, cout, k, stride, pad, bn in CONVS:
            n = name[4:]
            self.tower[name] = nn.Conv2d(cin, cout, k, stride, pad)
            if bn and batchnorm:
                self.tower['bn' + n] = nn.BatchNorm2d(
                    cout, eps=eps.get('bn' + n, 1e-5), affine=False)
            self.tower['relu' + n] = nn.ReLU()
            if n in '12':
                self.tower['pool' + n] = _pool()
                self.tower['norm' + n] = _lrn()
        self.tower['pool5'] = _pool()
        self.tower['fc6'] = nn.Linear(256 * 3 * 3, 4096)
        if batchnorm:
            self.tower['bn6'] = nn.BatchNorm1d(4096, eps=eps.get('bn6', 1e-5),
                                               affine=False)
        self.tower['relu6'] = nn.ReLU()
        self.head = collections.OrderedDict()
        if pair_head:
            for name, cin, cout, bn, relu in HEAD:
                n = name[2:]
                self.head[name] = nn.Linear(cin, cout)
                if bn and batchnorm:
                    self.head['bn' + n] = nn.BatchNorm1d(
                        cout, eps=eps.get('bn' + n, 1e-5), affine=False)
                if relu:
                    self.head['relu' + n] = nn.ReLU()
        # Registered under their Caffe names: state dict keys conv1.weight...
        for name, module in list(self.tower.items()) + list(self.head.items()):
            self.add_module(name, module)

    def layer_names(self):
        """Every layer's name, in order (the Caffe layer names)."""
        return list(self.tower) + list(self.head)

    def features(self, x, upto='relu5'):
        """Outputs of every tower layer up to ``upto`` (inclusive).

        ``x``: (N, 3, H, W) inputs; any size for the convolutional layers,
        96x96 from fc6 on (fc6 reads a 3x3 pool5).  Returns an ordered dict
        layer name -> output; ``'conv5'`` is conv5 before BatchNorm and
        ReLU, ``'relu5'`` after them, as Caffe's tops right after each layer.
        """
        if upto not in self.tower:
            raise ValueError('no tower layer %r; the tower has %s'
                             % (upto, ', '.join(self.tower)))
        out = collections.OrderedDict()
        for name, module in self.tower.items():
            if name == 'fc6':
                x = torch.flatten(x, 1)   # channel-major, as InnerProduct
            x = module(x)
            out[name] = x
            if name == upto:
                break
        return out

    def pairs(self, relu6, pairs, upto='fc9'):
        """Pair-head outputs for (P, 2) index pairs into ``relu6`` rows."""
        if not self.pair_head:
            raise ValueError('this net has no pair head')
        x = torch.cat([relu6[pairs[:, 0]], relu6[pairs[:, 1]]], 1)
        out = collections.OrderedDict()
        for name, module in self.head.items():
            x = module(x)
            out[name] = x
            if name == upto:
                break
        return out

    def forward(self, x, pairs=None):
        """relu6 of each patch, or with ``pairs`` the fc9 scores."""
        relu6 = self.features(x, 'relu6')['relu6']
        if pairs is None:
            return relu6
        return self.pairs(relu6, pairs)['fc9']

    @classmethod
    def load(cls, path, map_location='cpu'):
        """A model written by tools/export_torch.py, in eval mode."""
        saved = torch.load(path, map_location=map_location,
                           weights_only=True)
        net = cls(saved['batchnorm'], saved['pair_head'], saved['eps'],
                  saved['input'])
        net.load_state_dict(saved['state_dict'])
        return net.eval()

    def save(self, path):
        torch.save(dict(state_dict=self.state_dict(), batchnorm=self.batchnorm,
                        pair_head=self.pair_head, input=self.input,
                        eps={name: m.eps for name, m in self.named_children()
                             if isinstance(m, nn.modules.batchnorm._BatchNorm)}),
                   path)


def preprocess_reference(images, scale=1.0, mean=IMAGENET_BGR_MEAN):
    """(N, H, W, 3) RGB 0-255 -> (N, 3, H, W): BGR minus ``mean``, times
    ``scale``, back in RGB order (the order conv1 was trained on).

    What ``--preprocess reference`` feeds our nets (docs/evaluation.md).
    """
    x = torch.as_tensor(images, dtype=torch.float64)
    rgb_mean = torch.tensor(mean[::-1], dtype=torch.float64)
    return ((x - rgb_mean) * scale).permute(0, 3, 1, 2).float().contiguous()


def preprocess_deepcontext(images):
    """(N, H, W, 3) RGB 0-255 -> (N, 3, H, W): the toolkit's grey input.

    Per image: the mean of the three channels, its mean removed, scaled to
    RMS 50 * sqrt(3) (the RMS of the one channel a training patch keeps),
    divided by 3 and put in every channel, so conv1 responds with the mean
    of its responses to the three single-channel training inputs.
    """
    grey = torch.as_tensor(images, dtype=torch.float64).mean(3)
    grey = grey - grey.mean((1, 2), keepdim=True)
    rms = grey.square().mean((1, 2), keepdim=True).sqrt()
    grey = torch.where(rms > 0, grey * (TARGET_RMS * 3 ** 0.5)
                       / rms.clamp_min(1e-30), grey)
    return (grey / 3).float().unsqueeze(1).expand(-1, 3, -1, -1).contiguous()
