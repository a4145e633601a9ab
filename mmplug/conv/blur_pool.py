"""Anti-aliased downsampling: BlurPool and a blur-subsampling strided conv.

Zhang. "Making Convolutional Networks Shift-Invariant Again", ICML 2019.
https://arxiv.org/abs/1904.11486

Subsampling without a low-pass filter aliases, so a CNN's output changes when
its input moves by one pixel. The paper low-pass filters before every
subsampling (Sec. 3.2): ``MaxPool -> Max + BlurPool``, ``StridedConv ->
Conv + ReLU + BlurPool``, ``AvgPool -> BlurPool``. ``BlurPool`` is a fixed
depthwise binomial filter (a row of Pascal's triangle, outer product with
itself, normalised to sum 1; sizes 1..7, 1 = no blur) applied with the stride.

Padding follows the authors' layout: ``(filt_size - 1) // 2`` before and
``ceil((filt_size - 1) / 2)`` after, on each axis (asymmetric for even sizes),
so the output is ``ceil(H / stride)`` for every filter size, and the filter of
odd size is centred on input pixels ``0, s, 2s, ...``. timm's ``BlurPool2d``
pads symmetrically by ``((stride - 1) + (filt_size - 1)) // 2``: the same for
odd filters at stride 2, but for even filters one more row/column
(``H / 2 + 1`` at even ``H``, filt_size 2 or 4), and shifted by half a pixel.
The authors' default pad mode is reflect.

``BlurConv2d`` is the strided-conv replacement for ``conv_cfg``: the conv at
stride 1, then ``BlurPool2d`` with the conv's stride. Deviation: the paper puts
the ReLU between conv and blur; a conv replacement cannot (the host's BN/ReLU
come after it), so here the *linear* conv output is blurred. The output shape
equals the plain strided conv's: ``ceil(H' / s)`` with ``H'`` the stride-1
output is ``floor((H' - 1) / s) + 1``. The conv runs at full resolution, so a
stride-2 conv costs about 4x its plain MACs; ``blur_first=True`` blurs the
input at stride 1 and then runs the strided conv, which is the same function
away from the borders (linear shift-invariant ops commute) at the plain cost.
"""
import math

import torch
import torch.nn.functional as F
from mmengine.model import BaseModule
from torch import nn
from torch.nn.modules.utils import _pair

from mmplug.registry import MODELS
from mmplug.utils.validation import (check_conv_channels, check_conv_input, check_input,
                                     check_int, check_int_pair)

_PAD_MODES = {'reflect': 'reflect', 'replicate': 'replicate', 'zero': 'constant',
              'constant': 'constant', 'circular': 'circular'}


def _check_blur_args(owner, filt_size, pad_mode):
    if isinstance(filt_size, bool) or not isinstance(filt_size, int) or not 1 <= filt_size <= 7:
        raise ValueError(f'{owner}: filt_size must be an int in 1..7, got {filt_size!r}')
    if pad_mode not in _PAD_MODES:
        raise ValueError(f'{owner}: pad_mode must be one of {sorted(_PAD_MODES)}, '
                         f'got {pad_mode!r}')


def binomial_filter(filt_size):
    """The normalised 2-D binomial filter of size ``filt_size`` (``[f, f]``, sums to 1)."""
    row = torch.tensor([math.comb(filt_size - 1, i) for i in range(filt_size)],
                       dtype=torch.float64)
    filt = row[:, None] * row[None, :]
    return (filt / filt.sum()).float()


