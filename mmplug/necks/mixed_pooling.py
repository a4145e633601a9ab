"""Mixed Pooling Module (MPM) of SPNet.

Hou, Zhang, Cheng, Feng. "Strip Pooling: Rethinking Spatial Pooling for Scene
Parsing", CVPR 2020. https://arxiv.org/abs/2003.13328

The paper's MPM (Sec. 3.3, Fig. 3) is a bottleneck residual block whose core
mixes two kinds of pooling. On an input ``x`` (``C x H x W``), with
``C' = rd_ratio * C`` the reduced width (the paper: ``C / 4``):

* short-range dependencies, a lightweight pyramid pooling sub-module (Fig. 3a)
  on ``y = R_s(x)`` (a 1x1 reduction to ``C'``)::

      s = F_s(act(B_0(y) + sum_k Up(B_k(P_k(y)))))

  ``B_0`` is a 3x3 conv at full resolution (it preserves the original spatial
  information), ``P_k`` adaptive average pooling to ``k x k`` bins (the paper:
  20x20 and 12x12), ``B_k`` a 3x3 conv on the pooled map, ``Up`` bilinear
  upsampling back to ``H x W``; the three paths are summed and fused by a 3x3
  conv ``F_s``;
* long-range dependencies, strip pooling (Fig. 3b) on ``z = R_l(x)`` (another
  1x1 reduction to ``C'``)::

      l = F_l(act(Expand(C_h(mean_W z)) + Expand(C_v(mean_H z))))

  ``mean_W z`` is the ``H x 1`` map of row means and ``mean_H z`` the ``1 x W``
  map of column means, ``C_h`` / ``C_v`` 1-D convolutions of kernel 3 along the
  strip (a ``3 x 1`` and a ``1 x 3`` conv), ``Expand`` broadcasting back to
  ``H x W``; the sum is fused by a 3x3 conv ``F_l``. Unlike SPM (the same
  paper's ``StripPooling`` plugin) the result is a feature, not a gate;
* ``out = act(S(x) + E([s, l]))``: the two outputs are concatenated, a 1x1
  conv ``E`` expands them back (as in a ResNet bottleneck) and the input is
  added: the paper nests both sub-modules into a residual bottleneck block.

In the paper every conv other than the 1x1 reductions and the expansion has
kernel 3x3 (or 3 for the 1-D ones). SPNet stacks two MPMs on top of its
backbone (output stride 8) before the classifier; in its backbone an SPM gates
the 3x3 conv of the bottlenecks.

Choices the paper leaves open (ours, documented):

* Each 1x1 reduction and each 3x3 conv is an mmcv ``ConvModule`` with BN. The
  branch convs (``B_0``, ``B_k``, ``C_h``, ``C_v``) have BN and no activation,
  their sum is activated (as in SPM: normalised 1-D convs, expand, sum,
  ReLU), and the fusion convs ``F_s``, ``F_l`` are conv-BN-ReLU; the
  reductions are conv-BN-ReLU and the expansion ``E`` conv-BN without
  activation, with ``act`` (ReLU) after the residual sum, as in a ResNet
  bottleneck.
* ``C'`` in the package's reduction vocabulary (as ``RFBBlock``):
  ``rd_ratio = 1/4`` gives the paper's ``C / 4``, rounded down and at least 1
  (``mmplug.utils.channels.reduced_channels``; e.g. 1 for ``C = 3``);
  ``rd_channels`` sets ``C'`` directly and ``rd_divisor`` rounds the width
  from ``rd_ratio`` to a multiple of it. The module stores it as
  ``rd_channels``.
* Pooling is average pooling (as in PSPNet's pyramid); bins are adaptive, so
  the module runs at any input size. On a map smaller than a bin grid (e.g. a
  5x5 map and 20x20 bins) adaptive pooling repeats pixels, the pooled branch
  then convolves an upsampled copy and is resampled bilinearly to ``H x W``:
  it still runs and stays finite, but it no longer pools (the 12x12 and 20x20
  branches act like extra, finer 3x3 convs). At SPNet's setting (mmseg R50-D8
  at 512x1024 crops, a 64x128 c5 map) the bins cover about 3x6 and 5x11
  pixels.
* ``out_channels != in_channels`` (ours): ``E`` expands to ``out_channels`` and
  the shortcut becomes a 1x1 conv-BN projection ``S``, as ResNet's projection
  shortcut; otherwise ``S`` is the identity (the paper).
* Init: the paper states none; by default mmcv ``ConvModule``'s (He normal
  fan-out convs, norm weight 1, bias 0). ``zero_init_residual=True`` (ours,
  off by default): the BN of ``E`` starts at weight 0, so with an identity
  shortcut the block outputs ``act(x)``, which is ``x`` for the non-negative
  output of a ReLU backbone.

The ``MPM`` neck runs ``num_blocks`` MPMs in sequence on each selected level of
a backbone's (or another neck's) tuple of features and passes the others
through; ``num_blocks=2`` is SPNet's setting.
"""
import copy
import inspect

