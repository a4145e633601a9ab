"""The one registry mmplug registers into.

mmplug registers its modules into mmengine's **root** ``MODELS`` registry, the
one mmcv's bricks (``ConvModule``, ``NonLocal2d``, ``build_plugin_layer``) use.
mmdet's and mmseg's ``MODELS`` are children of it, and a lookup that misses in
a child falls back to its parent, so an unprefixed ``type='SGE'`` resolves from
an mmdet config and from an mmseg config alike.
"""
from mmengine.registry import MODELS

__all__ = ['MODELS']
