"""Squeeze-and-Excitation (SE).

Hu, Shen, Sun. "Squeeze-and-Excitation Networks", CVPR 2018.
https://arxiv.org/abs/1709.01507

Recalibrates the channels of ``U`` (Sec. 3, Eqs. 2-4), ``r = 16``::

    z = mean_{i,j} u(i, j)          squeeze: global average pool
    s = sigmoid(W2 ReLU(W1 z))      excite: FCs with biases, C -> C/r -> C
    x_tilde_c = s_c * u_c           scale

Init: He normal (fan-in) FC weights, zero biases (the paper trains from scratch
with He init); the gate is 0.5 in expectation, so in a pretrained backbone SE
rescales channels randomly at step 0. Placement: on the residual branch before
the addition, ``position='after_conv3'``.

Deviations: none in function; the FCs are stored as 1x1 convs (the state dict
of mmdet's and mmseg's ``SELayer``) and applied as ``F.linear``. mmseg's
``SELayer`` is ``gate_cfg=dict(type='HSigmoid', bias=3.0, divisor=6.0),
rd_divisor=8`` (pass ``rd_channels`` where its rounding adds 8);
fightingcv-attention's ``SEAttention`` has zero biases.
"""
from mmcv.cnn import build_activation_layer
from mmengine.model import BaseModule
from torch import nn
from torch.nn import functional as F

from mmplug.layers import build_act, check_cfg, check_input, check_int, reduced_channels
from mmplug.registry import MODELS


@MODELS.register_module()
class SE(BaseModule):
    """Squeeze-and-Excitation plugin.

    Args:
        in_channels (int): Channels of the input feature map.
        rd_ratio (float): Hidden width as a fraction of ``in_channels`` (the
            paper's ``1 / r``). Defaults to 1/16.
        rd_channels (int, optional): Explicit hidden width. Defaults to None.
        rd_divisor (int): Round the hidden width to a multiple of this.
            Defaults to 1.
        act_cfg (dict, optional): Activation between the FCs; None for none.
            Defaults to ``dict(type='ReLU')``.
        gate_cfg (dict): Gate activation. Defaults to ``dict(type='Sigmoid')``.
        init_cfg (dict | list[dict], optional): mmengine init config; the
            paper's init is re-applied by ``init_weights()``. Defaults to None.

    Example:
        >>> import torch
        >>> from mmplug.plugins.se import SE
        >>> se = SE(in_channels=256)
        >>> se(torch.randn(2, 256, 28, 28)).shape
        torch.Size([2, 256, 28, 28])

        In an mmdet/mmseg ResNet config (526,464 parameters at ``C = 2048``)::

            plugins=[dict(cfg=dict(type='SE'), position='after_conv3')]
    """

    _abbr_ = 'se'
    #: The paper's placement, filled in by the tools for the short plugin form.
    default_position = 'after_conv3'

    def __init__(self,
                 in_channels,
                 rd_ratio=1 / 16,
                 rd_channels=None,
                 rd_divisor=1,
                 *,
                 act_cfg=dict(type='ReLU'),
                 gate_cfg=dict(type='Sigmoid'),
                 init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        check_int('SE', 'in_channels', in_channels)
        hidden = reduced_channels('SE', in_channels, rd_ratio, rd_channels, rd_divisor)
        check_cfg('SE', 'act_cfg', act_cfg, allow_none=True)
        check_cfg('SE', 'gate_cfg', gate_cfg, allow_none=False)
        self.in_channels = in_channels
        self.rd_channels = hidden
        self.fc1 = nn.Conv2d(in_channels, hidden, 1)
        self.act = build_act(act_cfg)
        self.fc2 = nn.Conv2d(hidden, in_channels, 1)
        self.gate = build_activation_layer(dict(gate_cfg))
        self._reset_fc()

    def _reset_fc(self):
        for fc in (self.fc1, self.fc2):
            nn.init.kaiming_normal_(fc.weight, mode='fan_in', nonlinearity='relu')
            nn.init.zeros_(fc.bias)

    def init_weights(self):
        """He normal (fan-in) FC weights, zero biases, after the host's ``init_cfg``."""
        super().init_weights()
        self._reset_fc()

    def channel_gate(self, x):
        """``s = gate(W2 act(W1 z))`` for ``z`` the spatial mean of ``x``: ``[N, C, 1, 1]``."""
        n, c = x.shape[:2]
        z = x.mean(dim=(2, 3))  # squeeze, [N, C]
        hidden = self.act(F.linear(z, self.fc1.weight.view(self.rd_channels, c), self.fc1.bias))
        s = self.gate(F.linear(hidden, self.fc2.weight.view(c, self.rd_channels), self.fc2.bias))
        return s.view(n, c, 1, 1)  # excite

    def forward(self, x):
        check_input('SE', x, self.in_channels)
        return x * self.channel_gate(x)  # scale
