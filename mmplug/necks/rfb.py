"""Receptive Field Block (RFB).

Liu, Huang, Wang. "Receptive Field Block Net for Accurate and Fast Object
Detection", ECCV 2018. https://arxiv.org/abs/1711.07767

Inception-style branches whose kernel size ``k_i`` grows with the dilation rate
``r_i`` of the 3x3 conv that ends each branch (Sec. 3.3, Fig. 4a), receptive
field ``k_i + 2 r_i``; a linear 1x1 conv fuses the concatenated branches::

    y = ReLU(shortcut(x) + s * BN(conv1x1(concat_i branch_i(x))))

``variant='release'`` (default) is the authors' ``BasicRFB`` (RFBNet,
``models/RFB_Net_vgg.py``). With ``m = C/8``: branch 0 is a 1x1 ``C -> 2m``;
branch 1 a 1x1 ``C -> m`` and a 3x3 ``m -> 2m``; branch 2 a 1x1 ``C -> m``, a
3x3 ``m -> 3m/2`` and a 3x3 ``-> 2m``; each then a 3x3 ``2m -> 2m`` at rates
(2, 3, 5) (the release's ``visual=2``) with BN and no activation. The shortcut
is always a 1x1 conv + BN and ``s = 1.0``: every RFB the release builds passes
``scale=1.0`` (its class default 0.1 is never used).

``variant='paper'`` is Fig. 4a read from the text: branch ``i`` is a 1x1
``C -> C/4``, ``i`` stacked 3x3 (the 5x5 as two 3x3) and a 3x3 at rate ``r_i``
(1, 3, 5), conv-BN-ReLU everywhere; identity shortcut when ``C_in == C_out``;
``s = 0.1`` (Inception-ResNet V2's 0.1-0.3; the paper gives no value).
Checkpoints of this form (mmplug < 0.2) load with ``variant='paper',
residual_scale=0.1``; loading them into another variant raises a ``ValueError``
that says so.

Init: He normal (fan-out, ReLU) convs, norm weight 1 and bias 0.

Deviations (``'release'``) from the authors' code:

* BN momentum is mmcv's default 0.1 where the release uses 0.01; set
  ``norm_cfg=dict(type='BN', momentum=0.01)`` to match.
* Only the stride-1 RFB: no RFB-s (Fig. 4b, on conv4_3) and no stride-2 RFB.
"""
import copy
import math

import torch
from mmcv.cnn import ConvModule
from mmengine.model import BaseModule, constant_init, kaiming_init
from torch import nn

from mmplug.layers import (
    activate,
    build_act,
    check_cfg,
    check_input,
    check_int,
    check_int_tuple,
    check_variant_keys,
    reduced_channels,
)
from mmplug.necks.per_level import PerLevelNeck
from mmplug.registry import MODELS


def _check_scale(owner, residual_scale):
    if isinstance(residual_scale, bool) or not isinstance(residual_scale, (int, float)) \
            or not math.isfinite(residual_scale) or not residual_scale > 0:
        raise ValueError(f'{owner}: residual_scale must be a positive finite number, got '
                         f'{residual_scale!r}')
    return float(residual_scale)


