"""Shape-preserving plugins.

Contract: ``Module(in_channels, ...)`` maps ``[N, C, H, W]`` to ``[N, C, H, W]``
for any H, W >= 1, so it can sit at any ``position`` of mmdet/mmseg ResNet
``plugins=[...]`` (``after_conv1``, ``after_conv2``, ``after_conv3``). Each class
has a fixed ``_abbr_`` (its checkpoint key) and an ``init_weights()`` that
survives the host backbone's initialisation.
"""
from .sge import SGE

__all__ = ['SGE']
