"""Strip Pooling Module (SPM).

Hou, Zhang, Cheng, Feng. "Strip Pooling: Rethinking Spatial Pooling for Scene
Parsing", CVPR 2020. https://arxiv.org/abs/2003.13328

The paper's SPM (Sec. 3.2, Fig. 2) gates a feature map ``x`` (``C x H x W``)
with long, narrow pooling windows:

1. strip pooling: ``y^h_{c,i} = mean_j x_{c,i,j}`` (an ``H x 1`` map, pooled
   over W) and ``y^v_{c,j} = mean_i x_{c,i,j}`` (a ``1 x W`` map, pooled over H);
2. a 1-D convolution of kernel 3 along each strip (``3 x 1`` on ``y^h``,
   ``1 x 3`` on ``y^v``), each followed by BN;
3. expand both back to ``H x W`` and sum: ``y_{c,i,j} = y^h_{c,i} + y^v_{c,j}``;
4. ``z = x * sigmoid(f(ReLU(y)))`` with ``f`` a 1x1 convolution.

Registered as ``StripPooling``; the paper calls the block SPM (the mixed
pooling module MPM of the same paper is a different block).

Choices and options:

* Init (default, ``identity_init=False``): the paper's block with He-normal
  (fan-out, ReLU gain) convolutions, zero conv biases, BN weight 1 and bias 0
  (mmcv ``ConvModule``'s init). The gate is ``sigmoid(z)`` with
  ``z = f(ReLU(y))``. In training mode each BN output is zero-mean, unit-variance
  per channel, so ``y = y^h + y^v`` has variance about 2, ``E[ReLU(y)^2]`` about 1,
  and with ``f``'s He weights (variance ``2 / C``) and zero bias ``z`` has mean 0
  and variance about 2 over the init. The gate therefore has expected value
  exactly 0.5 (``z`` is symmetric about 0) and a spread of about 0.26
  (measured: mean 0.50, std 0.26 at C = 64, 256, 512; the tests check it).
  Features are scaled by about 0.5 at step 0, which disturbs a pretrained
  backbone.
* ``identity_init=True`` (ours, for pretrained backbones): the gate becomes
  ``2 * sigmoid(f(ReLU(y)))`` with ``f``'s weight and bias zero-initialised,
  so the gate is exactly 1.0 and the output equals the input at init; during
  training the gate ranges over (0, 2) instead of (0, 1) (the factor 2 is
  the one the original DCNv2 code uses on its modulation mask).
* ``rd_ratio < 1`` (or ``rd_channels``) adds a 1x1 ``ConvModule`` that
  reduces the channels before pooling (``f`` then expands back to C); the
  paper's SPM has no reduction (the default, ``rd_ratio=1``).
"""
import torch
from mmcv.cnn import ConvModule, build_activation_layer
from mmengine.model import BaseModule
from torch import nn

from mmplug.registry import MODELS
from mmplug.utils.channels import reduced_channels
from mmplug.utils.validation import check_cfg, check_input, check_int


def strip_convs(channels, conv_cfg=None, norm_cfg=dict(type='BN')):
    """The two 1-D convs of strip pooling: ``(3x1 over H, 1x3 over W)``, with norm, no act."""
    layer = dict(conv_cfg=conv_cfg, norm_cfg=norm_cfg, act_cfg=None)
    return (ConvModule(channels, channels, (3, 1), padding=(1, 0), **layer),
            ConvModule(channels, channels, (1, 3), padding=(0, 1), **layer))


def strip_pool(x, conv_h, conv_w):
    """Strip pooling of ``x`` ``[N, C, H, W]``: ``conv_h(mean over W) + conv_w(mean over H)``.

    The ``[N, C, H, 1]`` and ``[N, C, 1, W]`` strips are expanded to ``[N, C, H, W]`` by
    broadcasting in the sum (the paper's "expand"). Shared by :class:`StripPooling` and
    SPNet's mixed pooling module.
    """
    return conv_h(x.mean(dim=3, keepdim=True)) + conv_w(x.mean(dim=2, keepdim=True))


