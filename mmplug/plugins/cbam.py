"""Convolutional Block Attention Module (CBAM).

Woo, Park, Lee, Kweon. "CBAM: Convolutional Block Attention Module", ECCV 2018.
https://arxiv.org/abs/1807.06521

Two gates in sequence, no internal residual (Eqs. 1-3)::

    F'  = M_c(F)  * F       M_c(F) = sigmoid(MLP(AvgPool(F)) + MLP(MaxPool(F)))
    F'' = M_s(F') * F'      M_s(F) = sigmoid(BN(conv7x7([max_c F; mean_c F])))

One MLP (C -> C/16 -> C, ReLU, biases) serves both descriptors; the spatial
conv has no bias, its BN momentum 0.01 (the authors' code). ``no_spatial=True``
is the authors' channel-only option. Init (the authors' ResNet code): PyTorch's
default MLP weights, zero biases, He normal (fan-out) spatial conv, spatial BN
weight and bias 0: the spatial gate starts at 0.5, the channel gate about 0.5.
Placement: on the residual branch before the addition, ``position='after_conv3'``.

Deviations:

* Eq. 3 writes ``[avg; max]``; the stack is ``[max; mean]`` as in the
  authors' code, so their spatial-conv weights load unpermuted.
* The spatial BN follows the plugin's own train/eval mode, not the host's
  ``norm_eval`` (``mmplug.layers.norm_mode``); inside a ``frozen_stages``
  stage the plugin is frozen at its init.

The max over H, W and over C is ``max`` with indices, not ``amax``: its
backward scatters into the maxima instead of comparing every element. Both
descriptors go through the MLP in one ``F.linear`` call (hooks on ``fc1``/``fc2``
do not fire). fightingcv-attention's ``CBAMBlock`` is this block with
``norm_cfg=None``, zero MLP biases, ``kernel_size=49``, plus ``x``.
"""
import torch
import torch.nn.functional as F
from mmcv.cnn import build_norm_layer
from mmengine.model import BaseModule
from torch import nn

from mmplug.layers import (
    build_act,
    check_bool,
    check_cfg,
    check_input,
    check_int,
    check_odd,
    follow_module_mode,
    reduced_channels,
)
from mmplug.registry import MODELS


