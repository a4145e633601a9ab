"""Atrous Spatial Pyramid Pooling (ASPP), DeepLab v3 form.

Chen, Papandreou, Schroff, Adam. "Rethinking Atrous Convolution for Semantic
Image Segmentation", 2017. https://arxiv.org/abs/1706.05587 (DeepLab v3;
ASPP first appeared in DeepLab v2, Chen et al., TPAMI 2017,
https://arxiv.org/abs/1606.00915).

An atrous (dilated) 3x3 convolution with rate ``r`` reads the input on a grid
``r`` apart:

    ``y[i] = sum_k x[i + r * k] w[k]``,  ``k in {-1, 0, 1}^2``

so it sees a ``(2r + 1)^2`` window at the cost of a 3x3 conv. ASPP runs several
rates in parallel on one feature map ``x`` (v3, Sec. 3.3):

1. ``b_0 = Up(ReLU(BN(W_0 * GAP(x))))``     image-level features: global average
   pool, 1x1 conv, bilinear upsample of the 1x1 map to ``H x W``
2. ``b_1 = ReLU(BN(W_1 * x))``               1x1 conv (rate 1)
3. ``b_r = ReLU(BN(W_r *_r x))``             3x3 atrous conv, one per rate ``r > 1``
4. ``y = ReLU(BN(W_p * [b_0, b_1, b_r...]))``  concatenate, project

The paper's setting: rates (6, 12, 18) plus the 1x1 at output stride 16 (rates
doubled, (12, 24, 36), at output stride 8), 256 channels per branch, BN in every
branch and a 1x1 projection to 256 channels before the classifier. The image
branch exists because a 3x3 filter with a rate close to the map size degenerates
to its centre tap (v3, Fig. 4); pooling supplies the global context instead.
DeepLab v2's ASPP summed per-rate classifier outputs and had no image branch;
this module is the v3 form only.

Choices and deviations:

* ``proj_kernel_size`` picks the projection ``W_p``: 1 (the paper) or 3 (mmseg's
  ``ASPPHead`` "bottleneck"). With 3, image pooling and rates (1, 6, 12, 18),
  :class:`ASPPBlock` computes exactly mmseg's ``ASPPHead._forward_feature``; its
  submodules carry mmseg's names (``image_pool``, ``aspp_modules``,
  ``bottleneck``), so an ``ASPPHead``'s weights load without renaming (see
  :meth:`ASPPBlock.from_mmseg_head`).
* ``out_channels`` defaults to ``in_channels`` (a shape-preserving neck), not to
  the branch width.
* Dropout after the projection is off by default (``dropout_ratio=0``): the
  decode head that follows a neck has its own (mmseg: ``Dropout2d(0.1)``, the
  value of the paper's TensorFlow release). Ours is ``Dropout2d`` like mmseg's
  heads; the TF release drops single activations.
* Bilinear upsampling of a 1x1 map gives the same value everywhere (with either
  ``align_corners``), so the image branch is broadcast with ``expand``: the same
  numbers as mmseg's ``resize`` without an interpolation kernel, and mmseg's
  ``align_corners`` argument would have no effect here.
* The image branch keeps the norm of ``norm_cfg``, as the paper and mmseg do.
  Batch norm over an ``[N, C, 1, 1]`` map normalises over the ``N`` images only:
  in training mode PyTorch raises for a batch of 1 (``Expected more than 1 value
  per channel when training``) and with 2 images each channel becomes +-1. Use
  SyncBN over several GPUs (mmseg's DeepLabV3 configs), GN, or
  ``image_pool=False`` for small per-GPU batches; eval mode works at any batch.
"""
import torch
import torch.nn as nn
from mmcv.cnn import ConvModule
from mmengine.model import BaseModule

from mmplug.necks.per_level import PerLevelNeck
from mmplug.registry import MODELS
from mmplug.utils.validation import check_cfg, check_int


