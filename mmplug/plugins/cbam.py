"""Convolutional Block Attention Module (CBAM).

Woo, Park, Lee, Kweon. "CBAM: Convolutional Block Attention Module", ECCV 2018.
https://arxiv.org/abs/1807.06521

Two gates in sequence, no internal residual (paper Eqs. 1-3)::

    F'  = M_c(F)  * F       M_c(F) = sigmoid(MLP(AvgPool(F)) + MLP(MaxPool(F)))
    F'' = M_s(F') * F'      M_s(F) = sigmoid(BN(conv7x7([max_c F; mean_c F])))

* Channel attention: one MLP (C -> C/r -> C, ReLU between, with biases as in
  the authors' code) shared by the global average- and max-pooled
  descriptors; the two outputs are summed before the sigmoid. ``r = 16``.
* Spatial attention: channel-wise max and mean maps, a 7x7 convolution to one
  map (no bias), BatchNorm (the authors' code; momentum 0.01), sigmoid.

Choices and deviations:

* Max pooling over H, W and over C is ``max`` along a flattened dimension (a
  plain reduction), not adaptive max pooling, so the module exports to ONNX and
  compiles at any input size. ``max`` with its indices rather than ``amax``:
  its backward scatters into the maxima, where ``amax``'s compares every
  element with the maximum (measured on CPU: forward+backward 0.75-0.96x of
  fightingcv-attention's against 0.89-1.44x with ``amax``).
* Eq. 3 of the paper writes the spatial descriptor as ``[avg; max]``; we
  stack ``[max; mean]`` like the authors' code (and fightingcv-attention) so
  their spatial-conv weights load unpermuted. Same function up to that
  permutation of the conv's two input channels.
* Init follows the authors' ResNet code: the MLP keeps PyTorch's default
  weight init with zero biases, the spatial conv is He normal (fan-out), and
  the spatial BN starts at weight 0, bias 0, so the spatial gate is exactly
  ``sigmoid(0) = 0.5`` at init whatever the input. The channel gate is
  ``sigmoid(MLP(avg) + MLP(max))`` with zero biases: exactly 0.5 for a zero
  input and otherwise random about 0.5. At init CBAM therefore scales its input
  by about 0.25 (0.5 * ~0.5).
* ``norm_cfg=None`` drops the BN; the spatial conv then gets a bias (as
  ``ConvModule``'s ``bias='auto'``), initialised to 0.

The avg- and max-pooled descriptors go through the MLP in one batched call,
as ``F.linear`` on the 1x1 convs' weights (the parameters and state-dict keys
stay the convs'; forward hooks on ``fc1``/``fc2`` do not fire).

fightingcv-attention's ``CBAMBlock`` differs from the paper: MLP without biases,
spatial conv with bias and no BN, kernel 49 by default, and ``+ x`` at the end.
With ``norm_cfg=None``, the MLP biases at 0 and its kernel size, our output
equals its output minus ``x``.
"""
import torch
import torch.nn.functional as F
from mmcv.cnn import build_activation_layer, build_norm_layer
from mmengine.model import BaseModule
from torch import nn

from mmplug.registry import MODELS
from mmplug.utils.channels import reduced_channels
from mmplug.utils.validation import check_cfg, check_input, check_int


