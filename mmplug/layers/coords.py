"""Coordinate channels of CoordConv (https://arxiv.org/abs/1807.03247), per axis from the
runtime shape: ``x_j = (2j - (W - 1)) / max(W - 1, 1)``, ``y_i`` alike, ``r = sqrt(x^2 + y^2)``.
"""
import torch

from .memory_format import memory_format_of

__all__ = ['coord_channels', 'num_coords']


def _axis_coords(size, like):
    # Computed in float32: fp16/bf16 do not hold large indices exactly.
    pos = torch.arange(size, device=like.device, dtype=torch.float32)
    return ((2 * pos - (size - 1)) / max(size - 1, 1)).to(like.dtype)


def coord_channels(x, with_r=False):
    """``[x, y]`` (``[x, y, r]`` with ``with_r``) for ``x`` of shape ``[N, C, H, W]``.

    Returns:
        Tensor: ``[N, 2 or 3, H, W]`` in ``x``'s dtype and device, channels-last-contiguous
        if ``x`` is (:func:`memory_format_of`); ``x`` varies along W, ``y`` along H.
    """
    n, _, h, w = x.shape
    xx = _axis_coords(w, x).view(1, 1, 1, w).expand(n, 1, h, w)  # [N, 1, H, W]
    yy = _axis_coords(h, x).view(1, 1, h, 1).expand(n, 1, h, w)  # [N, 1, H, W]
    channels = [xx, yy]
    if with_r:
        channels.append(torch.sqrt(xx * xx + yy * yy))
    coords = torch.cat(channels, dim=1)  # [N, 2 or 3, H, W]
    return coords.contiguous(memory_format=memory_format_of(x))


def num_coords(with_r):
    """How many coordinate channels :func:`coord_channels` appends."""
    return 3 if with_r else 2
