"""Conv-layer replacements.

Contract: a class with ``nn.Conv2d``'s signature (``in_channels, out_channels,
kernel_size, stride, padding, dilation, groups, bias``), registered so that
``conv_cfg=dict(type=...)`` or ``dcn=dict(type=...)`` builds it. These may change
strides and are not plugins. (CoordConv2d, GhostConv2d, BlurPool, DCNv2 variants.)
"""
__all__ = []
