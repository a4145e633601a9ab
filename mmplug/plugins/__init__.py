"""Shape-preserving plugins.

Contract: ``Module(in_channels, ...)`` maps ``[N, C, H, W]`` to ``[N, C, H, W]``
for any H, W >= 1, so it can sit at any ``position`` of mmdet/mmseg ResNet
``plugins=[...]`` (``after_conv1``, ``after_conv2``, ``after_conv3``), or after
any submodule of any backbone through ``PluggedBackbone``. Each class has a
fixed ``_abbr_`` (its checkpoint key) and an ``init_weights()`` that survives
the host backbone's initialisation.
"""
from .cbam import CBAM
from .coord_conv import CoordConvPlugin
from .non_local import NonLocal
from .se import SE
from .selective_kernel import SK
from .sge import SGE
from .stn import STN
from .strip_pooling import StripPooling

__all__ = ['CBAM', 'CoordConvPlugin', 'NonLocal', 'SE', 'SGE', 'SK', 'STN', 'StripPooling']
