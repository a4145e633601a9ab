"""Atrous Spatial Pyramid Pooling (ASPP), DeepLab v3 form.

Chen, Papandreou, Schroff, Adam. "Rethinking Atrous Convolution for Semantic
Image Segmentation", arXiv 2017. https://arxiv.org/abs/1706.05587 (ASPP first
appeared in DeepLab v2, TPAMI 2017, https://arxiv.org/abs/1606.00915).

A 3x3 conv at rate ``r`` (``y[i] = sum_k x[i + r * k] w[k]``) sees a
``(2r + 1)^2`` window; ASPP runs several rates in parallel (v3, Sec. 3.3)::

    b_0 = Up(ReLU(BN(W_0 * GAP(x))))        image-level features
    b_1 = ReLU(BN(W_1 * x))                 1x1 conv
    b_r = ReLU(BN(W_r *_r x))               3x3 atrous conv per rate r > 1
    y   = ReLU(BN(W_p * [b_0, b_1, b_r...]))

The paper: rates (6, 12, 18) at output stride 16, 256 channels per branch, a
1x1 projection. Init: ``ConvModule``'s (He normal fan-out, norm 1/0), as
mmseg's ``ASPPHead``. The image branch's BN normalises over the images only:
use SyncBN, GN or ``image_pool=False`` for small batches (a batch of 1 raises
in training).

Deviations:

* ``proj_kernel_size=3`` is mmseg's ``ASPPHead`` "bottleneck"; with rates
  (1, 6, 12, 18) the block then computes ``ASPPHead._forward_feature``, with
  its submodule names (:meth:`ASPPBlock.from_mmseg_head`).
* ``out_channels`` defaults to ``in_channels`` (a shape-preserving neck).
* No dropout by default (the following head has its own); ``Dropout2d`` when
  set, where the TF release drops single activations.
* ``Up`` of the 1x1 image map is a broadcast: the same numbers.
"""
import torch
import torch.nn as nn
from mmcv.cnn import ConvModule
from mmengine.model import BaseModule

from mmplug.layers import (
    activate,
    build_act,
    check_bool,
    check_cfg,
    check_input,
    check_int,
    check_int_tuple,
    check_odd,
)
from mmplug.necks.per_level import PerLevelNeck
from mmplug.registry import MODELS


def _check_block_args(owner, channels, dilations, image_pool, proj_kernel_size, dropout_ratio,
                      conv_cfg, norm_cfg, act_cfg):
    """Validate the block arguments; return ``dilations`` as a tuple."""
    check_int(owner, 'channels', channels)
    dilations = check_int_tuple(owner, 'dilations', dilations,
                                'one branch per rate, 1 gives the 1x1 branch')
    check_bool(owner, 'image_pool', image_pool)
    check_odd(owner, 'proj_kernel_size', proj_kernel_size,
              why='1 as the paper, 3 as mmseg; keeps H x W')
    if isinstance(dropout_ratio, bool) or not isinstance(dropout_ratio, (int, float)) \
            or not 0 <= dropout_ratio < 1:
        raise ValueError(f'{owner}: dropout_ratio must be a number in [0, 1), '
                         f'got {dropout_ratio!r}')
    check_cfg(owner, 'conv_cfg', conv_cfg)
    check_cfg(owner, 'norm_cfg', norm_cfg)
    check_cfg(owner, 'act_cfg', act_cfg)
    return dilations


