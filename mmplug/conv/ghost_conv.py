"""Ghost convolution: a conv layer that makes part of its output with cheap ops.

Han, Wang, Tian, Guo, Xu, Xu. "GhostNet: More Features from Cheap Operations",
CVPR 2020. https://arxiv.org/abs/1911.11907

The Ghost module (paper Sec. 3.1, Eq. 2-3) replaces an ``n``-output conv:

1. a *primary* conv (the layer's own kernel, stride, padding, dilation) makes
   ``m = ceil(n / s)`` intrinsic feature maps;
2. a cheap *depthwise* ``d x d`` conv (stride 1, 'same' padding) makes
   ``s - 1`` ghost maps from each intrinsic map;
3. intrinsic and ghost maps are concatenated and the first ``n`` kept.

The paper's defaults are ``s = 2`` (``ratio``) and ``d = 3`` (``dw_size``);
FLOPs and parameters fall by about ``s`` (Eq. 4-5).

Deliberate choices, as a conv *replacement* (``conv_cfg=dict(type='GhostConv2d')``):

* The paper's Ghost module puts BN (and, in the first module of a Ghost
  bottleneck, ReLU) after each of its two convs. Here ``norm_cfg`` and
  ``act_cfg`` default to ``None``: the layer stays linear like the
  ``nn.Conv2d`` it replaces, and the host's own norm/activation
  (``ConvModule``, ResNet's ``bn1``/``bn2``/``bn3``) follow it. Inside a host
  ``conv -> BN -> ReLU`` this is the paper's module less two things: the BN on
  the intrinsic maps before the cheap conv (a per-channel affine, which the
  depthwise conv can absorb) and the ReLU there. Putting BN/ReLU inside by
  default would normalise the output twice and make ResNet's ``conv3`` (no
  activation before the residual sum) non-linear. Pass
  ``norm_cfg=dict(type='BN'), act_cfg=dict(type='ReLU')`` for the paper's
  module exactly (then usually as a standalone block).
* The paper's ``ratio`` (``s``) keeps its name: it is the expansion of the
  intrinsic maps into the output, not a channel reduction, and it rounds up
  (``ceil``), unlike the package's ``rd_*`` reductions.
* When ``ratio`` does not divide ``out_channels``, up to ``ratio - 1`` surplus
  ghost channels are computed and sliced off (as in the paper's description).
"""
import math

import torch
from mmcv.cnn import build_activation_layer, build_norm_layer
from mmengine.model import BaseModule
from torch import nn

from mmplug.registry import MODELS
from mmplug.utils.validation import check_cfg, check_conv_input, check_int, check_int_pair


@MODELS.register_module()
class GhostConv2d(BaseModule):
    """Ghost module as a drop-in ``nn.Conv2d`` replacement.

    Args:
        in_channels (int): Input channels.
        out_channels (int): Output channels ``n``.
        kernel_size (int | tuple[int, int]): Kernel of the primary conv.
        stride (int | tuple[int, int]): Stride of the primary conv. Defaults to 1.
        padding (int | tuple[int, int]): Padding of the primary conv. Defaults to 0.
        dilation (int | tuple[int, int]): Dilation of the primary conv.
            Defaults to 1.
        groups (int): Groups of the primary conv; must divide ``in_channels``
            and ``ceil(out_channels / ratio)``. Defaults to 1.
        bias (bool): Bias on both convs. Defaults to True (as ``nn.Conv2d``).
        ratio (int): The paper's ``s`` (at least 2): the primary conv makes
            ``ceil(out_channels / ratio)`` maps. Defaults to 2.
        dw_size (int): Odd kernel ``d`` of the cheap depthwise conv.
            Defaults to 3.
        norm_cfg (dict, optional): Norm after each of the two convs (the
            paper's BN). Defaults to None (none: a linear conv replacement).
        act_cfg (dict, optional): Activation after each of the two convs.
            Defaults to None.
        init_cfg (dict | list[dict], optional): mmengine init config.
            Defaults to None.

    Note:
        Same output shape as ``nn.Conv2d`` with the same arguments; build it
        with ``conv_cfg=dict(type='GhostConv2d')`` in ``ConvModule`` or
        mmdet/mmseg ``ResNet`` (every conv of the backbone, stem and
        downsample included: Ghost-ResNet-50). No special init: the host's
        init reaches the inner ``nn.Conv2d`` layers. Fewer FLOPs than its
        plain conv but known to be slower than that suggests on GPU
        (depthwise conv, concatenation).

    Example:
        >>> import torch
        >>> from mmplug.conv.ghost_conv import GhostConv2d
        >>> conv = GhostConv2d(64, 128, 3, stride=2, padding=1, bias=False)
        >>> conv(torch.randn(2, 64, 28, 28)).shape
        torch.Size([2, 128, 14, 14])

        In an mmdet/mmseg ResNet config::

            backbone=dict(type='ResNet', depth=50,
                          conv_cfg=dict(type='GhostConv2d', ratio=2, dw_size=3))
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
        if dw_size % 2 == 0:
            raise ValueError(f'{owner}: dw_size must be odd for same padding, got {dw_size}')
        if not isinstance(bias, bool):
            raise ValueError(f'{owner}: bias must be a bool, got {bias!r}')
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
        self.primary_act = self._act(act_cfg)
        self.cheap_act = self._act(act_cfg)

    @staticmethod
    def _norm(norm_cfg, channels):
        return nn.Identity() if norm_cfg is None else build_norm_layer(norm_cfg, channels)[1]

    @staticmethod
    def _act(act_cfg):
        return nn.Identity() if act_cfg is None else build_activation_layer(act_cfg)

    def forward(self, x):
        check_conv_input(type(self).__name__, x, self.in_channels, self.kernel_size,
                         self.padding, self.dilation)
        intrinsic = self.primary_act(self.primary_norm(self.primary_conv(x)))  # [N, m, H', W']
        ghost = self.cheap_act(self.cheap_norm(self.cheap_conv(intrinsic)))  # [N, m(s-1), H', W']
        return torch.cat([intrinsic, ghost], dim=1)[:, :self.out_channels]  # [N, n, H', W']
