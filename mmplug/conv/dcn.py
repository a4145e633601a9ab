"""Modulated deformable conv (DCNv2) whose modulation starts at 1.

Zhu, Hu, Lin, Dai. "Deformable ConvNets v2: More Deformable, Better Results",
CVPR 2019. https://arxiv.org/abs/1811.11168

DCNv2 samples the input at ``p + p_k + dp_k`` and weights each sample by a
modulation scalar ``dm_k`` in [0, 1] (paper Eq. 3), from a sigmoid; a
zero-initialised conv on the input predicts the offsets ``dp_k`` and the
modulation logits, so with a plain sigmoid the modulation starts at
``sigmoid(0) = 0.5``.

mmcv's ``ModulatedDeformConv2dPack`` (registered as ``DCNv2``) does exactly
that: ``mask = sigmoid(logit)`` = 0.5 at init, so swapping it into a
*pretrained* backbone (mmdet's ``dcn=dict(type='DCNv2', ...)``) halves the
output of every replaced conv at step 0. This class changes only the
modulation to ``mask = 2 * sigmoid(logit)``: 1 at init (the zero-initialised
offset conv), so the layer equals the plain conv with the same weights and a
pretrained network is undisturbed; the range is (0, 2) instead of (0, 1).

Why ``2 * sigmoid`` and not a bias init: ``sigmoid(b) = 1`` has no finite
solution; a large bias (``b = 5`` gives 0.993) is still not the plain conv and
saturates the sigmoid, where its gradient (``s (1 - s)`` = 0.007) nearly
stops the modulation from learning. ``2 * sigmoid(0)`` is exactly 1 at the
sigmoid's steepest point (gradient 0.5). The authors' DCNv2 operator example
(msracver/Deformable-ConvNets, ``DCNv2_op/example_symbol.py``) also uses
``mask = 2 * sigmoid(logit)`` with a zero-initialised offset conv.

Two backends compute the deformable conv, with the same parameters, offset
layout and results (``tests/test_dcn.py`` checks forward and gradients):

* ``mmplug.conv.modulated_deform_conv.modulated_deform_conv2d``, plain
  PyTorch (``grid_sample`` + ``conv2d``): used for CPU tensors. mmcv 2.1.0's
  compiled CPU kernel is single-threaded and slow (142 ms forward + backward
  at 4x128x16x16 on 2 cores, the plain-PyTorch path 15 ms): a Faster R-CNN
  R50 train iteration at 4x128x128 took 1.8 s with 13 such layers in c3-c5
  and 0.66 s without; with this path it takes 0.73 s. It also takes bfloat16
  (mmcv's CPU kernel does not) and contains only standard ops
  (``torch.export`` and ``torch.compile`` trace it).
* mmcv's compiled op (``mmcv.ops.modulated_deform_conv2d``): used on every
  other device (CUDA when mmcv is built with CUDA:
  ``FORCE_CUDA=1 MMCV_WITH_OPS=1 pip install mmcv==2.1.0`` or a prebuilt
  wheel for your torch/CUDA). It fills its column buffer one sample at a
  time and keeps nothing for the backward, so it needs less memory than the
  plain-PyTorch path (which keeps two ``N x C x K x Ho x Wo`` column tensors);
  its CUDA speed against that path was not measured here.

``impl='torch'`` or ``impl='mmcv'`` forces one backend (tests, benchmarks).
The class still subclasses mmcv's ``ModulatedDeformConv2dPack`` and so needs
an mmcv built with ops: mmengine's optimizer constructor
(``paramwise_cfg=dict(dcn_offset_lr_mult=...)``) and mmseg's recognise a
deformable conv by ``isinstance`` of mmcv's class, and mmcv's pack upgrades
old checkpoint keys; the plain-PyTorch function itself needs no mmcv.

Export (the documented path): ``torch.onnx.export(layer, (x,), dynamo=True)``
(torch's default exporter, opset >= 16) or ``torch.export.export`` with
``impl='torch'`` or ``'auto'`` (``'auto'`` takes the plain-PyTorch path under
``torch.export`` on any device); the batch size may be dynamic, the spatial
size is fixed at export. ``impl='mmcv'`` raises there, naming that fix: mmcv's
compiled op cannot be traced (the deprecated TorchScript exporter,
``dynamo=False``, emits mmcv's own custom ONNX op for it, which plain
onnxruntime cannot run). ``torch.compile`` traces the plain-PyTorch path
without graph breaks; mmcv's op breaks the graph (dynamo cannot trace its
pybind11 function).
"""
import torch
from mmcv.ops import ModulatedDeformConv2dPack
from mmcv.ops import modulated_deform_conv2d as mmcv_modulated_deform_conv2d

from mmplug.conv.modulated_deform_conv import modulated_deform_conv2d
from mmplug.registry import MODELS
from mmplug.utils.validation import (check_conv_channels, check_conv_input, check_int,
                                     check_int_pair)


