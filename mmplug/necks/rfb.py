"""Receptive Field Block (RFB).

Liu, Huang, Wang. "Receptive Field Block Net for Accurate and Fast Object
Detection", ECCV 2018. https://arxiv.org/abs/1711.07767

RFB (Sec. 3.3, Fig. 4a) models population receptive fields that grow with
eccentricity: Inception-style branches with different kernel sizes, each
followed by a 3x3 convolution whose dilation rate grows with the kernel size.
For ``branch_dilations = (r_0, ..., r_{B-1})`` (the paper: ``(1, 3, 5)``),
branch ``i`` is

1. a 1x1 bottleneck conv ``C_in -> C_mid`` that reduces the channels;
2. a ``k_i x k_i`` conv with ``k_i = 2i + 1`` (1, 3, 5), realised as ``i``
   stacked 3x3 convs (the paper replaces the 5x5 by two 3x3 for fewer
   parameters and more non-linear layers; ``k = 1`` is the bottleneck itself);
3. a 3x3 conv with dilation ``r_i``.

Its receptive field is ``k_i + 2 r_i`` (3, 9, 15 for the paper's block). With
the paper's ``r_i = k_i`` the nine dilated taps tile the ``3 k_i`` square
exactly, without holes (the tests check this by impulse response). The
branches are concatenated and fused by a 1x1 conv, with a shortcut in the
manner of ResNet and Inception-ResNet V2, which the paper cites (Fig. 4a)::

    y = act(shortcut(x) + s * BN(conv1x1(concat_i branch_i(x))))

with ``shortcut`` the identity when ``C_in == C_out``, else a 1x1 conv + BN.

Choices the paper does not state, and why:

* Every branch conv is conv-BN-ReLU (mmcv ``ConvModule``); the fusing 1x1 conv
  has BN but no activation: Inception-ResNet's "1x1 Conv (Linear)" before the
  sum, the ReLU coming after it as in Fig. 4.
* ``residual_scale`` ``s``: the paper cites Inception-ResNet V2 (Szegedy et
  al., arXiv 1602.07261) for its shortcut; that paper (Sec. 3.3) scales the
  residual branch by 0.1-0.3 before the addition to stabilise training. RFB's
  paper states no value; the default 0.1 is the lower end of that range and
  the value of the authors' public release. It multiplies the fused branches,
  not the shortcut.
* Branch width ``C_mid = rd_ratio * C_in`` with ``rd_ratio = 1/4`` (ResNet's
  bottleneck ratio): the paper gives no widths; the three branches
  concatenate to ``3/4 C_in``.
* Init: He normal (fan-out, ReLU) convs, BN weight 1 and bias 0
  (``ConvModule``'s init), re-applied by ``init_weights()``. At init the block is not the
  identity (ReLU after the sum), but with the identity shortcut and ``s = 0.1``
  it is close to ``ReLU(x)``.

Deviations from the paper: only the stride-1, shape-preserving RFB of Fig. 4a
is provided. RFB-s (Fig. 4b: four branches, 1x3/3x1 convs, used on conv4_3) and
the stride-2 RFB that RFB Net uses to downsample are not implemented. The
block is usable wherever a ``C_in -> C_out`` map-to-map block is, and the
``RFB`` neck applies one per level of a backbone or after FPN/YOLOV3Neck.
"""
import copy
import math

import torch
from mmcv.cnn import ConvModule, build_activation_layer
from mmengine.model import BaseModule, constant_init, kaiming_init
from torch import nn

from mmplug.necks.per_level import PerLevelNeck
from mmplug.registry import MODELS
from mmplug.utils.channels import reduced_channels
from mmplug.utils.validation import check_cfg, check_int


def _check_dilations(owner, branch_dilations):
    if not isinstance(branch_dilations, (tuple, list)) or len(branch_dilations) == 0 or any(
            isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in branch_dilations):
        raise ValueError(f'{owner}: branch_dilations must be a non-empty tuple of positive ints '
                         f'(one dilation per branch), got {branch_dilations!r}')
    return tuple(branch_dilations)


def _check_scale(owner, residual_scale):
    if isinstance(residual_scale, bool) or not isinstance(residual_scale, (int, float)) \
            or not math.isfinite(residual_scale) or not residual_scale > 0:
        raise ValueError(f'{owner}: residual_scale must be a positive finite number, got '
                         f'{residual_scale!r}')
    return float(residual_scale)