def _check_block_args(owner, channels, dilations, image_pool, proj_kernel_size, dropout_ratio,
                      conv_cfg, norm_cfg, act_cfg):
    """Validate the block arguments shared by :class:`ASPPBlock` and :class:`ASPP`;
    return ``dilations`` as a tuple."""
    check_int(owner, 'channels', channels)
    if not isinstance(dilations, (list, tuple)) or len(dilations) == 0 or any(
            isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in dilations):
        raise ValueError(f'{owner}: dilations must be a non-empty tuple of positive ints (one '
                         f'branch per rate, 1 gives the 1x1 branch), got {dilations!r}')
    if not isinstance(image_pool, bool):
        raise ValueError(f'{owner}: image_pool must be True or False, got {image_pool!r}')
    check_int(owner, 'proj_kernel_size', proj_kernel_size)
    if proj_kernel_size % 2 == 0:
        raise ValueError(f'{owner}: proj_kernel_size must be odd (1 as the paper, 3 as mmseg) '
                         f'to keep H x W, got {proj_kernel_size!r}')
    if isinstance(dropout_ratio, bool) or not isinstance(dropout_ratio, (int, float)) \
            or not 0 <= dropout_ratio < 1:
        raise ValueError(f'{owner}: dropout_ratio must be a number in [0, 1), '
                         f'got {dropout_ratio!r}')
    check_cfg(owner, 'conv_cfg', conv_cfg)
    check_cfg(owner, 'norm_cfg', norm_cfg)
    check_cfg(owner, 'act_cfg', act_cfg)
    return tuple(dilations)


@MODELS.register_module()
class ASPPBlock(BaseModule):
    """Atrous spatial pyramid pooling on one feature map (``C_in -> C_out``).

    Args:
        in_channels (int): Channels of the input feature map.
        out_channels (int, optional): Channels after the projection. Defaults
            to None (``in_channels``: shape preserving).
        channels (int): Channels of each branch. Defaults to 256 (the paper).
        dilations (tuple[int]): Rate of each conv branch; 1 gives a 1x1 conv,
            ``r > 1`` a 3x3 conv with dilation and padding ``r``. Defaults to
            (1, 6, 12, 18), the paper's rates at output stride 16.
        image_pool (bool): Add the image-level branch (global average pool,
            1x1 conv, broadcast to ``H x W``). Defaults to True.
        proj_kernel_size (int): Kernel of the projection after the
            concatenation: 1 (the paper) or 3 (mmseg's ``ASPPHead``). Odd.
            Defaults to 1.
        dropout_ratio (float): ``Dropout2d`` after the projection. Defaults
            to 0.0 (off; the following head has its own).
        conv_cfg (dict, optional): Config of the convs. Defaults to None
            (``nn.Conv2d``).
        norm_cfg (dict, optional): Norm after every conv. Defaults to
            ``dict(type='BN')``.
        act_cfg (dict, optional): Activation after every norm. Defaults to
            ``dict(type='ReLU')``.
        init_cfg (dict | list[dict], optional): mmengine init config, applied
            by ``init_weights()`` after the ``ConvModule`` init (mmengine then
            re-runs ``ConvModule``'s own init of the direct child
            ``bottleneck``, as for every mmcv module). Defaults to None.

    Note:
        The output is ``[N, out_channels, H, W]`` for any ``H, W`` (odd, or
        smaller than the rates: taps that fall outside the map read zero
        padding). Not the identity at init: mmcv's ``ConvModule`` init (Kaiming
        normal, fan_out; norms weight 1, bias 0), as mmseg's ``ASPPHead``. With
        ``out_channels`` left at ``in_channels`` it is shape preserving, so it
        can also be a ResNet plugin (``_abbr_ = 'aspp'``), a costly one; in
        training mode its image branch's BN needs more than one image per batch
        (module docstring).

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
        # One ConvModule per rate, each built separately (no shared weights).
        self.aspp_modules = nn.ModuleList([
            ConvModule(in_channels, channels, 1 if d == 1 else 3, dilation=d,
                       padding=0 if d == 1 else d, **convs) for d in dilations
        ])
        num_branches = len(dilations) + int(image_pool)
        self.bottleneck = ConvModule(num_branches * channels, out_channels, proj_kernel_size,
                                     padding=proj_kernel_size // 2, **convs)
        self.dropout = nn.Dropout2d(dropout_ratio) if dropout_ratio > 0 else nn.Identity()

    def init_weights(self):
        """mmcv ``ConvModule`` init of every conv and norm (Kaiming normal,
        fan_out, for the convs; norms weight 1, bias 0), as mmseg's ``ASPPHead``.

        A host's ``init_cfg`` has already run when mmengine gets here, so it is
        overwritten and every branch starts the same way whatever the host;
        this block's own ``init_cfg`` runs after, and a ``Pretrained`` init of
        the whole model still wins (mmengine applies it last).
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
        if not isinstance(x, torch.Tensor):
            raise TypeError(f'ASPPBlock: expected a [N, {self.in_channels}, H, W] tensor, got '
                            f'{type(x).__name__}')
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f'ASPPBlock: expected [N, {self.in_channels}, H, W], got '
                             f'{list(x.shape)}')
        outs = []
        if self.with_image_pool:
            # Bilinear upsampling of a 1x1 map is a broadcast.
            outs.append(self.image_pool(x).expand(-1, -1, *x.shape[2:]))  # [N, C_b, H, W]
        outs.extend(branch(x) for branch in self.aspp_modules)
        y = self.bottleneck(torch.cat(outs, dim=1))  # [N, (B) * C_b, H, W] -> [N, C_out, H, W]
        return self.dropout(y)


