"""Pooling layers: ``Module(in_channels, ...)`` subsamples ``[N, C, H, W]``; put it where
a pooling goes (after a stride-1 max pool, as the paper does), not at a plugin position.
"""
from .blur_pool import BlurPool2d

__all__ = ['BlurPool2d']
