"""Spatial Group-wise Enhance (SGE).

Li, Hu, Yang. "Spatial Group-wise Enhance: Improving Semantic Feature Learning
in Convolutional Networks", 2019. https://arxiv.org/abs/1905.09646

Each of ``G`` channel groups is a sub-feature ``X = {x_1..x_m}`` (``m = H*W``
positions, each a ``C/G`` vector). The paper (Sec. 3):

1. ``g = mean_i x_i``                       global descriptor of the group
2. ``c_i = g . x_i``                        similarity of each position to it
3. ``c_hat_i = (c_i - mu_c) / (sigma_c + eps)``   normalised over the positions
4. ``a_i = gamma * c_hat_i + beta``         one (gamma, beta) pair per group
5. ``x_hat_i = x_i * sigmoid(a_i)``

Details taken from the paper and the authors' release:

* ``sigma_c`` is the unbiased standard deviation and ``eps = 1e-5`` is added to
  it (not to the variance), as in the authors' code.
* Init: ``gamma = 0`` and ``beta = 1`` (the authors' code), so at step 0 every
  position is scaled by ``sigmoid(1) ~= 0.731``. Some popular re-implementations
  (e.g. fightingcv-attention) start ``beta`` at 0, i.e. a gate of 0.5.

Deliberate robustness choices (same function in fp32):

* The normalisation statistics are computed in float32 (float64 for float64
  inputs) whatever the input
  dtype. In fp16 the squared deviations overflow and give the NaNs users
  report; the map they are computed on is ``C/G`` times smaller than ``x``.
* On a 1x1 map (one position) the unbiased std is undefined (0/0). We divide by
  ``max(m - 1, 1)``, so the normalised similarity is 0 and the gate is
  ``sigmoid(beta)``: finite, instead of NaN.

The similarities ``c_i = g . x_i`` of all positions are one batched matrix
product, which reads ``x`` once and writes only the ``[N*G, 1, HW]`` map (a
multiply-and-sum would write an ``x``-sized product first); the
normalisation runs on that map, ``C/G`` times smaller than ``x``.
"""
import torch
from mmengine.model import BaseModule

from mmplug.registry import MODELS
from mmplug.utils.validation import check_input, check_int

# The variance is clamped here before the square root: d sqrt(v)/dv is infinite
# at v = 0, i.e. NaN gradients whenever a group's map is constant -- e.g. behind
# a zero-initialised BN (mmdet's ResNet zero_init_residual) when training from
# scratch. Below 1e-12 the std (1e-6) is negligible beside eps anyway.
_VAR_FLOOR = 1e-12


def sge(x, weight, bias, groups, eps=1e-5):
    """The SGE function (module docstring): ``x * sigmoid(gamma * c_hat + beta)`` per group.

    Args:
        x (Tensor): ``[N, C, H, W]``, ``C`` divisible by ``groups``.
        weight (Tensor): ``gamma``, ``[groups]``.
        bias (Tensor): ``beta``, ``[groups]``.
        groups (int): Number of channel groups ``G``.
        eps (float): Added to the standard deviation. Defaults to 1e-5.

    Returns:
        tuple[Tensor, Tensor]: The output ``[N, C, H, W]`` and the gate
        ``sigmoid(a)``, ``[N, G, H, W]``, in ``x``'s dtype.
    """
    n, c, h, w = x.shape
    m = h * w
    # Statistics in float32 (float64 stays float64) with autocast off; only the
    # gate is cast back to x's dtype.
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    with torch.autocast(device_type=x.device.type, enabled=False):
        xg = x.reshape(n * groups, c // groups, m)  # [N*G, C/G, HW]
        xa = xg.to(acc)
        mean = xa.mean(dim=2, keepdim=True)  # [N*G, C/G, 1]  g = mean_i x_i
        sim = torch.bmm(mean.transpose(1, 2), xa)  # [N*G, 1, HW]  c_i = g . x_i
        sim = sim - sim.mean(dim=2, keepdim=True)
        var = sim.square().sum(dim=2, keepdim=True) / max(m - 1, 1)  # unbiased
        std = var.clamp_min(_VAR_FLOOR).sqrt()
        c_hat = (sim / (std + eps)).view(n, groups, h, w)
        a = c_hat * weight.to(acc).view(1, groups, 1, 1) + bias.to(acc).view(1, groups, 1, 1)
        gate = torch.sigmoid(a).to(x.dtype)  # [N, G, H, W]
        out = xg * gate.view(n * groups, 1, m)  # [N*G, C/G, HW]
    return out.view(n, c, h, w), gate


@MODELS.register_module()
class SGE(BaseModule):
    """Spatial Group-wise Enhance plugin.

    Args:
        in_channels (int): Channels of the input feature map. Must be divisible
            by ``groups``.
        groups (int): Number of channel groups ``G``. Defaults to 64, the
            paper's setting for ResNet.
        eps (float): Added to the standard deviation in the normalisation.
            Defaults to 1e-5.
        init_cfg (dict | list[dict], optional): mmengine init config. The
            paper's init (gamma 0, beta 1) is applied by ``init_weights()``
            regardless. Defaults to None.

    Note:
        Shape preserving, so it fits any plugin position of mmdet/mmseg
        ``ResNet``; the paper puts it after the last BatchNorm of every
        bottleneck (``position='after_conv3'``). It adds only ``2 * groups``
        parameters. At init it scales the features by ``sigmoid(1)`` ~= 0.731
        everywhere.

    Example:
        >>> import torch
        >>> from mmplug.plugins import SGE
        >>> sge = SGE(in_channels=256, groups=64)
        >>> sge(torch.randn(2, 256, 28, 28)).shape
        torch.Size([2, 256, 28, 28])

        In an mmdet/mmseg ResNet config::

            plugins=[dict(cfg=dict(type='SGE', groups=64),
                          stages=(True, True, True, True),
                          position='after_conv3')]
    """

    _abbr_ = 'sge'
    #: The paper's placement, filled in by the tools for the short plugin form.
    default_position = 'after_conv3'

    def __init__(self, in_channels, groups=64, eps=1e-5, init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        for name, value in (('in_channels', in_channels), ('groups', groups)):
            check_int('SGE', name, value)
        if in_channels % groups != 0:
            raise ValueError(
                f'SGE: in_channels ({in_channels}) must be divisible by groups ({groups}); '
                f'choose groups among the divisors of {in_channels}')
        if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not eps > 0:
            raise ValueError(f'SGE: eps must be a positive float, got {eps!r}')
        self.in_channels = in_channels
        self.groups = groups
        self.eps = float(eps)
        self.weight = torch.nn.Parameter(torch.zeros(groups))  # gamma
        self.bias = torch.nn.Parameter(torch.ones(groups))  # beta

    def init_weights(self):
        """Paper/authors' init: gamma = 0, beta = 1.

        Runs after the host's ``init_cfg`` (mmengine calls children's
        ``init_weights`` last); a ``Pretrained`` init of the whole model that
        holds SGE keys still wins, as mmengine skips re-initialising then.
        """
        super().init_weights()
        torch.nn.init.zeros_(self.weight)
        torch.nn.init.ones_(self.bias)

    def gate(self, x):
        """The gate ``sigmoid(gamma * c_hat + beta)`` that multiplies each group, ``[N, G, H, W]``."""
        check_input('SGE', x, self.in_channels)
        return sge(x, self.weight, self.bias, self.groups, self.eps)[1]

    def forward(self, x):
        check_input('SGE', x, self.in_channels)
        return sge(x, self.weight, self.bias, self.groups, self.eps)[0]
