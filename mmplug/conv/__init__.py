"""Conv-layer replacements.

Contract: a class with ``nn.Conv2d``'s signature (``in_channels, out_channels,
kernel_size, stride, padding, dilation, groups, bias``), registered so that
``conv_cfg=dict(type=...)`` or ``dcn=dict(type=...)`` builds it. These may change
strides and are not plugins.
"""
from .blur_pool import BlurConv2d, BlurPool2d
from .coord_conv import CoordConv2d
from .ghost_conv import GhostConv2d

try:
    from .dcn import DCNv2UnitMask
except ImportError as err:
    # mmcv built without its ops (``mmcv-lite``, or a build-isolated source
    # build): everything else works; building this layer says why it cannot.
    if not (err.name or '').startswith('mmcv'):
        raise
    from ._missing_ops import missing_ops_layer
    DCNv2UnitMask = missing_ops_layer('DCNv2UnitMask', err)

__all__ = ['BlurConv2d', 'BlurPool2d', 'CoordConv2d', 'DCNv2UnitMask', 'GhostConv2d']
