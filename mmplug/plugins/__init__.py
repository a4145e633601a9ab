"""Shape-preserving plugins (``[N, C, H, W]`` to the same shape, any H, W >= 1) for any
``position`` of mmdet/mmseg ResNet ``plugins=[...]`` or any submodule via ``PluggedBackbone``.
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
