"""Mixed Pooling Module (MPM) of SPNet.

Hou, Zhang, Cheng, Feng. "Strip Pooling: Rethinking Spatial Pooling for Scene
Parsing", CVPR 2020. https://arxiv.org/abs/2003.13328

A residual bottleneck (Sec. 3.3, Fig. 3) with two sub-modules, each on its own
1x1 reduction of ``x`` to ``C' = C/4`` (``y = R_s(x)``, ``z = R_l(x)``)::

    s   = F_s(act(B_0(y) + sum_k Up(B_k(P_k(y)))))                  # Fig. 3a
    l   = F_l(act(Expand(C_h(mean_W z)) + Expand(C_v(mean_H z))))   # Fig. 3b
    out = act(S(x) + E([s, l]))

``B_0`` is a 3x3 conv at full resolution, ``P_k`` adaptive average pooling to
``k x k`` bins (20 and 12), ``B_k`` a 3x3 conv, ``Up`` bilinear upsampling;
``C_h`` / ``C_v`` are 3x1 / 1x3 convs on the ``H x 1`` row means and ``1 x W``
column means; ``F_s``, ``F_l`` 3x3 convs; ``E`` a 1x1 expansion, ``S`` the
identity. Unlike SPM (``StripPooling``) the result is a feature, not a gate.
SPNet (houqb/SPNet ``models/spnet.py``, ``SPHead``) reduces c5 from 2048 to
1024 channels with a 1x1 conv-BN-ReLU and stacks two MPMs on it. Init:
``ConvModule``'s (He normal fan-out convs, norm 1/0).

Deviations (choices the paper leaves open match the release):

* ``out_channels != in_channels`` (ours): ``E`` expands to ``out_channels`` and
  ``S`` is a 1x1 conv-BN projection.
* ``zero_init_residual=True`` (ours, off by default) zeroes ``E``'s norm, so the
  block starts as ``act(S(x))``.
"""

import torch
import torch.nn.functional as F
from mmcv.cnn import ConvModule
from mmengine.model import BaseModule
from torch import nn

from mmplug.layers import (
    activate,
    build_act,
    check_bool,
    check_cfg,
    check_input,
    check_int,
    check_int_pair,
    reduced_channels,
    strip_convs,
    strip_pool,
)
from mmplug.necks.per_level import PerLevelNeck
from mmplug.registry import MODELS


class _PyramidContext(nn.Module):
    """Short-range sub-module (Fig. 3a): full-resolution 3x3 path plus pooled paths."""

    def __init__(self, channels, pool_sizes, layer, act_cfg, align_corners):
        super().__init__()
        self.align_corners = align_corners
        self.local = ConvModule(channels, channels, 3, padding=1, act_cfg=None, **layer)
        self.pooled = nn.ModuleList(
            nn.Sequential(
                nn.AdaptiveAvgPool2d(size),
                ConvModule(channels, channels, 3, padding=1, act_cfg=None, **layer))
            for size in pool_sizes)
        self.act = build_act(act_cfg)
        self.fuse = ConvModule(channels, channels, 3, padding=1, act_cfg=act_cfg, **layer)

    def forward(self, y):
        size = y.shape[2:]
        out = self.local(y)  # [N, C', H, W]
        for branch in self.pooled:
            out = out + F.interpolate(branch(y), size=size, mode='bilinear',
                                      align_corners=self.align_corners)
        return self.fuse(self.act(out))


class _StripContext(nn.Module):
    """Long-range sub-module (Fig. 3b): row and column strip pooling, summed."""

    def __init__(self, channels, layer, act_cfg):
        super().__init__()
        self.conv_h, self.conv_w = strip_convs(channels, **layer)
        self.act = build_act(act_cfg)
        self.fuse = ConvModule(channels, channels, 3, padding=1, act_cfg=act_cfg, **layer)

    def forward(self, z):
        return self.fuse(self.act(strip_pool(z, self.conv_h, self.conv_w)))  # [N, C', H, W]