import torch
import torch.nn.functional as F
from mmcv.cnn import ConvModule, build_activation_layer
from mmengine.model import BaseModule, Sequential
from torch import nn

from mmplug.necks.per_level import PerLevelNeck
from mmplug.plugins.strip_pooling import strip_convs, strip_pool
from mmplug.registry import MODELS
from mmplug.utils.channels import reduced_channels
from mmplug.utils.validation import check_cfg, check_int, check_int_pair


def _act(act_cfg):
    return nn.Identity() if act_cfg is None else build_activation_layer(dict(act_cfg))


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
        self.act = _act(act_cfg)
        self.fuse = ConvModule(channels, channels, 3, padding=1, act_cfg=act_cfg, **layer)

    def forward(self, y):
        size = y.shape[2:]
        out = self.local(y)  # [N, C', H, W]
        for branch in self.pooled:
            # [N, C', k, k] -> [N, C', H, W]
            out = out + F.interpolate(branch(y), size=size, mode='bilinear',
                                      align_corners=self.align_corners)
        return self.fuse(self.act(out))


class _StripContext(nn.Module):
    """Long-range sub-module (Fig. 3b): row and column strip pooling, summed."""

    def __init__(self, channels, layer, act_cfg):
        super().__init__()
        self.conv_h, self.conv_w = strip_convs(channels, **layer)
        self.act = _act(act_cfg)
        self.fuse = ConvModule(channels, channels, 3, padding=1, act_cfg=act_cfg, **layer)

    def forward(self, z):
        return self.fuse(self.act(strip_pool(z, self.conv_h, self.conv_w)))  # [N, C', H, W]