@MODELS.register_module()
class CBAM(BaseModule):
    """Convolutional Block Attention Module plugin.

    Args:
        in_channels (int): Channels of the input feature map.
        rd_ratio (float): Hidden width of the channel MLP as a fraction of
            ``in_channels`` (the paper's ``1 / r``). Defaults to 1/16.
        rd_channels (int, optional): Explicit hidden width; overrides
            ``rd_ratio``. Defaults to None.
        rd_divisor (int): Round the hidden width from ``rd_ratio`` to a
            multiple of this. Defaults to 1 (the paper's ``C / r``).
        kernel_size (int): Odd size of the spatial-attention convolution.
            Defaults to 7.
        act_cfg (dict, optional): mmcv config of the MLP's hidden activation;
            None for none. Defaults to ``dict(type='ReLU')``.
        norm_cfg (dict, optional): mmcv config of the norm after the spatial
            convolution; None for none (the conv then has a bias). Defaults to
            ``dict(type='BN', momentum=0.01)``, the authors' BatchNorm.
        init_cfg (dict | list[dict], optional): mmengine init config. The
            authors' init is applied by ``init_weights()`` regardless.
            Defaults to None.

    Note:
        Shape preserving, so it fits any plugin position of mmdet/mmseg
        ``ResNet``; the paper puts it on the residual branch of every block
        before the addition, i.e. ``position='after_conv3'`` (``in_channels``
        is then the expanded width, 4x the stage's planes). It adds
        ``2 * C * C/r + C/r + C + 2 * k * k + 2`` parameters (526,564 at
        ``C = 2048``, ``r = 16``, ``k = 7``). At init the spatial gate is
        exactly 0.5 and the channel gate about 0.5: features are scaled by
        about 0.25. The spatial BN follows the host's ``norm_eval``.

    Example:
        >>> import torch
        >>> from mmplug.plugins.cbam import CBAM
        >>> cbam = CBAM(in_channels=256)
        >>> cbam(torch.randn(2, 256, 28, 28)).shape
        torch.Size([2, 256, 28, 28])

        In an mmdet/mmseg ResNet config::

            plugins=[dict(cfg=dict(type='CBAM'),
                          stages=(True, True, True, True),
                          position='after_conv3')]
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
                 init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        check_int('CBAM', 'in_channels', in_channels)
        hidden = reduced_channels('CBAM', in_channels, rd_ratio, rd_channels, rd_divisor)
        if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) \
                or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f'CBAM: kernel_size must be a positive odd int (the map keeps its '
                             f'size), got {kernel_size!r}')
        check_cfg('CBAM', 'act_cfg', act_cfg)
        check_cfg('CBAM', 'norm_cfg', norm_cfg)
        self.in_channels = in_channels
        self.rd_channels = hidden
        self.kernel_size = kernel_size
        # Channel attention: one MLP shared by the avg- and max-pooled descriptors.
        self.fc1 = nn.Conv2d(in_channels, hidden, 1)
        self.act = nn.Identity() if act_cfg is None else build_activation_layer(dict(act_cfg))
        self.fc2 = nn.Conv2d(hidden, in_channels, 1)
        # Spatial attention over [max; mean] of the channels.
        self.spatial_conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2,
                                      bias=norm_cfg is None)
        self.spatial_norm = nn.Identity() if norm_cfg is None \
            else build_norm_layer(dict(norm_cfg), 1)[1]
        self._reset()

    def _reset(self):
        for fc in (self.fc1, self.fc2):
            fc.reset_parameters()  # the authors' MLP keeps PyTorch's default init
            nn.init.zeros_(fc.bias)
        nn.init.kaiming_normal_(self.spatial_conv.weight, mode='fan_out', nonlinearity='relu')
        if self.spatial_conv.bias is not None:
            nn.init.zeros_(self.spatial_conv.bias)
        # Authors: spatial BN weight 0, so the spatial gate starts at exactly 0.5.
        for name in ('weight', 'bias'):
            param = getattr(self.spatial_norm, name, None)
            if isinstance(param, nn.Parameter):
                nn.init.zeros_(param)

    def init_weights(self):
        """The authors' init (see the module docstring).

        Runs after the host's ``init_cfg`` (mmengine calls children's
        ``init_weights`` last); a ``Pretrained`` init of the whole model that
        holds CBAM keys still wins, as mmengine loads it after the children.
        """
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
        """Both gates of ``x``: ``(M_c(F), M_s(F'))``, ``[N, C, 1, 1]`` and ``[N, 1, H, W]``."""
        check_input('CBAM', x, self.in_channels)
        g = self.channel_gate(x)
        return g, self.spatial_gate(x * g)

    def forward(self, x):
        check_input('CBAM', x, self.in_channels)
        x = x * self.channel_gate(x)  # F' = M_c(F) * F
        return x * self.spatial_gate(x)  # F'' = M_s(F') * F'
