"""The memory layout of a feature map, so a module can return its output in its input's.

Inside a model converted with ``model.to(memory_format=torch.channels_last)`` every conv
returns channels-last maps; a module that returns NCHW instead makes the next elementwise op
(a bottleneck's residual add) read one operand across large strides.
"""
import torch

__all__ = ['memory_format_of']


def memory_format_of(x):
    """``torch.channels_last`` for a channels-last-contiguous ``[N, C, H, W]`` tensor that is
    not also NCHW-contiguous, else ``torch.contiguous_format`` (also for a strided view such
    as a slice of a channels-last map).

    Example:
        >>> import torch
        >>> x = torch.randn(2, 8, 4, 4).contiguous(memory_format=torch.channels_last)
        >>> memory_format_of(x) is torch.channels_last, memory_format_of(x.contiguous())
        (True, torch.contiguous_format)
    """
    if x.dim() == 4 and not x.is_contiguous() \
            and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format
