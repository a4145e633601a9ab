"""Strip Pooling Module (SPM), registered as ``StripPooling``.

Hou, Zhang, Cheng, Feng. "Strip Pooling: Rethinking Spatial Pooling for Scene
Parsing", CVPR 2020. https://arxiv.org/abs/2003.13328

Gates ``x`` with long, narrow pooling windows (Sec. 3.2, Fig. 2)::

    y^h_{c,i} = mean_j x_{c,i,j},   y^v_{c,j} = mean_i x_{c,i,j}    strip pooling
    y_{c,i,j} = BN(conv3x1(y^h))_{c,i} + BN(conv1x3(y^v))_{c,j}     expand and sum
    z = x * sigmoid(f(ReLU(y)))                                     f: 1x1 conv

Init: ``ConvModule``'s (He normal fan-out, zero bias, BN 1/0); in training mode
the gate then has mean 0.5, std about 0.26 (the tests check it), halving a
pretrained backbone's features at step 0. Placement: on the 3x3 conv's output
in the bottlenecks of stage 4 and the last block of stages 1-3,
``position='after_conv2'``.

Deviations (ours, off by default unless noted):

* ``identity_init=True``: gate ``2 * sigmoid(f(ReLU(y)))``, ``f`` zero, exactly
  1 at init, range (0, 2).
* ``rd_ratio < 1`` adds a 1x1 reduction before pooling (``f`` expands back).
* The BatchNorms follow the plugin's own train/eval mode, not the host's
  ``norm_eval`` (``mmplug.layers.norm_mode``); inside a ``frozen_stages``
  stage the plugin is frozen at its init.
"""
import torch
from mmcv.cnn import ConvModule
from mmengine.model import BaseModule
from torch import nn

from mmplug.layers import (
    build_act,
    check_bool,
    check_cfg,
    check_input,
    check_int,
    follow_module_mode,
    reduced_channels,
    strip_convs,
    strip_pool,
)
from mmplug.registry import MODELS


@MODELS.register_module()
class StripPooling(BaseModule):
    """Strip Pooling Module (SPM) plugin.

    Args:
        in_channels (int): Channels of the input feature map.
        rd_ratio (float): Strip-conv width as a fraction of ``in_channels``.
            Defaults to 1.0 (the paper).
        rd_channels (int, optional): Explicit width. Defaults to None.
        rd_divisor (int): Round the width to a multiple of this. Defaults to 1.
        identity_init (bool): ``2 * sigmoid`` gate, zero ``f``. Defaults to False.
        conv_cfg (dict, optional): Config of the convs. Defaults to None.
        norm_cfg (dict, optional): Norm after the strip convs (and the
            reduction). Defaults to ``dict(type='BN')``.
        act_cfg (dict, optional): Activation of the fused map (and the
            reduction); None for none. Defaults to ``dict(type='ReLU')``.
        init_cfg (dict | list[dict], optional): mmengine init config; the init
            is re-applied by ``init_weights()``. Defaults to None.

    Note:
        ``7 * C * C + 5 * C`` parameters (1,837,568 at ``C = 512``). With BN, a
        training batch needs more than one value per channel in each strip.

    Example:
        >>> import torch
        >>> from mmplug.plugins.strip_pooling import StripPooling
        >>> spm = StripPooling(in_channels=256)
        >>> spm(torch.randn(2, 256, 28, 28)).shape
        torch.Size([2, 256, 28, 28])

        In an mmdet/mmseg ResNet config (pretrained backbone)::

            plugins=[dict(cfg=dict(type='StripPooling', identity_init=True),
                          stages=(False, False, False, True), position='after_conv2')]
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
        check_bool('StripPooling', 'identity_init', identity_init)
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
        self.act = build_act(act_cfg)
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
        """Re-apply the init after the host's ``init_cfg``."""
        super().init_weights()
        self._reset()

    def gate(self, x):
        """The gate ``gate_scale * sigmoid(f(ReLU(y)))`` that multiplies ``x``: ``[N, C, H, W]``."""
        y = self.reduce(x)  # [N, C', H, W]
        y = self.act(strip_pool(y, self.conv_h, self.conv_w))  # [N, C', H, W]
        return torch.sigmoid(self.fuse(y)) * self.gate_scale  # [N, C, H, W]

    def forward(self, x):
        check_input('StripPooling', x, self.in_channels)
        follow_module_mode(self)
        return x * self.gate(x)