@MODELS.register_module()
class MPMBlock(BaseModule):
    """One Mixed Pooling Module (MPM) of SPNet.

    Every argument after ``out_channels`` is keyword-only.

    Args:
        in_channels (int): Channels of the input feature map.
        out_channels (int, optional): Output channels. If it differs from
            ``in_channels`` the shortcut is a 1x1 conv-norm projection.
            Defaults to None (``in_channels``, the paper's identity shortcut).
        rd_ratio (float): Width ``C'`` of both sub-modules (after each 1x1
            reduction) as a fraction of ``in_channels``, rounded down and at
            least 1. Defaults to 1/4 (the paper's ``C / 4``).
        rd_channels (int, optional): Explicit width ``C'``; overrides
            ``rd_ratio``. Defaults to None.
        rd_divisor (int): Round the width from ``rd_ratio`` to a multiple of
            this. Defaults to 1 (no rounding).
        pool_sizes (tuple): Bin grids of the pooled paths of the short-range
            sub-module, each an int ``k`` (``k x k`` bins) or a pair
            ``(k_h, k_w)``. Defaults to ``(20, 12)`` (the paper).
        conv_cfg (dict, optional): mmcv config of the convolutions. Defaults
            to None (``nn.Conv2d``).
        norm_cfg (dict, optional): mmcv config of the norm after every conv.
            Defaults to ``dict(type='BN')``.
        act_cfg (dict, optional): mmcv config of the activations (after the
            reductions, the branch sums, the fusion convs and the residual
            sum); None for none. Defaults to ``dict(type='ReLU')``.
        align_corners (bool): ``align_corners`` of the bilinear upsampling of
            the pooled paths. Defaults to False (mmseg's default).
        zero_init_residual (bool): Zero-initialise the norm (or, without a
            norm, the conv) of the 1x1 expansion, so the block starts as
            ``act(S(x))``. Defaults to False (the paper's init).
        init_cfg (dict | list[dict], optional): mmengine init config. Without
            one, ``init_weights()`` applies the default init (He normal
            fan-out convs, norm weight 1 and bias 0, and
            ``zero_init_residual``) after the host's init. Defaults to None.

    Note:
        Not a plugin position of its own in the paper: SPNet stacks two MPMs
        on the backbone output (use the ``MPM`` neck). With ``out_channels``
        left at ``in_channels`` it keeps the shape, so it also works as an
        mmdet/mmseg ResNet plugin (``position='after_conv3'``). Parameters at
        ``in_channels = 2048`` (``C' = 512``): 17,576,960. With BN, a
        training-mode batch needs more than one value per channel in every
        norm (``N * H * W > 1``, and ``N * H > 1`` and ``N * W > 1`` for the
        strip convs); eval mode runs at any size, including batch 1 on a 1x1
        map. The bins are adaptive, so there is no fixed input size; adaptive
        average pooling to a size that does not divide the input does not
        export to ONNX with every opset.

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
        >>> MPMBlock(64, rd_ratio=1 / 8).rd_channels, MPMBlock(64, rd_channels=24).rd_channels
        (8, 24)
        >>> MPMBlock(3).rd_channels  # rounded down, at least 1
        1
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
                 align_corners=False,
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
            if not isinstance(value, bool):
                raise ValueError(f'{owner}: {name} must be a bool, got {value!r}')
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
        self.act = _act(act_cfg)
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
        if not isinstance(x, torch.Tensor):
            raise TypeError(f'MPMBlock: expected a [N, {self.in_channels}, H, W] tensor, got '
                            f'{type(x).__name__}')
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f'MPMBlock: expected a [N, {self.in_channels}, H, W] input, got '
                             f'{list(x.shape)}')
        short = self.short_range(self.reduce_short(x))  # [N, C', H, W]
        long = self.long_range(self.reduce_long(x))  # [N, C', H, W]
        out = self.expand(torch.cat([short, long], dim=1))  # [N, 2C', H, W] -> [N, C_out, H, W]
        return self.act(self.shortcut(x) + out)


# What MPM passes through to every block: MPMBlock's keyword-only arguments (the
# neck sets in/out channels per level and has its own init_cfg).
_BLOCK_KWARGS = tuple(
    name for name, p in inspect.signature(MPMBlock.__init__).parameters.items()
    if p.kind is p.KEYWORD_ONLY and name != 'init_cfg')


@MODELS.register_module()
class MPM(PerLevelNeck):
    """Mixed Pooling Modules as a neck: ``num_blocks`` MPMs per selected level.

    Takes the tuple of features of a backbone (or of another neck in a
    ``neck=[...]`` chain) and returns a tuple of the same length; the selected
    levels go through their own stack of :class:`MPMBlock`, the others pass
    through unchanged.

    Args:
        in_channels (list[int]): Channels of each input level.
        out_channels (int | list[int], optional): Output channels of the
            selected levels (one int, or one per level; an unselected level
            keeps its channels). The first block of a level maps
            ``in -> out`` (with a projection shortcut if they differ), the
            others ``out -> out``. Defaults to None (``in_channels``).
        levels (list[int], optional): Indices of the levels to transform.
            Defaults to None (all levels).
        num_blocks (int): MPMs stacked per level. Keyword-only. Defaults to 1;
            SPNet stacks 2.
        init_cfg (dict | list[dict], optional): mmengine init config.
            Keyword-only. Defaults to None.
        **block_kwargs: Passed to every :class:`MPMBlock`, same defaults:
            ``rd_ratio``, ``rd_channels``, ``rd_divisor``, ``pool_sizes``,
            ``conv_cfg``, ``norm_cfg``, ``act_cfg``, ``align_corners``,
            ``zero_init_residual``. Any other name raises a ``TypeError``
            that names it (before any block is built).

    Note:
        Each level's stack is an mmengine ``Sequential`` under
        ``blocks.<level>`` (checkpoint keys ``blocks.3.0.*``, ``blocks.3.1.*``
        whatever ``num_blocks``). Errors on a wrong input tuple name the level
        and the channels it was built for.

    Example:
        >>> import torch
        >>> from mmplug.necks.mixed_pooling import MPM
        >>> neck = MPM(in_channels=[16, 32, 64], levels=[2], num_blocks=2)
        >>> feats = (torch.randn(1, 16, 32, 32), torch.randn(1, 32, 16, 16),
        ...          torch.randn(1, 64, 8, 8))
        >>> [tuple(f.shape) for f in neck.eval()(feats)]
        [(1, 16, 32, 32), (1, 32, 16, 16), (1, 64, 8, 8)]
        >>> MPM([16, 64], levels=[1], rd_ratio=1 / 8).blocks['1'][0].rd_channels
        8

        SPNet in mmseg (SPM in the backbone, two MPMs on c5, a 3x3 conv and
        the classifier)::

            model = dict(
                backbone=dict(
                    type='ResNetV1c', depth=50, strides=(1, 2, 1, 1),
                    dilations=(1, 1, 2, 4),
                    plugins=[dict(cfg=dict(type='StripPooling', identity_init=True),
                                  stages=(False, False, False, True),
                                  position='after_conv2')]),
                neck=dict(type='MPM', in_channels=[256, 512, 1024, 2048], levels=[3],
                          num_blocks=2),
                decode_head=dict(type='FCNHead', in_channels=2048, in_index=3,
                                 channels=512, num_convs=1, concat_input=False))
    """

    def __init__(self, in_channels, out_channels=None, levels=None, *, num_blocks=1,
                 init_cfg=None, **block_kwargs):
        check_int('MPM', 'num_blocks', num_blocks)
        unknown = sorted(set(block_kwargs) - set(_BLOCK_KWARGS))
        if unknown:
            raise TypeError(f'MPM: unexpected keyword argument(s) {", ".join(map(repr, unknown))}; '
                            f'the block arguments (passed to every MPMBlock) are '
                            f'{", ".join(_BLOCK_KWARGS)}')
        # Plain (non-Module) attributes may be set before Module.__init__; the base
        # class's __init__ calls _build_block, which needs them.
        self.num_blocks = num_blocks
        self.block_kwargs = dict(block_kwargs)
        super().__init__(in_channels, out_channels, levels, init_cfg=init_cfg)

    def _build_block(self, in_channels, out_channels):
        return Sequential(*[
            MPMBlock(in_channels if i == 0 else out_channels, out_channels,
                     **copy.deepcopy(self.block_kwargs)) for i in range(self.num_blocks)
        ])
