"""The fixed low-pass filter of anti-aliased downsampling (Zhang, ICML 2019,
https://arxiv.org/abs/1904.11486): a row of Pascal's triangle, outer product with itself,
normalised to sum 1, applied depthwise with the stride."""
import math

import torch
import torch.nn.functional as F
from torch import nn

from .validation import check_input, check_int

__all__ = ['PAD_MODES', 'Blur', 'binomial_filter', 'check_blur_args']

#: ``pad_mode`` -> ``F.pad`` mode.
PAD_MODES = {'reflect': 'reflect', 'replicate': 'replicate', 'zero': 'constant',
             'constant': 'constant', 'circular': 'circular'}


def check_blur_args(owner, filt_size, pad_mode):
    """Raise ``ValueError`` unless ``filt_size`` is 1..7 and ``pad_mode`` one of ``PAD_MODES``."""
    if isinstance(filt_size, bool) or not isinstance(filt_size, int) or not 1 <= filt_size <= 7:
        raise ValueError(f'{owner}: filt_size must be an int in 1..7, got {filt_size!r}')
    if pad_mode not in PAD_MODES:
        raise ValueError(f'{owner}: pad_mode must be one of {sorted(PAD_MODES)}, '
                         f'got {pad_mode!r}')


def binomial_filter(filt_size):
    """The normalised 2-D binomial filter of size ``filt_size`` (``[f, f]``, sums to 1)."""
    row = torch.tensor([math.comb(filt_size - 1, i) for i in range(filt_size)],
                       dtype=torch.float64)
    filt = row[:, None] * row[None, :]
    return (filt / filt.sum()).float()


class Blur(nn.Module):
    """Depthwise binomial blur of ``channels`` maps with a stride (``BlurPool2d`` and the
    blur inside ``BlurConv2d``).

    Padding follows the authors' layout: ``(filt_size - 1) // 2`` before and
    ``ceil((filt_size - 1) / 2)`` after, on each axis, so the output is
    ``ceil(H / stride) x ceil(W / stride)`` for every filter size. The filter is a
    non-persistent buffer: no parameters, no checkpoint keys.
    """

    def __init__(self, channels, filt_size=3, stride=2, pad_mode='reflect', owner=None):
        super().__init__()
        #: The module named in error messages (``BlurConv2d`` for its inner blurs).
        self.owner = owner = owner or type(self).__name__
        for name, value in (('in_channels', channels), ('stride', stride)):
            check_int(owner, name, value)
        check_blur_args(owner, filt_size, pad_mode)
        self.in_channels = channels
        self.filt_size = filt_size
        self.stride = stride
        self.pad_mode = pad_mode
        before, after = (filt_size - 1) // 2, math.ceil((filt_size - 1) / 2)
        self.pad = (before, after, before, after)  # F.pad order: W then H
        self.register_buffer(
            'filt', binomial_filter(filt_size).expand(channels, 1, -1, -1).contiguous(),
            persistent=False)

    def forward(self, x):
        owner = self.owner
        check_input(owner, x, self.in_channels)
        h, w = x.shape[2:]
        # reflect needs more than the padding; circular wraps at most once
        too_small = min(h, w) <= self.pad[1] if self.pad_mode == 'reflect' else \
            self.pad_mode == 'circular' and min(h, w) < self.pad[1]
        if too_small:
            relation = '>' if self.pad_mode == 'reflect' else '>='
            raise ValueError(f"{owner}: pad_mode='{self.pad_mode}' with filt_size "
                             f'{self.filt_size} needs H and W {relation} {self.pad[1]}, got '
                             f"{h}x{w} (input shape {tuple(x.shape)}); use pad_mode='replicate' "
                             "or 'zero' for such small maps")
        x = F.pad(x, self.pad, mode=PAD_MODES[self.pad_mode])  # [N, C, H+f-1, W+f-1]
        return F.conv2d(x, self.filt.to(x.dtype), stride=self.stride,
                        groups=self.in_channels)  # [N, C, ceil(H/s), ceil(W/s)]