@MODELS.register_module()
class ASPP(PerLevelNeck):
    """ASPP as a neck: one :class:`ASPPBlock` per selected level of a
    multi-level input; the other levels pass through unchanged.

    Args:
        in_channels (list[int]): Channels of each input level.
        out_channels (int | list[int], optional): Output channels of the
            selected levels: one int for all, or one per level (an unselected
            level keeps its channels). Defaults to None (``in_channels``).
        levels (list[int], optional): Indices of the levels to transform.
            Defaults to None (all levels).
        channels, dilations, image_pool, proj_kernel_size, dropout_ratio,
        conv_cfg, norm_cfg, act_cfg: As :class:`ASPPBlock`, for every block.
            Defaults as there (256 channels, rates (1, 6, 12, 18), image
            pooling, 1x1 projection, no dropout, BN, ReLU).
        init_cfg (dict | list[dict], optional): mmengine init config. Defaults
            to None.

    Note:
        Each selected level gets its own block (no weights shared between
        levels). The paper's rates (1, 6, 12, 18) suit one map at output stride
        16 of a ~513 px crop (33 x 33 cells); at output stride 8, as mmseg's
        DeepLabV3 R50-D8 configs, they double to (1, 12, 24, 36). After an FPN
        (strides 4-64) use smaller rates: on P5/P6 of an 800 x 1333 image
        (25 x 42 and 13 x 21 cells) a rate of 12 or more reads mostly padding
        and degenerates to the centre tap (paper, Fig. 4). (1, 3, 6) with image
        pooling is DetectoRS's ASPP over FPN features (Qiao et al., 2020,
        https://arxiv.org/abs/2006.02334). Detectors train with 1-2 images per
        GPU: there use GN or SyncBN (see the module docstring on BN in the
        image branch).

    Example:
        >>> import torch
        >>> from mmplug.necks.aspp import ASPP
        >>> neck = ASPP([64, 128], out_channels=96, levels=[1], channels=32).eval()
        >>> outs = neck((torch.randn(1, 64, 32, 32), torch.randn(1, 128, 16, 16)))
        >>> [tuple(o.shape) for o in outs]
        [(1, 64, 32, 32), (1, 96, 16, 16)]

        DeepLabV3-style segmentation: ASPP on the last level of a dilated
        ResNetV1c (output stride 8), then mmseg's ``FCNHead`` on that level::

            neck=dict(type='ASPP', in_channels=[256, 512, 1024, 2048],
                      levels=[3], out_channels=512, channels=512,
                      dilations=(1, 12, 24, 36)),
            decode_head=dict(type='FCNHead', in_channels=512, in_index=3,
                             channels=512, num_convs=1, ...)

        Detection: after FPN, on all five levels::

            neck=[dict(type='FPN', in_channels=[256, 512, 1024, 2048],
                       out_channels=256, num_outs=5),
                  dict(type='ASPP', in_channels=[256] * 5, channels=64,
                       dilations=(1, 3, 6),
                       norm_cfg=dict(type='GN', num_groups=32))]
    """

    def __init__(self,
                 in_channels,
                 out_channels=None,
                 levels=None,
                 channels=256,
                 dilations=(1, 6, 12, 18),
                 image_pool=True,
                 proj_kernel_size=1,
                 dropout_ratio=0.0,
                 conv_cfg=None,
                 norm_cfg=dict(type='BN'),
                 act_cfg=dict(type='ReLU'),
                 init_cfg=None):
        dilations = _check_block_args('ASPP', channels, dilations, image_pool, proj_kernel_size,
                                      dropout_ratio, conv_cfg, norm_cfg, act_cfg)
        # Set before Module.__init__ (allowed for a plain dict): PerLevelNeck's
        # __init__ calls _build_block, which needs it.
        self._block_kwargs = dict(channels=channels, dilations=dilations, image_pool=image_pool,
                                  proj_kernel_size=proj_kernel_size,
                                  dropout_ratio=dropout_ratio, conv_cfg=conv_cfg,
                                  norm_cfg=norm_cfg, act_cfg=act_cfg)
        super().__init__(in_channels, out_channels, levels, init_cfg=init_cfg)

    def _build_block(self, in_channels, out_channels):
        return ASPPBlock(in_channels, out_channels, **self._block_kwargs)
