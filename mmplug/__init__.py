"""mmplug: plug-and-play CNN modules for OpenMMLab.

Importing the package registers every module into mmengine's root ``MODELS``
registry; configs load it with::

    custom_imports = dict(imports=['mmplug'], allow_failed_imports=False)
"""
from .version import __version__
from .registry import MODELS
from . import backbones, conv, necks, plugins
from .backbones import PluggedBackbone
from .conv import BlurConv2d, BlurPool2d, CoordConv2d, DCNv2UnitMask, GhostConv2d
from .necks import ASFF, ASPP, MPM, RFB, ASPPBlock, MPMBlock, RFBBlock
from .plugins import CBAM, SE, SGE, SK, STN, CoordConvPlugin, NonLocal, StripPooling
from .utils import allow_mmengine_checkpoints

# mmengine 0.10.7 writes objects into checkpoints that torch >= 2.6's safe
# loading (weights_only=True) rejects, which breaks ``resume``. Allow exactly
# those classes; everything else stays refused.
allow_mmengine_checkpoints()

__all__ = [
    '__version__', 'MODELS', 'allow_mmengine_checkpoints', 'backbones', 'conv', 'necks',
    'plugins',
    # plugins
    'CBAM', 'CoordConvPlugin', 'NonLocal', 'SE', 'SGE', 'SK', 'STN', 'StripPooling',
    # conv-layer replacements
    'BlurConv2d', 'BlurPool2d', 'CoordConv2d', 'DCNv2UnitMask', 'GhostConv2d',
    # necks and their blocks
    'ASFF', 'ASPP', 'ASPPBlock', 'MPM', 'MPMBlock', 'RFB', 'RFBBlock',
    # backbone wrappers
    'PluggedBackbone',
]
