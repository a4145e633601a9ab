"""BlurConv2d: a strided conv made anti-aliased.

Zhang. "Making Convolutional Networks Shift-Invariant Again", ICML 2019.
https://arxiv.org/abs/1904.11486

The paper low-pass filters before every subsampling (Sec. 3.2): a strided conv
becomes ``Conv (stride 1) -> ReLU -> BlurPool`` (a fixed binomial blur with the
stride). As a ``conv_cfg`` replacement this class runs the conv at stride 1,
then the blur (``blur_first=False``), or blurs at stride 1, then runs the
strided conv (``blur_first=True``: the same function away from the borders, at
the plain conv's MACs instead of about ``stride**2`` times them). Output shape
and init are the plain conv's.

Deviations from the authors' ResNet (``antialiased_cnns/resnet.py``):

* Their strided 3x3 runs at stride 1, then BN, ReLU, blur: a conv replacement
  cannot put the host's BN/ReLU in between, and ``blur_first=False`` is the
  closest; ``blur_first=True`` is not their order for it. (Their 1x1
  downsample blurs first, which ``blur_first=True`` computes.)
* In mmdet/mmseg ResNets ``conv_cfg=dict(type='BlurConv2d')`` blurs the
  stride-2 stem conv, which the authors keep plain, and cannot reach the stem
  max-pool, which they blur (MaxBlurPool: ``MaxPool(stride 1) -> BlurPool``;
  use ``BlurPool2d`` there).
"""
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _pair

from mmplug.layers import (
    Blur,
    check_blur_args,
    check_bool,
    check_conv_channels,
    check_conv_input,
    check_int_pair,
)
from mmplug.registry import MODELS


@MODELS.register_module()
class BlurConv2d(nn.Conv2d):
    """Strided conv replaced by the conv at stride 1 and a ``BlurPool2d`` (or the reverse).

    Args:
        in_channels (int): Input channels.
        out_channels (int): Output channels.
        kernel_size (int | tuple[int, int]): Conv kernel.
        stride (int | tuple[int, int]): Subsampling (equal on both axes); 1 is a
            plain conv. Defaults to 1.
        padding (int | tuple[int, int]): Zero padding of the conv. Defaults to 0.
        dilation (int | tuple[int, int]): Conv dilation. Defaults to 1.
        groups (int): Conv groups. Defaults to 1.
        bias (bool): Conv bias. Defaults to True.
        filt_size (int): Binomial filter size. Defaults to 3.
        pad_mode (str): Pad mode of the blur. Defaults to 'reflect'.
        blur_first (bool): Blur at stride 1, then the strided conv. Defaults to
            False.

    Note:
        A subclass of ``nn.Conv2d`` (same parameters and keys). In mmdet/mmseg
        ``ResNet`` it blurs the stem conv, the stride-2 conv2 (conv1 with
        ``style='caffe'``) and the stride-2 downsample convs. The 'reflect' blur
        needs maps larger than 1x1 at ``filt_size`` 3 (else 'replicate').

    Example:
        >>> import torch
        >>> from mmplug import BlurConv2d
        >>> conv = BlurConv2d(64, 128, 3, stride=2, padding=1, bias=False)
        >>> conv(torch.randn(2, 64, 15, 16)).shape
        torch.Size([2, 128, 8, 8])
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, padding_mode='zeros', *, filt_size=3, pad_mode='reflect',
                 blur_first=False):
        owner = type(self).__name__
        check_conv_channels(owner, in_channels, out_channels, groups)
        for name, value in (('kernel_size', kernel_size), ('dilation', dilation)):
            check_int_pair(owner, name, value)
        stride_pair = _pair(stride)
        if len(stride_pair) != 2 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1
                                        for s in stride_pair) or stride_pair[0] != stride_pair[1]:
            raise ValueError(f'{owner}: stride must be a positive int (or an equal pair), '
                             f'got {stride!r}')
        if isinstance(padding, str):
            raise ValueError(f'{owner}: padding must be an int or a pair of ints, got {padding!r}')
        check_int_pair(owner, 'padding', padding, 0)
        check_blur_args(owner, filt_size, pad_mode)
        if padding_mode != 'zeros':
            raise ValueError(f"{owner}: only padding_mode='zeros' is supported, "
                             f'got {padding_mode!r}')
        check_bool(owner, 'blur_first', blur_first)
        check_bool(owner, 'bias', bias)
        super().__init__(in_channels, out_channels, kernel_size, stride_pair, padding, dilation,
                         groups, bias)
        s = stride_pair[0]
        self.blur_first = blur_first
        self.pre_blur = Blur(in_channels, filt_size, 1, pad_mode, owner) \
            if blur_first and s > 1 else nn.Identity()
        self.post_blur = Blur(out_channels, filt_size, s, pad_mode, owner) \
            if not blur_first and s > 1 else nn.Identity()
        self._conv_stride = s if blur_first else 1

    def forward(self, x):
        check_conv_input(type(self).__name__, x, self.in_channels, self.kernel_size,
                         self.padding, self.dilation)
        x = self.pre_blur(x)  # [N, C_in, H, W], low-passed when blur_first
        x = F.conv2d(x, self.weight, self.bias, self._conv_stride, self.padding, self.dilation,
                     self.groups)  # [N, C_out, H', W'] (stride 1 unless blur_first)
        return self.post_blur(x)  # [N, C_out, ceil(H'/s), ceil(W'/s)]
