"""Conv-layer replacements with ``nn.Conv2d``'s signature, built by
``conv_cfg=dict(type=...)`` or ``dcn=dict(type=...)``; they may change strides.
"""
from .blur_conv import BlurConv2d
from .coord_conv import CoordConv2d
from .ghost_conv import GhostConv2d

try:
    from .dcn import DCNv2UnitMask
except ImportError as err:
    # mmcv without its ops: building this layer then says why it cannot.
    if not (err.name or '').startswith('mmcv'):
        raise
    from ._missing_ops import missing_ops_layer
    DCNv2UnitMask = missing_ops_layer('DCNv2UnitMask', err)

__all__ = ['BlurConv2d', 'CoordConv2d', 'DCNv2UnitMask', 'GhostConv2d']