@MODELS.register_module()
class RFBBlock(BaseModule):
    """Receptive Field Block, ``C_in -> C_out``, same H and W.

    Args:
        in_channels (int): Channels of the input feature map.
        out_channels (int, optional): Channels of the output. Defaults to None
            (``in_channels``).
        variant (str): ``'release'`` or ``'paper'`` (module docstring).
            Defaults to ``'release'``.
        rd_ratio (float, optional): Branch width ``m`` as a fraction of
            ``in_channels``. Defaults to None (1/8 release, 1/4 paper).
        rd_channels (int, optional): Explicit ``m``. Defaults to None.
        rd_divisor (int): Round ``m`` to a multiple of this. Defaults to 1.
        branch_dilations (tuple[int], optional): Rate of each branch's last 3x3
            conv. Defaults to None ((2, 3, 5) release, (1, 3, 5) paper).
        residual_scale (float, optional): ``s``. Defaults to None (1.0 release,
            0.1 paper).
        conv_cfg (dict, optional): Config of the convs. Defaults to None.
        norm_cfg (dict, optional): Norm after every conv. Defaults to
            ``dict(type='BN')``.
        act_cfg (dict, optional): Activation of the branches and after the sum;
            None for a linear block. Defaults to ``dict(type='ReLU')``.
        init_cfg (dict | list[dict], optional): mmengine init config; the
            block's init is re-applied by ``init_weights()``. Defaults to None.

    Note:
        Receptive fields: 5, 9, 15 input pixels (release), 3, 9, 15 (paper).
        Parameters at ``C_in = C_out = 256``: 319,968 (release), 321,152
        (paper). The output is non-negative (ReLU after the sum).

    Example:
        >>> import torch
        >>> from mmplug.necks.rfb import RFBBlock
        >>> block = RFBBlock(256)
        >>> block(torch.randn(2, 256, 25, 38)).shape
        torch.Size([2, 256, 25, 38])
        >>> RFBBlock(512, 256)(torch.randn(1, 512, 19, 19)).shape
        torch.Size([1, 256, 19, 19])
        >>> RFBBlock(256, variant='paper').residual_scale
        0.1
    """

    _abbr_ = 'rfb'
    #: Defaults that differ between the variants (module docstring).
    VARIANTS = {
        'release': dict(rd_ratio=1 / 8, branch_dilations=(2, 3, 5), residual_scale=1.0),
        'paper': dict(rd_ratio=1 / 4, branch_dilations=(1, 3, 5), residual_scale=0.1),
    }

    def __init__(self,
                 in_channels,
                 out_channels=None,
                 *,
                 variant='release',
                 rd_ratio=None,
                 rd_channels=None,
                 rd_divisor=1,
                 branch_dilations=None,
                 residual_scale=None,
                 conv_cfg=None,
                 norm_cfg=dict(type='BN'),
                 act_cfg=dict(type='ReLU'),
                 init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        owner = 'RFBBlock'
        if variant not in self.VARIANTS:
            raise ValueError(f'{owner}: variant must be one of {sorted(self.VARIANTS)}, got '
                             f'{variant!r}')
        defaults = self.VARIANTS[variant]
        rd_ratio = defaults['rd_ratio'] if rd_ratio is None else rd_ratio
        branch_dilations = defaults['branch_dilations'] if branch_dilations is None \
            else branch_dilations
        residual_scale = defaults['residual_scale'] if residual_scale is None else residual_scale
        check_int(owner, 'in_channels', in_channels)
        if out_channels is None:
            out_channels = in_channels
        check_int(owner, 'out_channels', out_channels)
        mid = reduced_channels(owner, in_channels, rd_ratio, rd_channels, rd_divisor)
        self.branch_dilations = check_int_tuple(owner, 'branch_dilations', branch_dilations,
                                                'one dilation per branch')
        if variant == 'release' and len(self.branch_dilations) != 3:
            raise ValueError(f"{owner}: variant='release' has three branches, so "
                             f'branch_dilations needs 3 rates, got {branch_dilations!r}')
        self.residual_scale = _check_scale(owner, residual_scale)
        check_cfg(owner, 'conv_cfg', conv_cfg)
        check_cfg(owner, 'norm_cfg', norm_cfg)
        check_cfg(owner, 'act_cfg', act_cfg)
        self.variant = variant
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.rd_channels = mid
        common = dict(conv_cfg=conv_cfg, norm_cfg=norm_cfg)

        def conv(c_in, c_out, kernel_size, dilation=1, act=True):  # conv-norm(-act), same H, W
            return ConvModule(c_in, c_out, kernel_size, padding=dilation * (kernel_size // 2),
                              dilation=dilation, act_cfg=copy.deepcopy(act_cfg) if act else None,
                              **copy.deepcopy(common))

        if variant == 'release':
            # The authors' BasicRFB: widths 2m (branch 0's bottleneck), m -> 2m, and
            # m -> 3m/2 -> 2m; the dilated conv has no activation.
            wide, half = 2 * mid, max(mid // 2 * 3, 1)
            stems = [[conv(in_channels, wide, 1)],
                     [conv(in_channels, mid, 1), conv(mid, wide, 3)],
                     [conv(in_channels, mid, 1), conv(mid, half, 3), conv(half, wide, 3)]]
            self.branches = nn.ModuleList([
                nn.Sequential(*stem, conv(wide, wide, 3, dilation=r, act=False))
                for stem, r in zip(stems, self.branch_dilations)
            ])
            fused = 3 * wide
        else:
            # Branch i: 1x1 bottleneck, i stacked 3x3 (a (2i+1)x(2i+1) kernel), 3x3 at rate r_i.
            self.branches = nn.ModuleList([
                nn.Sequential(conv(in_channels, mid, 1), *[conv(mid, mid, 3) for _ in range(i)],
                              conv(mid, mid, 3, dilation=r))
                for i, r in enumerate(self.branch_dilations)
            ])
            fused = len(self.branch_dilations) * mid
        # Inception-ResNet's linear 1x1 before the sum: norm, no activation.
        self.fuse = conv(fused, out_channels, 1, act=False)
        self.shortcut = nn.Identity() if variant == 'paper' and in_channels == out_channels \
            else conv(in_channels, out_channels, 1, act=False)
        self.act = build_act(act_cfg)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        check_variant_keys(self, state_dict, prefix,
                           "RFBBlock before mmplug 0.2 was variant='paper', residual_scale=0.1")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def receptive_fields(self):
        """tuple[int]: Receptive field ``k_i + 2 r_i`` of each branch, in input pixels."""
        return tuple(2 * i + 1 + 2 * r for i, r in enumerate(self.branch_dilations))

    def init_weights(self):
        """He normal (fan-out, ReLU) convs, norm 1/0, after the host's ``init_cfg``."""
        super().init_weights()
        for m in self.modules():
            if isinstance(m, nn.modules.conv._ConvNd):
                kaiming_init(m, mode='fan_out', nonlinearity='relu', bias=0)
            elif isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)):
                constant_init(m, 1, bias=0)

    def forward(self, x):
        check_input('RFBBlock', x, self.in_channels)
        feats = torch.cat([branch(x) for branch in self.branches], dim=1)  # [N, B*C_mid, H, W]
        return activate(self.act, self.shortcut(x) + self.residual_scale * self.fuse(feats))


@MODELS.register_module()
class RFB(PerLevelNeck):
    """RFB neck: one :class:`RFBBlock` per selected level, the others pass through.

    After a backbone, FPN or YOLOV3Neck; RFB Net puts its blocks on the
    higher-resolution SSD source maps, ``levels`` selects them here. Over FPN's five
    256-channel levels: 1,599,840 parameters (release), 1,605,760 (paper); FPN has
    3,344,384.

    Args:
        in_channels (list[int]): Channels of each input level.
        out_channels (int | list[int], optional): Output channels of the
            selected levels. Defaults to None (``in_channels``).
        levels (list[int], optional): Levels that get a block. Defaults to None
            (all).
        init_cfg (dict | list[dict], optional): mmengine init config. Defaults
            to None.
        **block_kwargs: Passed to every :class:`RFBBlock`.

    Example:
        >>> import torch
        >>> from mmplug.necks.rfb import RFB
        >>> neck = RFB(in_channels=[512, 256, 128])  # after mmdet's YOLOV3Neck
        >>> feats = (torch.randn(1, 512, 10, 10), torch.randn(1, 256, 20, 20),
        ...          torch.randn(1, 128, 40, 40))
        >>> [tuple(o.shape) for o in neck(feats)]
        [(1, 512, 10, 10), (1, 256, 20, 20), (1, 128, 40, 40)]

        After FPN, on the three finest levels::

            neck=[dict(type='FPN', ...), dict(type='RFB', in_channels=[256] * 5, levels=[0, 1, 2])]
    """

    def __init__(self, in_channels, out_channels=None, levels=None, *, init_cfg=None,
                 **block_kwargs):
        super().__init__(in_channels, out_channels, levels,
                         block=dict(type=RFBBlock, **block_kwargs), init_cfg=init_cfg)