@MODELS.register_module()
class StripPooling(BaseModule):
    """Strip Pooling Module (SPM) plugin.

    Args:
        in_channels (int): Channels of the input feature map.
        rd_ratio (float): Width of the strip convolutions as a fraction of
            ``in_channels``; below 1 a 1x1 reduction conv is added. Defaults
            to 1.0 (the paper: no reduction).
        rd_channels (int, optional): Explicit width; overrides ``rd_ratio``.
            Defaults to None.
        rd_divisor (int): Round the width from ``rd_ratio`` to a multiple of
            this. Defaults to 1.
        identity_init (bool): Gate with ``2 * sigmoid`` and zero-initialise
            the last 1x1 conv, so the module is the identity at init. Defaults
            to False (the paper's ``sigmoid`` gate, about 0.5 at init).
        conv_cfg (dict, optional): mmcv config of the convolutions. Defaults
            to None (``nn.Conv2d``).
        norm_cfg (dict, optional): mmcv config of the norm after the strip
            convolutions (and the reduction). Defaults to ``dict(type='BN')``.
        act_cfg (dict, optional): mmcv config of the activation applied to the
            fused map (and after the reduction); None for none. Defaults to
            ``dict(type='ReLU')``.
        init_cfg (dict | list[dict], optional): mmengine init config. The
            init described in the module docstring is applied by
            ``init_weights()`` regardless. Defaults to None.

    Note:
        Shape preserving, so it fits any plugin position of mmdet/mmseg
        ``ResNet``. The paper gates the output of the 3x3 conv in the
        bottlenecks of stage 4 and of the last block of stages 1-3
        (``position='after_conv2'``; mmdet/mmseg plugins are chosen per stage,
        so use ``stages=(False, False, False, True)`` or all stages). At init
        the default gate is 0.5 in expectation (std about 0.26 over positions
        and channels); with ``identity_init=True`` it is exactly 1.0 and the
        output equals the input. ``6 * C * C + 4 * C + C * C + C`` parameters
        at the default width (1,837,568 at ``C = 512``, stage 4 of ResNet-50
        at ``after_conv2``). With BN, a training-mode batch needs more than
        one value per channel in each strip (not ``N = H = 1`` or
        ``N = W = 1``); the BNs follow the host's ``norm_eval``.

    Example:
        >>> import torch
        >>> from mmplug.plugins.strip_pooling import StripPooling
        >>> spm = StripPooling(in_channels=256)
        >>> spm(torch.randn(2, 256, 28, 28)).shape
        torch.Size([2, 256, 28, 28])

        In an mmdet/mmseg ResNet config (pretrained backbone)::

            plugins=[dict(cfg=dict(type='StripPooling', identity_init=True),
                          stages=(False, False, False, True),
                          position='after_conv2')]
    """

    _abbr_ = 'strip_pooling'
    #: The paper's placement, filled in by the tools for the short plugin form.
    default_position = 'after_conv2'

    def __init__(self,
                 in_channels,
                 rd_ratio=1.0,
                 rd_channels=None,
                 rd_divisor=1,
                 *,
                 identity_init=False,
                 conv_cfg=None,
                 norm_cfg=dict(type='BN'),
                 act_cfg=dict(type='ReLU'),
                 init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        check_int('StripPooling', 'in_channels', in_channels)
        mid = reduced_channels('StripPooling', in_channels, rd_ratio, rd_channels, rd_divisor)
        if not isinstance(identity_init, bool):
            raise ValueError(f'StripPooling: identity_init must be a bool, got {identity_init!r}')
        for name, cfg in (('conv_cfg', conv_cfg), ('norm_cfg', norm_cfg), ('act_cfg', act_cfg)):
            check_cfg('StripPooling', name, cfg)
        self.in_channels = in_channels
        self.rd_channels = mid
        self.identity_init = identity_init
        self.gate_scale = 2.0 if identity_init else 1.0
        layer = dict(conv_cfg=conv_cfg, norm_cfg=norm_cfg)
        self.reduce = nn.Identity() if mid == in_channels else ConvModule(
            in_channels, mid, 1, act_cfg=act_cfg, **layer)
        # 1-D convs along each strip, BN, no activation before the sum.
        self.conv_h, self.conv_w = strip_convs(mid, conv_cfg, norm_cfg)
        self.act = nn.Identity() if act_cfg is None else build_activation_layer(dict(act_cfg))
        self.fuse = ConvModule(mid, in_channels, 1, conv_cfg=conv_cfg, norm_cfg=None,
                               act_cfg=None)
        self._reset()

    def _reset(self):
        for m in self.modules():
            if isinstance(m, ConvModule):
                m.init_weights()  # He normal (fan-out), bias 0; norm weight 1, bias 0
        if self.identity_init:
            nn.init.zeros_(self.fuse.conv.weight)
            nn.init.zeros_(self.fuse.conv.bias)

    def init_weights(self):
        """Re-apply the init of the module docstring after the host's ``init_cfg``."""
        super().init_weights()
        self._reset()

    def forward(self, x):
        check_input('StripPooling', x, self.in_channels)
        y = self.reduce(x)  # [N, C', H, W]
        y = self.act(strip_pool(y, self.conv_h, self.conv_w))  # [N, C', H, W]
        gate = torch.sigmoid(self.fuse(y)) * self.gate_scale  # [N, C, H, W]
        return x * gate
