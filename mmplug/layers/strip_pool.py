"""Strip pooling (Hou et al., CVPR 2020, https://arxiv.org/abs/2003.13328): the long, narrow
pooling windows shared by the StripPooling plugin and SPNet's mixed pooling module."""
from mmcv.cnn import ConvModule

__all__ = ['strip_convs', 'strip_pool']


def strip_convs(channels, conv_cfg=None, norm_cfg=dict(type='BN')):
    """The two 1-D convs of strip pooling: ``(3x1 over H, 1x3 over W)``, with norm, no act."""
    layer = dict(conv_cfg=conv_cfg, norm_cfg=norm_cfg, act_cfg=None)
    return (ConvModule(channels, channels, (3, 1), padding=(1, 0), **layer),
            ConvModule(channels, channels, (1, 3), padding=(0, 1), **layer))


def strip_pool(x, conv_h, conv_w):
    """``conv_h(mean over W) + conv_w(mean over H)`` of ``x`` ``[N, C, H, W]``.

    The ``[N, C, H, 1]`` and ``[N, C, 1, W]`` strips are expanded to ``[N, C, H, W]``
    by broadcasting in the sum (the paper's "expand").
    """
    return conv_h(x.mean(dim=3, keepdim=True)) + conv_w(x.mean(dim=2, keepdim=True))