@MODELS.register_module()
class BlurPool2d(BaseModule):
    """Anti-aliased subsampling: depthwise binomial blur with a stride.

    Args:
        in_channels (int): Channels of the input.
        filt_size (int): Binomial filter size, 1 to 7 (1: plain subsampling,
            2: box, 3: [1, 2, 1], ...). Defaults to 3.
        stride (int): Subsampling factor. Defaults to 2.
        pad_mode (str): 'reflect', 'replicate', 'zero' (alias 'constant') or
            'circular'. Defaults to 'reflect' (the authors').
        init_cfg (dict | list[dict], optional): mmengine init config (nothing
            to initialise). Defaults to None.

    Note:
        No parameters; the filter is a non-persistent buffer, so the module
        adds no checkpoint keys. Output ``ceil(H / stride) x ceil(W / stride)``.
        It changes the stride, so it is no plugin: put it after a stride-1
        max pool or conv (the paper), or use ``BlurConv2d`` via ``conv_cfg``.
        'reflect' needs ``H, W > ceil((filt_size - 1) / 2)`` (torch's
        reflection padding); the other modes take any size.

    Example:
        >>> import torch
        >>> from mmplug.conv.blur_pool import BlurPool2d
        >>> pool = BlurPool2d(64, filt_size=3, stride=2)
        >>> pool(torch.randn(2, 64, 15, 16)).shape
        torch.Size([2, 64, 8, 8])
    """

    _abbr_ = 'blur_pool'

    def __init__(self, in_channels, filt_size=3, stride=2, pad_mode='reflect', init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        owner = type(self).__name__
        for name, value in (('in_channels', in_channels), ('stride', stride)):
            check_int(owner, name, value)
        _check_blur_args(owner, filt_size, pad_mode)
        self.in_channels = in_channels
        self.filt_size = filt_size
        self.stride = stride
        self.pad_mode = pad_mode
        before, after = (filt_size - 1) // 2, math.ceil((filt_size - 1) / 2)
        self.pad = (before, after, before, after)  # F.pad order: W then H
        self.register_buffer(
            'filt', binomial_filter(filt_size).expand(in_channels, 1, -1, -1).contiguous(),
            persistent=False)

    def forward(self, x):
        check_input(type(self).__name__, x, self.in_channels)
        h, w = x.shape[2:]
        if self.pad_mode == 'reflect' and min(h, w) <= self.pad[1]:
            raise ValueError(f"{type(self).__name__}: pad_mode='reflect' with filt_size "
                             f'{self.filt_size} needs H and W > {self.pad[1]}, got {h}x{w} '
                             f"(input shape {tuple(x.shape)}); use pad_mode='replicate' or "
                             f"'zero' for such small maps")
        if self.pad_mode == 'circular' and min(h, w) < self.pad[1]:  # wraps at most once
            raise ValueError(f"{type(self).__name__}: pad_mode='circular' with filt_size "
                             f'{self.filt_size} needs H and W >= {self.pad[1]}, got {h}x{w} '
                             f"(input shape {tuple(x.shape)}); use pad_mode='replicate' or "
                             f"'zero' for such small maps")
        x = F.pad(x, self.pad, mode=_PAD_MODES[self.pad_mode])  # [N, C, H+f-1, W+f-1]
        return F.conv2d(x, self.filt.to(x.dtype), stride=self.stride,
                        groups=self.in_channels)  # [N, C, ceil(H/s), ceil(W/s)]


@MODELS.register_module()
class BlurConv2d(nn.Conv2d):
    """Strided conv replaced by the conv at stride 1 and a ``BlurPool2d``.

    Args:
        in_channels (int): Input channels.
        out_channels (int): Output channels.
        kernel_size (int | tuple[int, int]): Conv kernel.
        stride (int | tuple[int, int]): Subsampling of the output (equal on
            both axes); 1 makes a plain conv with no blur. Defaults to 1.
        padding (int | tuple[int, int]): Zero padding of the conv. Defaults to 0.
        dilation (int | tuple[int, int]): Conv dilation. Defaults to 1.
        groups (int): Conv groups. Defaults to 1.
        bias (bool): Conv bias. Defaults to True.
        filt_size (int): Binomial filter size of the blur. Defaults to 3.
        pad_mode (str): Pad mode of the blur. Defaults to 'reflect'.
        blur_first (bool): Blur the input at stride 1, then run the conv with
            the stride: the same function away from the borders (the two
            linear shift-invariant ops commute) at the plain conv's MACs plus
            a depthwise blur, instead of about ``stride**2`` times them; the
            order the authors' ResNet code uses for its strided 3x3 and
            downsample convs. Defaults to False (conv at stride 1, then
            blur-subsample: the paper's ``Conv -> BlurPool`` order).

    Note:
        A subclass of ``nn.Conv2d``: the same parameters, checkpoint keys
        (``weight``, ``bias``) and init as the conv it replaces, so pretrained
        plain weights load unchanged and the host's ``Kaiming`` init (layer
        'Conv2d') reaches it. ``conv_cfg=dict(type='BlurConv2d')`` in
        mmdet/mmseg ``ResNet`` blurs the stem conv (stride 2), the stride-2
        conv2 (or conv1 with ``style='caffe'``) and the stride-2 downsample
        1x1 convs; all other convs have stride 1 and stay plain. Output shape
        equals ``nn.Conv2d``'s for every kernel/stride/padding/dilation.
        Only ``padding_mode='zeros'`` (ConvModule pads other modes itself).
        The default 'reflect' blur needs the map it pads (the stride-1 conv
        output, or the input with ``blur_first``) larger than 1x1 at
        ``filt_size`` 3 (a ResNet at inputs >= 32 px); use
        ``pad_mode='replicate'`` for tinier maps. Not covered by ``conv_cfg``:
        the stem max pool of ResNet (the paper's ``MaxBlurPool``), which
        stays aliased.

    Example:
        >>> import torch
        >>> from mmplug.conv.blur_pool import BlurConv2d
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
        _check_blur_args(owner, filt_size, pad_mode)
        if padding_mode != 'zeros':
            raise ValueError(f"{owner}: only padding_mode='zeros' is supported, "
                             f'got {padding_mode!r}')
        if not isinstance(blur_first, bool):
            raise ValueError(f'{owner}: blur_first must be a bool, got {blur_first!r}')
        if not isinstance(bias, bool):
            raise ValueError(f'{owner}: bias must be a bool, got {bias!r}')
        super().__init__(in_channels, out_channels, kernel_size, stride_pair, padding, dilation,
                         groups, bias)
        s = stride_pair[0]
        self.blur_first = blur_first
        # blur_first: blur (stride 1) -> conv (stride s), the same function in the
        # interior (both are linear shift-invariant, so they commute) at the plain
        # conv's cost; only the borders differ (where the padding is applied).
        self.pre_blur = BlurPool2d(in_channels, filt_size, 1, pad_mode) \
            if blur_first and s > 1 else nn.Identity()
        self.post_blur = BlurPool2d(out_channels, filt_size, s, pad_mode) \
            if not blur_first and s > 1 else nn.Identity()
        self._conv_stride = s if blur_first else 1

    def forward(self, x):
        check_conv_input(type(self).__name__, x, self.in_channels, self.kernel_size,
                         self.padding, self.dilation)
        x = self.pre_blur(x)  # [N, C_in, H, W], low-passed when blur_first
        x = F.conv2d(x, self.weight, self.bias, self._conv_stride, self.padding, self.dilation,
                     self.groups)  # [N, C_out, H', W'] (stride 1 unless blur_first)
        return self.post_blur(x)  # [N, C_out, ceil(H'/s), ceil(W'/s)]
