"""Squeeze-and-Excitation (SE).

Hu, Shen, Sun. "Squeeze-and-Excitation Networks", CVPR 2018.
https://arxiv.org/abs/1709.01507

The block (paper Sec. 3, Eqs. 2-4) recalibrates the channels of ``U``:

1. squeeze:  ``z = mean_{i,j} u_c(i, j)``              global average pool
2. excite:   ``s = sigmoid(W2 ReLU(W1 z))``            ``W1``: C -> C/r, ``W2``: C/r -> C
3. scale:    ``x_tilde_c = s_c * u_c``

``W1``/``W2`` are fully connected layers with biases (the authors' Caffe
models); here they are 1x1 convolutions on the pooled ``[N, C, 1, 1]`` map,
the same function. The paper uses ``r = 16`` in all its models
(``rd_ratio=1/16``, no rounding).

Init: the paper trains from scratch with He et al.'s initialisation (Sec. 6.1
of the journal version). ``init_weights()`` applies He normal init (fan-in,
ReLU gain) to both FC layers and zeros their biases. The gate at init is then
``sigmoid(W2 ReLU(W1 z))``:

* exactly ``0.5`` for every channel whose spatial mean ``z_c`` is 0 (biases are
  0, so a zero descriptor gives a zero logit);
* otherwise ``sigmoid`` of a logit that is symmetric about 0 over the random
  weights, with variance ``2 * mean_c(z_c ** 2)`` (He init keeps the variance
  through both layers), so the expected gate is exactly 0.5 and its spread
  grows with the channel means: measured at C = 2048, gate std 0.05 for a
  7x7 N(0, 1) input (means ~N(0, 1/49)) and 0.25 (range 0.003-0.99) when the
  channel means are ~N(0, 1), as behind a pretrained BN. Inserted into a
  pretrained backbone, SE therefore rescales channels randomly at step 0.

Options for the OpenMMLab variants (the default is the paper's block):

* ``act_cfg`` / ``gate_cfg`` take mmcv activation configs. mmseg's ``SELayer``
  is ``gate_cfg=dict(type='HSigmoid', bias=3.0, divisor=6.0)`` with
  ``rd_divisor=8`` (mmseg rounds ``C // 16`` to a multiple of 8 and bumps it
  by 8 when that loses more than 10 %; our ``reduced_channels`` rounds to the
  nearest multiple without the bump, so for the few widths where they differ
  pass ``rd_channels``). mmdet's ``SELayer`` is the default config.
* fightingcv-attention's ``SEAttention`` has no biases in its FC layers; it is
  this block with both biases held at 0.

The FC layers are stored as 1x1 convolutions (state dicts interchangeable
with mmdet's and mmseg's ``SELayer``) and applied as ``F.linear`` on the
pooled ``[N, C]`` descriptor: the same function, without a convolution's
dispatch for what is a matrix product (``docs/performance.md``). The results
differ from the conv-based ``SELayer`` only in float32 summation order.
"""
from mmcv.cnn import build_activation_layer
from mmengine.model import BaseModule
from torch import nn
from torch.nn import functional as F

from mmplug.registry import MODELS
from mmplug.utils.channels import reduced_channels
from mmplug.utils.validation import check_cfg, check_input, check_int


@MODELS.register_module()
class SE(BaseModule):
    """Squeeze-and-Excitation plugin.

    Args:
        in_channels (int): Channels of the input feature map.
        rd_ratio (float): Hidden width of the excitation MLP as a fraction of
            ``in_channels`` (the paper's ``1 / r``). Defaults to 1/16.
        rd_channels (int, optional): Explicit hidden width; overrides
            ``rd_ratio``. Defaults to None.
        rd_divisor (int): Round the hidden width from ``rd_ratio`` to a
            multiple of this. Defaults to 1 (the paper's ``C / r``).
        act_cfg (dict, optional): mmcv config of the activation between the
            two FC layers; None for none. Defaults to ``dict(type='ReLU')``.
        gate_cfg (dict): mmcv config of the gate activation. Defaults to
            ``dict(type='Sigmoid')``; mmseg's variant uses
            ``dict(type='HSigmoid', bias=3.0, divisor=6.0)``.
        init_cfg (dict | list[dict], optional): mmengine init config. The
            paper's init is applied by ``init_weights()`` regardless.
            Defaults to None.

    Note:
        Shape preserving, so it fits any plugin position of mmdet/mmseg
        ``ResNet``; the paper puts it on the residual branch before the
        addition, i.e. ``position='after_conv3'`` (then ``in_channels`` is the
        expanded width). It adds ``2 * C * C/r + C/r + C`` parameters (526,464
        at ``C = 2048``). At init (He normal weights, zero biases) the gate is
        exactly 0.5 for channels with zero spatial mean and
        ``sigmoid(N(0, 2 * mean(z ** 2)))`` in general (mean exactly 0.5 over
        the random init), so it roughly halves the features it gates.

    Example:
        >>> import torch
        >>> from mmplug.plugins.se import SE
        >>> se = SE(in_channels=256)
        >>> se(torch.randn(2, 256, 28, 28)).shape
        torch.Size([2, 256, 28, 28])

        In an mmdet/mmseg ResNet config::

            plugins=[dict(cfg=dict(type='SE'),
                          stages=(True, True, True, True),
                          position='after_conv3')]
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
        # build_activation_layer pops nothing from our dicts, but copy anyway:
        # the defaults are shared by every instance.
        self.act = nn.Identity() if act_cfg is None else build_activation_layer(dict(act_cfg))
        self.fc2 = nn.Conv2d(hidden, in_channels, 1)
        self.gate = build_activation_layer(dict(gate_cfg))
        self._reset_fc()

    def _reset_fc(self):
        for fc in (self.fc1, self.fc2):
            nn.init.kaiming_normal_(fc.weight, mode='fan_in', nonlinearity='relu')
            nn.init.zeros_(fc.bias)

    def init_weights(self):
        """Paper's init: He normal (fan-in) FC weights, zero biases.

        Runs after the host's ``init_cfg`` (mmengine calls children's
        ``init_weights`` last); a ``Pretrained`` init of the whole model that
        holds SE keys still wins, as mmengine loads it after the children.
        """
        super().init_weights()
        self._reset_fc()

    def forward(self, x):
        check_input('SE', x, self.in_channels)
        n, c = x.shape[:2]
        z = x.mean(dim=(2, 3))  # squeeze, [N, C]
        hidden = self.act(F.linear(z, self.fc1.weight.view(self.rd_channels, c), self.fc1.bias))
        s = self.gate(F.linear(hidden, self.fc2.weight.view(c, self.rd_channels), self.fc2.bias))
        return x * s.view(n, c, 1, 1)  # scale