@MODELS.register_module()
class CBAM(BaseModule):
    """Convolutional Block Attention Module plugin.

    Args:
        in_channels (int): Channels of the input feature map.
        rd_ratio (float): MLP hidden width as a fraction of ``in_channels`` (the
            paper's ``1 / r``). Defaults to 1/16.
        rd_channels (int, optional): Explicit hidden width. Defaults to None.
        rd_divisor (int): Round the hidden width to a multiple of this.
            Defaults to 1.
        kernel_size (int): Odd size of the spatial conv. Defaults to 7.
        act_cfg (dict, optional): The MLP's activation; None for none. Defaults
            to ``dict(type='ReLU')``.
        norm_cfg (dict, optional): Norm after the spatial conv; None for none
            (the conv then has a bias). Defaults to ``dict(type='BN',
            momentum=0.01)``.
        no_spatial (bool): Channel attention only. Defaults to False.
        init_cfg (dict | list[dict], optional): mmengine init config; the
            authors' init is re-applied by ``init_weights()``. Defaults to None.

    Example:
        >>> import torch
        >>> from mmplug.plugins.cbam import CBAM
        >>> cbam = CBAM(in_channels=256)
        >>> cbam(torch.randn(2, 256, 28, 28)).shape
        torch.Size([2, 256, 28, 28])
        >>> CBAM(256, no_spatial=True)(torch.randn(2, 256, 7, 7)).shape
        torch.Size([2, 256, 7, 7])

        In an mmdet/mmseg ResNet config (526,564 parameters at ``C = 2048``)::

            plugins=[dict(cfg=dict(type='CBAM'), position='after_conv3')]
    """

    _abbr_ = 'cbam'
    #: The paper's placement, filled in by the tools for the short plugin form.
    default_position = 'after_conv3'

    def __init__(self,
                 in_channels,
                 rd_ratio=1 / 16,
                 rd_channels=None,
                 rd_divisor=1,
                 kernel_size=7,
                 *,
                 act_cfg=dict(type='ReLU'),
                 norm_cfg=dict(type='BN', momentum=0.01),
                 no_spatial=False,
                 init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        check_int('CBAM', 'in_channels', in_channels)
        hidden = reduced_channels('CBAM', in_channels, rd_ratio, rd_channels, rd_divisor)
        check_odd('CBAM', 'kernel_size', kernel_size)
        check_cfg('CBAM', 'act_cfg', act_cfg)
        check_cfg('CBAM', 'norm_cfg', norm_cfg)
        self.no_spatial = check_bool('CBAM', 'no_spatial', no_spatial)
        self.in_channels = in_channels
        self.rd_channels = hidden
        self.kernel_size = kernel_size
        # Channel attention: one MLP shared by the avg- and max-pooled descriptors.
        self.fc1 = nn.Conv2d(in_channels, hidden, 1)
        self.act = build_act(act_cfg)
        self.fc2 = nn.Conv2d(hidden, in_channels, 1)
        # Spatial attention over [max; mean] of the channels.
        self.spatial_conv = nn.Identity() if no_spatial else nn.Conv2d(
            2, 1, kernel_size, padding=kernel_size // 2, bias=norm_cfg is None)
        self.spatial_norm = nn.Identity() if norm_cfg is None or no_spatial \
            else build_norm_layer(dict(norm_cfg), 1)[1]
        self._reset()

    def _reset(self):
        for fc in (self.fc1, self.fc2):
            fc.reset_parameters()  # the authors' MLP keeps PyTorch's default init
            nn.init.zeros_(fc.bias)
        if isinstance(self.spatial_conv, nn.Conv2d):
            nn.init.kaiming_normal_(self.spatial_conv.weight, mode='fan_out',
                                    nonlinearity='relu')
            if self.spatial_conv.bias is not None:
                nn.init.zeros_(self.spatial_conv.bias)
        # Authors: spatial BN weight 0, so the spatial gate starts at exactly 0.5.
        for name in ('weight', 'bias'):
            param = getattr(self.spatial_norm, name, None)
            if isinstance(param, nn.Parameter):
                nn.init.zeros_(param)

    def init_weights(self):
        """The authors' init (module docstring), after the host's ``init_cfg``."""
        super().init_weights()
        self._reset()

    def channel_gate(self, x):
        """``M_c(F) = sigmoid(MLP(AvgPool(F)) + MLP(MaxPool(F)))``, ``[N, C, 1, 1]``."""
        n, c = x.shape[:2]
        # Both descriptors through the shared MLP in one call, [2N, C].
        z = torch.cat([x.mean(dim=(2, 3)), x.flatten(2).max(dim=2).values])
        h = self.act(F.linear(z, self.fc1.weight.view(self.rd_channels, c), self.fc1.bias))
        h = F.linear(h, self.fc2.weight.view(c, self.rd_channels), self.fc2.bias)
        return torch.sigmoid(h[:n] + h[n:]).view(n, c, 1, 1)

    def spatial_gate(self, x):
        """``M_s(F) = sigmoid(BN(conv([max_c F; mean_c F])))``, ``[N, 1, H, W]``."""
        desc = torch.cat([x.max(dim=1, keepdim=True).values, x.mean(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.spatial_norm(self.spatial_conv(desc)))

    def gates(self, x):
        """Both gates of ``x``: ``(M_c(F), M_s(F'))``, ``[N, C, 1, 1]`` and ``[N, 1, H, W]``
        (the second None with ``no_spatial``)."""
        check_input('CBAM', x, self.in_channels)
        follow_module_mode(self)
        g = self.channel_gate(x)
        return g, None if self.no_spatial else self.spatial_gate(x * g)

    def forward(self, x):
        check_input('CBAM', x, self.in_channels)
        follow_module_mode(self)
        x = x * self.channel_gate(x)  # F' = M_c(F) * F
        return x if self.no_spatial else x * self.spatial_gate(x)  # F'' = M_s(F') * F'