@MODELS.register_module()
class MPMBlock(BaseModule):
    """One Mixed Pooling Module (MPM) of SPNet. Arguments after ``out_channels`` are keyword-only.

    Args:
        in_channels (int): Channels of the input feature map.
        out_channels (int, optional): Output channels (else a projection
            shortcut). Defaults to None (``in_channels``).
        rd_ratio (float): ``C'`` as a fraction of ``in_channels``, rounded down,
            at least 1. Defaults to 1/4 (the paper).
        rd_channels (int, optional): Explicit ``C'``. Defaults to None.
        rd_divisor (int): Round ``C'`` to a multiple of this. Defaults to 1.
        pool_sizes (tuple): Bin grids, each ``k`` or ``(k_h, k_w)``. Defaults
            to ``(20, 12)`` (the paper).
        conv_cfg (dict, optional): Config of the convs. Defaults to None.
        norm_cfg (dict, optional): Norm after every conv. Defaults to
            ``dict(type='BN')``.
        act_cfg (dict, optional): Activation; None for none. Defaults to
            ``dict(type='ReLU')``.
        align_corners (bool): Of the bilinear upsampling. Defaults to True
            (SPNet's release; False changes the output by about 12 %).
        zero_init_residual (bool): Zero-init ``E``'s norm. Defaults to False.
        init_cfg (dict | list[dict], optional): mmengine init config. Defaults
            to None.

    Note:
        4,397,568 parameters at ``in_channels = 1024`` (SPNet's), 17,576,960 at
        2048. In training mode each BN needs more than one value per channel.

    Example:
        >>> import torch
        >>> from mmplug.necks.mixed_pooling import MPMBlock
        >>> mpm = MPMBlock(in_channels=64)
        >>> mpm(torch.randn(2, 64, 33, 65)).shape
        torch.Size([2, 64, 33, 65])
        >>> mpm.rd_channels  # C' = 64 / 4
        16
        >>> MPMBlock(64, out_channels=32)(torch.randn(2, 64, 9, 7)).shape
        torch.Size([2, 32, 9, 7])
        >>> MPMBlock(64, rd_ratio=1 / 8).rd_channels, MPMBlock(3).rd_channels
        (8, 1)
    """

    _abbr_ = 'mpm'

    def __init__(self,
                 in_channels,
                 out_channels=None,
                 *,
                 rd_ratio=1 / 4,
                 rd_channels=None,
                 rd_divisor=1,
                 pool_sizes=(20, 12),
                 conv_cfg=None,
                 norm_cfg=dict(type='BN'),
                 act_cfg=dict(type='ReLU'),
                 align_corners=True,
                 zero_init_residual=False,
                 init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        owner = 'MPMBlock'
        check_int(owner, 'in_channels', in_channels)
        out_channels = in_channels if out_channels is None else check_int(
            owner, 'out_channels', out_channels)
        mid = reduced_channels(owner, in_channels, rd_ratio, rd_channels, rd_divisor)
        if not isinstance(pool_sizes, (list, tuple)) or len(pool_sizes) == 0:
            raise ValueError(f'{owner}: pool_sizes must be a non-empty list of bin sizes (ints '
                             f'or (h, w) pairs), got {pool_sizes!r}')
        pool_sizes = tuple(
            check_int_pair(owner, f'pool_sizes[{i}]', s) for i, s in enumerate(pool_sizes))
        for name, value in (('align_corners', align_corners),
                            ('zero_init_residual', zero_init_residual)):
            check_bool(owner, name, value)
        for name, cfg in (('conv_cfg', conv_cfg), ('norm_cfg', norm_cfg), ('act_cfg', act_cfg)):
            check_cfg(owner, name, cfg)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.rd_channels = mid
        self.pool_sizes = pool_sizes
        self.align_corners = align_corners
        self.zero_init_residual = zero_init_residual
        layer = dict(conv_cfg=conv_cfg, norm_cfg=norm_cfg)
        self.reduce_short = ConvModule(in_channels, mid, 1, act_cfg=act_cfg, **layer)
        self.reduce_long = ConvModule(in_channels, mid, 1, act_cfg=act_cfg, **layer)
        self.short_range = _PyramidContext(mid, pool_sizes, layer, act_cfg, align_corners)
        self.long_range = _StripContext(mid, layer, act_cfg)
        self.expand = ConvModule(2 * mid, out_channels, 1, act_cfg=None, **layer)
        self.shortcut = nn.Identity() if out_channels == in_channels else ConvModule(
            in_channels, out_channels, 1, act_cfg=None, **layer)
        self.act = build_act(act_cfg)
        self._reset()

    def _reset(self):
        for m in self.modules():
            if isinstance(m, ConvModule):
                m.init_weights()  # He normal (fan-out), bias 0; norm weight 1, bias 0
        if self.zero_init_residual:
            last = self.expand.norm if self.expand.with_norm else self.expand.conv
            nn.init.zeros_(last.weight)
            if last.bias is not None:
                nn.init.zeros_(last.bias)

    def init_weights(self):
        """Re-apply the default init after the host's ``init_cfg``, unless given one."""
        super().init_weights()
        if self.init_cfg is None:
            self._reset()

    def forward(self, x):
        check_input('MPMBlock', x, self.in_channels)
        short = self.short_range(self.reduce_short(x))  # [N, C', H, W]
        long = self.long_range(self.reduce_long(x))  # [N, C', H, W]
        out = self.expand(torch.cat([short, long], dim=1))  # [N, 2C', H, W] -> [N, C_out, H, W]
        return activate(self.act, self.shortcut(x) + out)


@MODELS.register_module()
class MPM(PerLevelNeck):
    """Mixed Pooling Modules as a neck: ``num_blocks`` MPMs per selected level.

    Args:
        in_channels (list[int]): Channels of each input level.
        out_channels (int | list[int], optional): Output channels of the
            selected levels (the first block maps ``in -> out``). Defaults to
            None (``in_channels``).
        levels (list[int], optional): Levels to transform. Defaults to None (all).
        num_blocks (int): MPMs per level (keys ``blocks.<level>.<k>.*``).
            Keyword-only. Defaults to 1; SPNet stacks 2.
        init_cfg (dict | list[dict], optional): mmengine init config.
            Keyword-only. Defaults to None.
        **block_kwargs: Passed to every :class:`MPMBlock`.

    Example:
        >>> import torch
        >>> from mmplug.necks.mixed_pooling import MPM
        >>> neck = MPM(in_channels=[16, 32, 64], levels=[2], num_blocks=2)
        >>> feats = (torch.randn(1, 16, 32, 32), torch.randn(1, 32, 16, 16),
        ...          torch.randn(1, 64, 8, 8))
        >>> [tuple(f.shape) for f in neck.eval()(feats)]
        [(1, 16, 32, 32), (1, 32, 16, 16), (1, 64, 8, 8)]

        SPNet in mmseg: SPMs in the backbone, SPHead's 1x1 conv-BN-ReLU from 2048
        to 1024 channels, two MPMs (4,397,568 parameters each; 17,576,960 at
        2048), a 3x3 conv and the classifier::

            model = dict(
                backbone=dict(
                    type='ResNetV1c', depth=50, strides=(1, 2, 1, 1),
                    dilations=(1, 1, 2, 4),
                    plugins=[dict(cfg=dict(type='StripPooling', identity_init=True),
                                  stages=(False, False, False, True),
                                  position='after_conv2')]),
                neck=[dict(type='PerLevelNeck', in_channels=[256, 512, 1024, 2048],
                           out_channels=1024, levels=[3],
                           block=dict(type='ConvModule', kernel_size=1,
                                      norm_cfg=dict(type='BN'))),
                      dict(type='MPM', in_channels=[256, 512, 1024, 1024], levels=[3],
                           num_blocks=2)],
                decode_head=dict(type='FCNHead', in_channels=1024, in_index=3,
                                 channels=512, num_convs=1, concat_input=False))
    """

    def __init__(self, in_channels, out_channels=None, levels=None, *, num_blocks=1,
                 init_cfg=None, **block_kwargs):
        super().__init__(in_channels, out_channels, levels,
                         block=dict(type=MPMBlock, **block_kwargs), num_blocks=num_blocks,
                         init_cfg=init_cfg)
