"""mmplug: plug-and-play CNN modules for OpenMMLab.

Importing the package registers every module into mmengine's root ``MODELS``
registry; configs load it with::

    custom_imports = dict(imports=['mmplug'], allow_failed_imports=False)
"""
from . import backbones, conv, necks, plugins, pooling
from .backbones import PluggedBackbone
from .conv import BlurConv2d, CoordConv2d, DCNv2UnitMask, GhostConv2d
from .necks import ASFF, ASPP, MPM, RFB, ASPPBlock, MPMBlock, PerLevelNeck, RFBBlock
from .plugins import CBAM, SE, SGE, SK, STN, CoordConvPlugin, NonLocal, StripPooling
from .pooling import BlurPool2d
from .registry import MODELS
from .safe_loading import allow_mmengine_checkpoints
from .version import __version__

# Let torch >= 2.6's weights_only loading read mmengine's checkpoints (mmplug.safe_loading).
allow_mmengine_checkpoints()

__all__ = [
    '__version__', 'MODELS', 'allow_mmengine_checkpoints', 'backbones', 'conv', 'necks',
    'plugins', 'pooling',
    # plugins
    'CBAM', 'CoordConvPlugin', 'NonLocal', 'SE', 'SGE', 'SK', 'STN', 'StripPooling',
    # conv-layer replacements
    'BlurConv2d', 'CoordConv2d', 'DCNv2UnitMask', 'GhostConv2d',
    # pooling
    'BlurPool2d',
    # necks and their blocks
    'ASFF', 'ASPP', 'ASPPBlock', 'MPM', 'MPMBlock', 'PerLevelNeck', 'RFB', 'RFBBlock',
    # backbone wrappers
    'PluggedBackbone',
]
