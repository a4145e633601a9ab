"""Ghost convolution: a conv layer that makes part of its output with cheap ops.

Han, Wang, Tian, Guo, Xu, Xu. "GhostNet: More Features from Cheap Operations",
CVPR 2020. https://arxiv.org/abs/1911.11907

The Ghost module (Sec. 3.1, Eqs. 2-3) replaces an ``n``-output conv: a primary
conv (the layer's kernel, stride, padding) makes ``m = ceil(n / s)`` intrinsic
maps, a depthwise ``d x d`` conv makes ``s - 1`` ghost maps from each, and the
first ``n`` of both are kept; ``s = 2``, ``d = 3``, about ``s`` times fewer
FLOPs (Eqs. 4-5). Init: none of its own (the host's reaches both convs).

Deviations: no norm/activation by default, where the paper has BN (and in a
bottleneck's first module ReLU) after each conv: the layer stays linear like
the conv it replaces and the host's follow; it lacks only the BN/ReLU on the
intrinsic maps. ``norm_cfg=dict(type='BN'), act_cfg=dict(type='ReLU')`` is the
paper's module.
"""
import math

import torch
from mmcv.cnn import build_norm_layer
from mmengine.model import BaseModule
from torch import nn

from mmplug.layers import (
    build_act,
    check_bool,
    check_cfg,
    check_conv_input,
    check_int,
    check_int_pair,
    check_odd,
)
from mmplug.registry import MODELS


@MODELS.register_module()
class GhostConv2d(BaseModule):
    """Ghost module as a drop-in ``nn.Conv2d`` replacement.

    Args:
        in_channels (int): Input channels.
        out_channels (int): Output channels ``n``.
        kernel_size (int | tuple[int, int]): Kernel of the primary conv.
        stride (int | tuple[int, int]): Its stride. Defaults to 1.
        padding (int | tuple[int, int]): Its padding. Defaults to 0.
        dilation (int | tuple[int, int]): Its dilation. Defaults to 1.
        groups (int): Its groups; must divide ``in_channels`` and ``m``.
            Defaults to 1.
        bias (bool): Bias on both convs. Defaults to True.
        ratio (int): The paper's ``s`` (at least 2). Defaults to 2.
        dw_size (int): Odd kernel ``d`` of the cheap conv. Defaults to 3.
        norm_cfg (dict, optional): Norm after each conv. Defaults to None.
        act_cfg (dict, optional): Activation after each conv. Defaults to None.
        init_cfg (dict | list[dict], optional): mmengine init config.
            Defaults to None.

    Note:
        In mmdet/mmseg ``ResNet``, ``conv_cfg=dict(type='GhostConv2d')``
        replaces every conv, stem and downsample included. Fewer FLOPs, but
        slower on GPU than the FLOPs suggest (depthwise conv, concatenation).

    Example:
        >>> import torch
        >>> from mmplug.conv.ghost_conv import GhostConv2d
        >>> conv = GhostConv2d(64, 128, 3, stride=2, padding=1, bias=False)
        >>> conv(torch.randn(2, 64, 28, 28)).shape
        torch.Size([2, 128, 14, 14])
    """

    _abbr_ = 'ghost_conv'

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 dilation=1, groups=1, bias=True, *, ratio=2, dw_size=3, norm_cfg=None,
                 act_cfg=None, init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        owner = type(self).__name__
        for name, value in (('in_channels', in_channels), ('out_channels', out_channels),
                            ('groups', groups), ('ratio', ratio), ('dw_size', dw_size)):
            check_int(owner, name, value)
        kernel_size = check_int_pair(owner, 'kernel_size', kernel_size, 1)
        stride = check_int_pair(owner, 'stride', stride, 1)
        padding = check_int_pair(owner, 'padding', padding, 0)
        dilation = check_int_pair(owner, 'dilation', dilation, 1)
        if ratio < 2:
            raise ValueError(f'{owner}: ratio must be >= 2 (1 is a plain conv), got {ratio}')
        check_odd(owner, 'dw_size', dw_size, why='same padding')
        check_bool(owner, 'bias', bias)
        init_channels = math.ceil(out_channels / ratio)
        if in_channels % groups or init_channels % groups:
            raise ValueError(
                f'{owner}: groups ({groups}) must divide in_channels ({in_channels}) and the '
                f'primary width ceil(out_channels / ratio) = {init_channels}')
        for name, cfg in (('norm_cfg', norm_cfg), ('act_cfg', act_cfg)):
            check_cfg(owner, name, cfg)

        # The attributes ConvModule re-exports from its ``conv``.
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = padding
        self.dilation = dilation
        self.groups = groups
        self.transposed = False
        self.output_padding = (0, 0)
        self.ratio = ratio
        self.dw_size = dw_size
        self.init_channels = init_channels

        self.primary_conv = nn.Conv2d(in_channels, init_channels, kernel_size, stride, padding,
                                      dilation, groups=groups, bias=bias)
        self.cheap_conv = nn.Conv2d(init_channels, init_channels * (ratio - 1), dw_size, 1,
                                    dw_size // 2, groups=init_channels, bias=bias)
        self.primary_norm = self._norm(norm_cfg, init_channels)
        self.cheap_norm = self._norm(norm_cfg, init_channels * (ratio - 1))
        self.primary_act = build_act(act_cfg)
        self.cheap_act = build_act(act_cfg)

    @staticmethod
    def _norm(norm_cfg, channels):
        return nn.Identity() if norm_cfg is None else build_norm_layer(norm_cfg, channels)[1]

    def forward(self, x):
        check_conv_input(type(self).__name__, x, self.in_channels, self.kernel_size,
                         self.padding, self.dilation)
        intrinsic = self.primary_act(self.primary_norm(self.primary_conv(x)))  # [N, m, H', W']
        ghost = self.cheap_act(self.cheap_norm(self.cheap_conv(intrinsic)))  # [N, m(s-1), H', W']
        return torch.cat([intrinsic, ghost], dim=1)[:, :self.out_channels]  # [N, n, H', W']