@MODELS.register_module()
class DCNv2UnitMask(ModulatedDeformConv2dPack):
    """DCNv2 with modulation ``2 * sigmoid``: the plain conv at init.

    Args:
        in_channels (int): Input channels.
        out_channels (int): Output channels.
        kernel_size (int | tuple[int, int]): Kernel size.
        stride (int | tuple[int, int]): Stride. Defaults to 1.
        padding (int | tuple[int, int]): Zero padding. Defaults to 0.
        dilation (int | tuple[int, int]): Dilation. Defaults to 1.
        groups (int): Conv groups. Defaults to 1.
        deform_groups (int): Offset/mask groups over the input channels.
            Defaults to 1.
        bias (bool): Conv bias. Defaults to True.
        impl (str): Deformable-conv backend: ``'auto'`` (plain PyTorch for
            CPU tensors, mmcv's compiled op on other devices), ``'torch'``
            or ``'mmcv'``. Keyword-only. Defaults to ``'auto'``.

    Note:
        Build it with ``dcn=dict(type='DCNv2UnitMask', deform_groups=1,
        fallback_on_stride=False)`` and ``stage_with_dcn=(False, True, True,
        True)`` in mmdet/mmseg ``ResNet`` (it replaces ``conv2`` of those
        stages' bottlenecks), or ``conv_cfg=dict(type='DCNv2UnitMask')`` in a
        ``ConvModule``. At init the offsets are 0 and the mask 1: the output
        equals ``F.conv2d`` with the layer's ``weight``/``bias``, so copying a
        pretrained conv's weights keeps its function. The state dict has the
        keys of mmcv's ``DCNv2`` (``weight``, ``bias``, ``conv_offset.*``), so
        DCNv2 checkpoints load; their mask logits then act twice as strongly.
        A subclass of mmcv's class (an ``nn.Module``, not mmengine's
        ``BaseModule``): ``init_weights()`` is mmcv's, which also re-draws
        ``weight`` uniformly, as mmcv's ``DCNv2`` does inside a host's init;
        a ``Pretrained`` init of the whole model is applied after it.
        Mixed precision: mmcv casts input, weight and mask to the offset's
        dtype (the offset conv's output, low precision under autocast).
        mmcv 2.1.0's CPU kernel takes float16 but raises NotImplementedError
        for bfloat16; its CUDA kernel takes float16 (use fp16 AMP, not bf16,
        unless your mmcv build dispatches bfloat16). The plain-PyTorch path
        (CPU) takes both; it samples in float32 and returns the offset's
        dtype, like mmcv.
        ``forward`` picks the backend from the input's device (the one
        device branch in it; a trace sees one fixed path).
        Channels-last inputs work with both backends: mmcv's kernels assume
        NCHW memory, so the mmcv path makes its tensors contiguous first.

    Example:
        >>> import torch
        >>> from mmplug.conv.dcn import DCNv2UnitMask
        >>> dcn = DCNv2UnitMask(16, 32, 3, stride=2, padding=1, bias=False)
        >>> dcn(torch.randn(1, 16, 9, 9)).shape
        torch.Size([1, 32, 5, 5])
    """

    _abbr_ = 'dcn'

    _impls = ('auto', 'torch', 'mmcv')

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 dilation=1, groups=1, deform_groups=1, bias=True, *, impl='auto'):
        owner = type(self).__name__
        check_conv_channels(owner, in_channels, out_channels, groups)
        check_int(owner, 'deform_groups', deform_groups)
        for name, value, minimum in (('kernel_size', kernel_size, 1), ('stride', stride, 1),
                                     ('padding', padding, 0), ('dilation', dilation, 1)):
            check_int_pair(owner, name, value, minimum)
        if in_channels % deform_groups:
            raise ValueError(f'{owner}: deform_groups ({deform_groups}) must divide '
                             f'in_channels ({in_channels})')
        if not isinstance(bias, bool):
            raise ValueError(f'{owner}: bias must be a bool, got {bias!r}')
        if impl not in self._impls:
            raise ValueError(f'{owner}: impl must be one of {self._impls}, got {impl!r}')
        super().__init__(in_channels, out_channels, kernel_size, stride=stride,
                         padding=padding, dilation=dilation, groups=groups,
                         deform_groups=deform_groups, bias=bias)
        self.impl = impl

    def _use_mmcv(self, x):
        """Whether this call runs mmcv's compiled op (else the plain-PyTorch function)."""
        # torch.export (also behind torch.onnx.export, dynamo=True) cannot trace
        # mmcv's compiled op; the plain-PyTorch path exports (only standard ops).
        # (torch.compiler.is_exporting exists from torch 2.5.)
        is_exporting = getattr(torch.compiler, 'is_exporting', None)
        exporting = is_exporting is not None and is_exporting()
        if self.impl == 'torch' or (self.impl == 'auto' and (x.device.type == 'cpu'
                                                             or exporting)):
            return False
        if exporting:
            raise RuntimeError(
                f"{type(self).__name__}(impl='mmcv'): mmcv's compiled deformable-conv op "
                "cannot be traced by torch.export / torch.onnx.export(dynamo=True). Set "
                "impl='torch' (or 'auto') on the layer before exporting: the plain-PyTorch "
                'path computes the same function with standard ops.')
        return True

    def forward(self, x):
        check_conv_input(type(self).__name__, x, self.in_channels, self.kernel_size,
                         self.padding, self.dilation)
        out = self.conv_offset(x)  # [N, 3*G*kh*kw, H', W']
        o1, o2, logit = torch.chunk(out, 3, dim=1)
        offset = torch.cat((o1, o2), dim=1)  # [N, 2*G*kh*kw, H', W']
        mask = 2 * torch.sigmoid(logit)  # [N, G*kh*kw, H', W'], 1 at init
        args = (self.bias, self.stride, self.padding, self.dilation, self.groups,
                self.deform_groups)
        if self._use_mmcv(x):
            # mmcv 2.1.0's kernels index these as NCHW memory without checking:
            # channels-last tensors gave outputs off by their whole scale (CPU).
            x, offset, mask, weight = (t.contiguous() for t in (x, offset, mask, self.weight))
            return mmcv_modulated_deform_conv2d(x, offset, mask, weight, *args)
        return modulated_deform_conv2d(x, offset, mask, self.weight, *args)
