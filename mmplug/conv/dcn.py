"""Modulated deformable conv (DCNv2) whose modulation starts at 1.

Zhu, Hu, Lin, Dai. "Deformable ConvNets v2: More Deformable, Better Results",
CVPR 2019. https://arxiv.org/abs/1811.11168

DCNv2 samples the input at ``p + p_k + dp_k`` and weights each sample by a
modulation ``dm_k = sigmoid(logit)`` (Eq. 3); a conv on the input predicts the
offsets and logits. Init: that conv is zero (as mmcv's ``DCNv2``): offsets 0,
modulation 1, so the layer equals the plain conv with its weights.

Deviations: ``dm_k = 2 * sigmoid(logit)``, range (0, 2), as the authors' DCNv2
operator example (msracver/Deformable-ConvNets, ``DCNv2_op/example_symbol.py``);
the paper's sigmoid starts at 0.5 and halves every replaced conv of a
pretrained backbone, and no finite bias makes it 1.

CPU tensors run ``modulated_deform_conv2d`` (plain PyTorch, same results and
gradients as mmcv's op, ``docs/performance.md``); other devices mmcv's op
(less memory); ``impl`` forces one. A subclass of mmcv's
``ModulatedDeformConv2dPack`` (``dcn_offset_lr_mult`` and mmseg recognise it),
so it needs mmcv with ops. Export with ``impl='torch'`` or ``'auto'``:
``torch.onnx.export(layer, (x,), dynamo=True)`` (opset >= 16) or
``torch.export.export``, dynamic batch, fixed spatial size.
"""
import torch
from mmcv.ops import ModulatedDeformConv2dPack
from mmcv.ops import modulated_deform_conv2d as mmcv_modulated_deform_conv2d

from mmplug.conv.modulated_deform_conv import modulated_deform_conv2d
from mmplug.layers import (
    check_bool,
    check_conv_channels,
    check_conv_input,
    check_int,
    check_int_pair,
)
from mmplug.registry import MODELS


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
        deform_groups (int): Offset/mask groups. Defaults to 1.
        bias (bool): Conv bias. Defaults to True.
        impl (str): ``'auto'`` (plain PyTorch on CPU, mmcv's op elsewhere),
            ``'torch'`` or ``'mmcv'``. Keyword-only. Defaults to ``'auto'``.

    Note:
        ``dcn=dict(type='DCNv2UnitMask', deform_groups=1,
        fallback_on_stride=False)``, ``stage_with_dcn=(False, True, True, True)``
        in mmdet/mmseg ``ResNet`` replaces those stages' ``conv2``. Keys are
        mmcv's ``DCNv2``'s (its mask logits then act twice as strongly);
        ``init_weights()`` is mmcv's. The output has the offset's dtype; mmcv
        2.1.0's kernels take float16, not bfloat16 (the PyTorch path takes both).

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
        check_bool(owner, 'bias', bias)
        if impl not in self._impls:
            raise ValueError(f'{owner}: impl must be one of {self._impls}, got {impl!r}')
        super().__init__(in_channels, out_channels, kernel_size, stride=stride,
                         padding=padding, dilation=dilation, groups=groups,
                         deform_groups=deform_groups, bias=bias)
        self.impl = impl

    def _use_mmcv(self, x):
        """Whether this call runs mmcv's compiled op (else the plain-PyTorch function)."""
        # torch.export cannot trace mmcv's op (is_exporting exists from torch 2.5).
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

    def offsets_and_mask(self, x):
        """The sampling offsets ``[N, 2*G*kh*kw, H', W']`` (mmcv's layout: ``(dy, dx)`` per
        deform group and tap) and the modulation ``2 sigmoid`` ``[N, G*kh*kw, H', W']``."""
        out = self.conv_offset(x)  # [N, 3*G*kh*kw, H', W']
        o1, o2, logit = torch.chunk(out, 3, dim=1)
        return torch.cat((o1, o2), dim=1), 2 * torch.sigmoid(logit)  # mask 1 at init

    def forward(self, x):
        check_conv_input(type(self).__name__, x, self.in_channels, self.kernel_size,
                         self.padding, self.dilation)
        offset, mask = self.offsets_and_mask(x)
        args = (self.bias, self.stride, self.padding, self.dilation, self.groups,
                self.deform_groups)
        if self._use_mmcv(x):
            # mmcv 2.1.0's kernels index these as NCHW memory without checking:
            # channels-last tensors gave outputs off by their whole scale (CPU).
            x, offset = x.contiguous(), offset.contiguous()
            mask, weight = mask.contiguous(), self.weight.contiguous()
            return mmcv_modulated_deform_conv2d(x, offset, mask, weight, *args)
        return modulated_deform_conv2d(x, offset, mask, self.weight, *args)