@MODELS.register_module()
class ASPPBlock(BaseModule):
    """Atrous spatial pyramid pooling on one feature map (``C_in -> C_out``).

    Args:
        in_channels (int): Channels of the input feature map.
        out_channels (int, optional): Channels after the projection. Defaults
            to None (``in_channels``).
        channels (int): Channels of each branch. Defaults to 256 (the paper).
        dilations (tuple[int]): Rate of each conv branch; 1 gives a 1x1 conv.
            Defaults to (1, 6, 12, 18), the paper's at output stride 16.
        image_pool (bool): Add the image-level branch. Defaults to True.
        proj_kernel_size (int): Odd projection kernel: 1 (the paper) or 3
            (mmseg). Defaults to 1.
        dropout_ratio (float): ``Dropout2d`` after the projection. Defaults to 0.
        conv_cfg (dict, optional): Config of the convs. Defaults to None.
        norm_cfg (dict, optional): Norm after every conv. Defaults to
            ``dict(type='BN')``.
        act_cfg (dict, optional): Activation after every norm. Defaults to
            ``dict(type='ReLU')``.
        init_cfg (dict | list[dict], optional): mmengine init config, applied
            after the ``ConvModule`` init. Defaults to None.

    Example:
        >>> import torch
        >>> from mmplug.necks.aspp import ASPPBlock
        >>> aspp = ASPPBlock(2048, 512, channels=512).eval()
        >>> aspp(torch.randn(1, 2048, 33, 33)).shape
        torch.Size([1, 512, 33, 33])
    """

    _abbr_ = 'aspp'

    def __init__(self,
                 in_channels,
                 out_channels=None,
                 channels=256,
                 dilations=(1, 6, 12, 18),
                 image_pool=True,
                 proj_kernel_size=1,
                 dropout_ratio=0.0,
                 conv_cfg=None,
                 norm_cfg=dict(type='BN'),
                 act_cfg=dict(type='ReLU'),
                 init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        check_int('ASPPBlock', 'in_channels', in_channels)
        if out_channels is None:
            out_channels = in_channels
        check_int('ASPPBlock', 'out_channels', out_channels)
        dilations = _check_block_args('ASPPBlock', channels, dilations, image_pool,
                                      proj_kernel_size, dropout_ratio, conv_cfg, norm_cfg, act_cfg)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.channels = channels
        self.dilations = dilations
        self.with_image_pool = image_pool
        convs = dict(conv_cfg=conv_cfg, norm_cfg=norm_cfg, act_cfg=act_cfg)
        if image_pool:
            # Indices as mmseg's ASPPHead.image_pool, so its checkpoint keys load.
            self.image_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1),
                                            ConvModule(in_channels, channels, 1, **convs))
        else:
            self.image_pool = nn.Identity()
        self.aspp_modules = nn.ModuleList([
            ConvModule(in_channels, channels, 1 if d == 1 else 3, dilation=d,
                       padding=0 if d == 1 else d, **convs) for d in dilations
        ])
        num_branches = len(dilations) + int(image_pool)
        # The projection's activation runs apart (layers.activate), so a host may add to
        # the output in place; the keys stay mmseg's (bottleneck.conv, bottleneck.bn).
        self.bottleneck = ConvModule(num_branches * channels, out_channels, proj_kernel_size,
                                     padding=proj_kernel_size // 2,
                                     **dict(convs, act_cfg=None))
        self.act = build_act(act_cfg)
        self.dropout = nn.Dropout2d(dropout_ratio) if dropout_ratio > 0 else nn.Identity()

    def init_weights(self):
        """mmcv ``ConvModule`` init of every conv and norm, then this block's ``init_cfg``.

        Overwrites a host's ``init_cfg``; a ``Pretrained`` init of the whole model still wins.
        """
        for m in self.modules():
            if isinstance(m, ConvModule):
                m.init_weights()
        super().init_weights()

    @classmethod
    def from_mmseg_head(cls, head):
        """The block equal to an mmseg ``ASPPHead`` before its dropout and
        ``conv_seg`` (``head._forward_feature``), with the head's weights.

        Args:
            head (mmseg.models.decode_heads.ASPPHead): A built head.

        Returns:
            ASPPBlock: ``proj_kernel_size=3``, ``out_channels = channels =
            head.channels``, the head's rates and layer configs, on the head's
            device.
        """
        from mmseg.models.decode_heads import ASPPHead

        if type(head) is not ASPPHead:
            raise TypeError(f'ASPPBlock.from_mmseg_head: expected an mmseg ASPPHead, got '
                            f'{type(head).__name__} (its branches differ, e.g. DeepLabV3+\'s '
                            f'depthwise separable ones)')
        block = cls(head.in_channels, head.channels, channels=head.channels,
                    dilations=tuple(head.dilations), proj_kernel_size=3,
                    conv_cfg=head.conv_cfg, norm_cfg=head.norm_cfg, act_cfg=head.act_cfg)
        state = {k: v for k, v in head.state_dict().items()
                 if k.split('.')[0] in ('image_pool', 'aspp_modules', 'bottleneck')}
        block.load_state_dict(state)  # strict: every key of ours is in the head
        return block.to(head.bottleneck.conv.weight.device)

    def forward(self, x):
        check_input('ASPPBlock', x, self.in_channels)
        outs = []
        if self.with_image_pool:
            outs.append(self.image_pool(x).expand(-1, -1, *x.shape[2:]))  # [N, C_b, H, W]
        outs.extend(branch(x) for branch in self.aspp_modules)
        y = self.bottleneck(torch.cat(outs, dim=1))  # [N, (B) * C_b, H, W] -> [N, C_out, H, W]
        y = activate(self.act, y)
        return self.dropout(y)


@MODELS.register_module()
class ASPP(PerLevelNeck):
    """ASPP as a neck: one :class:`ASPPBlock` per selected level; the others pass through.

    Args:
        in_channels (list[int]): Channels of each input level.
        out_channels (int | list[int], optional): Output channels of the
            selected levels. Defaults to None (``in_channels``).
        levels (list[int], optional): Levels to transform. Defaults to None (all).
        init_cfg (dict | list[dict], optional): mmengine init config. Defaults
            to None.
        **block_kwargs: Passed to every :class:`ASPPBlock`.

    Note:
        At output stride 8 (mmseg's R50-D8) the paper's rates double to (1, 12,
        24, 36). After an FPN use smaller ones: on P5/P6 of an 800 x 1333 image
        12 or more reads mostly padding. DetectoRS (Qiao et al., 2020,
        https://arxiv.org/abs/2006.02334) uses (1, 3, 6) with image pooling
        over FPN levels (``channels=64``; GN or SyncBN at 1-2 images per GPU).

    Example:
        >>> import torch
        >>> from mmplug.necks.aspp import ASPP
        >>> neck = ASPP([64, 128], out_channels=96, levels=[1], channels=32).eval()
        >>> outs = neck((torch.randn(1, 64, 32, 32), torch.randn(1, 128, 16, 16)))
        >>> [tuple(o.shape) for o in outs]
        [(1, 64, 32, 32), (1, 96, 16, 16)]

        DeepLabV3-style, on the last level of a dilated ResNetV1c, then ``FCNHead``::

            neck=dict(type='ASPP', in_channels=[256, 512, 1024, 2048], levels=[3],
                      out_channels=512, channels=512, dilations=(1, 12, 24, 36)),
            decode_head=dict(type='FCNHead', in_channels=512, in_index=3, ...)
    """

    def __init__(self, in_channels, out_channels=None, levels=None, *, init_cfg=None,
                 **block_kwargs):
        super().__init__(in_channels, out_channels, levels,
                         block=dict(type=ASPPBlock, **block_kwargs), init_cfg=init_cfg)