@MODELS.register_module()
class RFBBlock(BaseModule):
    """Receptive Field Block (the paper's Fig. 4a), ``C_in -> C_out``, same H and W.

    Args:
        in_channels (int): Channels of the input feature map.
        out_channels (int, optional): Channels of the output. Defaults to None
            (``in_channels``; the shortcut is then the identity, else a 1x1
            conv + norm).
        rd_ratio (float): Width ``C_mid`` of every branch as a fraction of
            ``in_channels``. Defaults to 1/4 (the paper gives no widths; see
            the module docstring).
        rd_channels (int, optional): Explicit branch width; overrides
            ``rd_ratio``. Defaults to None.
        rd_divisor (int): Round the width from ``rd_ratio`` to a multiple of
            this. Defaults to 1.
        branch_dilations (tuple[int]): Dilation ``r_i`` of the last 3x3 conv
            of each branch; branch ``i`` has kernel size ``2i + 1`` before it.
            Defaults to (1, 3, 5), the paper's RFB.
        residual_scale (float): ``s``, the factor on the fused branches
            before the shortcut is added (Inception-ResNet's residual
            scaling). Defaults to 0.1.
        conv_cfg (dict, optional): mmcv config of the convs. Defaults to None
            (``nn.Conv2d``).
        norm_cfg (dict, optional): mmcv config of the norm after every conv;
            None for none. Defaults to ``dict(type='BN')``.
        act_cfg (dict, optional): mmcv config of the activation after every
            branch conv and after the sum; None for a linear block. Defaults
            to ``dict(type='ReLU')``.
        init_cfg (dict | list[dict], optional): mmengine init config. The
            block's own init (He normal convs, norm 1/0) is re-applied by
            ``init_weights()``; a ``Pretrained`` init still wins. Defaults to
            None.

    Note:
        Receptive fields of the branches (kernel ``k_i``, dilation ``r_i``):
        ``k_i + 2 r_i``, i.e. 3, 9 and 15 pixels of the input map for the
        default block. Parameters at ``C_in = C_out = 256``: 321,152 (with
        BN). The output is non-negative (ReLU after the sum, as in the paper):
        after FPN this drops FPN's negative responses. Like any BN layer in
        training mode it needs more than one value per channel: a batch of one
        1x1 map raises in PyTorch's BN (use ``eval()``, GN or a larger batch).

    Example:
        >>> import torch
        >>> from mmplug.necks.rfb import RFBBlock
        >>> block = RFBBlock(256)
        >>> block(torch.randn(2, 256, 25, 38)).shape
        torch.Size([2, 256, 25, 38])
        >>> RFBBlock(512, 256)(torch.randn(1, 512, 19, 19)).shape
        torch.Size([1, 256, 19, 19])
    """

    _abbr_ = 'rfb'

    def __init__(self,
                 in_channels,
                 out_channels=None,
                 *,
                 rd_ratio=1 / 4,
                 rd_channels=None,
                 rd_divisor=1,
                 branch_dilations=(1, 3, 5),
                 residual_scale=0.1,
                 conv_cfg=None,
                 norm_cfg=dict(type='BN'),
                 act_cfg=dict(type='ReLU'),
                 init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        owner = 'RFBBlock'
        check_int(owner, 'in_channels', in_channels)
        if out_channels is None:
            out_channels = in_channels
        check_int(owner, 'out_channels', out_channels)
        mid = reduced_channels(owner, in_channels, rd_ratio, rd_channels, rd_divisor)
        self.branch_dilations = _check_dilations(owner, branch_dilations)
        self.residual_scale = _check_scale(owner, residual_scale)
        check_cfg(owner, 'conv_cfg', conv_cfg)
        check_cfg(owner, 'norm_cfg', norm_cfg)
        check_cfg(owner, 'act_cfg', act_cfg)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.rd_channels = mid
        common = dict(conv_cfg=conv_cfg, norm_cfg=norm_cfg)

        def conv(c_in, kernel_size, dilation=1):  # conv-norm-act, C_mid out, same H and W
            return ConvModule(c_in, mid, kernel_size, padding=dilation * (kernel_size // 2),
                              dilation=dilation, act_cfg=copy.deepcopy(act_cfg),
                              **copy.deepcopy(common))

        # Branch i: 1x1 bottleneck, i stacked 3x3 (a (2i+1)x(2i+1) kernel), 3x3 at rate r_i.
        self.branches = nn.ModuleList([
            nn.Sequential(conv(in_channels, 1), *[conv(mid, 3) for _ in range(i)],
                          conv(mid, 3, dilation=r))
            for i, r in enumerate(self.branch_dilations)
        ])
        # Inception-ResNet's linear 1x1 before the sum: norm, no activation.
        self.fuse = ConvModule(len(self.branch_dilations) * mid, out_channels, 1, act_cfg=None,
                               **copy.deepcopy(common))
        self.shortcut = nn.Identity() if in_channels == out_channels else ConvModule(
            in_channels, out_channels, 1, act_cfg=None, **copy.deepcopy(common))
        self.act = nn.Identity() if act_cfg is None else build_activation_layer(
            copy.deepcopy(act_cfg))

    @property
    def receptive_fields(self):
        """tuple[int]: Receptive field ``k_i + 2 r_i`` of each branch, in input pixels."""
        return tuple(2 * i + 1 + 2 * r for i, r in enumerate(self.branch_dilations))

    def init_weights(self):
        """He normal (fan-out, ReLU) convs with zero bias, norm weight 1 and bias 0.

        Runs after the host's ``init_cfg`` (mmengine calls children's
        ``init_weights`` last); a ``Pretrained`` init of the whole model still
        wins.
        """
        super().init_weights()
        for m in self.modules():
            if isinstance(m, nn.modules.conv._ConvNd):
                kaiming_init(m, mode='fan_out', nonlinearity='relu', bias=0)
            elif isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)):
                constant_init(m, 1, bias=0)

    def forward(self, x):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f'RFBBlock: expected a [N, {self.in_channels}, H, W] tensor, got '
                            f'{type(x).__name__}')
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f'RFBBlock: expected a [N, {self.in_channels}, H, W] input, got '
                             f'{list(x.shape)}')
        feats = torch.cat([branch(x) for branch in self.branches], dim=1)  # [N, B*C_mid, H, W]
        return self.act(self.shortcut(x) + self.residual_scale * self.fuse(feats))


@MODELS.register_module()
class RFB(PerLevelNeck):
    """RFB neck: one :class:`RFBBlock` per selected level, the others pass through.

    Takes and returns a tuple of feature maps, so it can follow a backbone,
    FPN or YOLOV3Neck (``neck=[dict(type='FPN', ...), dict(type='RFB', ...)]``
    in mmdet builds an ``nn.Sequential`` of the two). The paper's RFB Net puts
    RFB blocks on the higher-resolution SSD source maps; ``levels`` selects
    where they go here.

    Args:
        in_channels (list[int]): Channels of each input level.
        out_channels (int | list[int], optional): Output channels of the
            selected levels: one int for all, or one per level (an unselected
            level keeps its channels). Defaults to None (``in_channels``).
        levels (list[int], optional): Indices of the levels that get a block;
            the others pass through unchanged (the same tensor). Defaults to
            None (all levels).
        rd_ratio, rd_channels, rd_divisor, branch_dilations, residual_scale,
        conv_cfg, norm_cfg, act_cfg: Passed to every :class:`RFBBlock`; same
            defaults.
        init_cfg (dict | list[dict], optional): mmengine init config of the
            neck. Defaults to None.

    Note:
        Parameters over FPN's five 256-channel levels: 5 x 321,152 =
        1,605,760 (FPN itself: 3,344,384). On a level of stride 4 (e.g.
        FPN's P2) the 15-pixel branch spans 60 image pixels.

    Example:
        >>> import torch
        >>> from mmplug.necks.rfb import RFB
        >>> neck = RFB(in_channels=[512, 256, 128])  # after mmdet's YOLOV3Neck
        >>> feats = (torch.randn(1, 512, 10, 10), torch.randn(1, 256, 20, 20),
        ...          torch.randn(1, 128, 40, 40))
        >>> [tuple(o.shape) for o in neck(feats)]
        [(1, 512, 10, 10), (1, 256, 20, 20), (1, 128, 40, 40)]

        After FPN, blocks on the three finest levels only::

            neck=[dict(type='FPN', in_channels=[256, 512, 1024, 2048],
                       out_channels=256, num_outs=5),
                  dict(type='RFB', in_channels=[256] * 5, levels=[0, 1, 2])]
    """

    def __init__(self,
                 in_channels,
                 out_channels=None,
                 levels=None,
                 *,
                 rd_ratio=1 / 4,
                 rd_channels=None,
                 rd_divisor=1,
                 branch_dilations=(1, 3, 5),
                 residual_scale=0.1,
                 conv_cfg=None,
                 norm_cfg=dict(type='BN'),
                 act_cfg=dict(type='ReLU'),
                 init_cfg=None):
        # PerLevelNeck.__init__ builds the blocks, so their arguments are set
        # first; a plain dict attribute may be set before nn.Module.__init__.
        self.block_cfg = dict(rd_ratio=rd_ratio, rd_channels=rd_channels, rd_divisor=rd_divisor,
                              branch_dilations=branch_dilations, residual_scale=residual_scale,
                              conv_cfg=conv_cfg, norm_cfg=norm_cfg, act_cfg=act_cfg)
        super().__init__(in_channels, out_channels, levels, init_cfg=init_cfg)

    def _build_block(self, in_channels, out_channels):
        return RFBBlock(in_channels, out_channels, **copy.deepcopy(self.block_cfg))
