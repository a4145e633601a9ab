"""Spatial Group-wise Enhance (SGE).

Li, Hu, Yang. "Spatial Group-wise Enhance: Improving Semantic Feature Learning
in Convolutional Networks", arXiv 2019. https://arxiv.org/abs/1905.09646

Each of ``G`` channel groups holds ``m = H*W`` vectors ``x_i`` (Sec. 3)::

    g = mean_i x_i,  c_i = g . x_i                 descriptor, similarity
    c_hat_i = (c_i - mu_c) / (sigma_c + eps)       over the positions
    x_hat_i = x_i * sigmoid(gamma * c_hat_i + beta)

with one ``(gamma, beta)`` per group and ``sigma_c`` the unbiased std (``eps``
added to it, as in the authors' code). Init: ``gamma = 0``, ``beta = 1`` (the
authors' code), a gate of ``sigmoid(1) ~= 0.731`` everywhere. Placement: after
the last BN of every bottleneck, ``position='after_conv3'``.

Deviations (same function in fp32):

* Statistics in float32 (float64 stays) whatever the input dtype: in fp16 the
  squared deviations overflow.
* On a 1x1 map (std 0/0) the divisor is ``max(m - 1, 1)``: gate
  ``sigmoid(beta)``, not NaN.
* The variance is clamped at 1e-12 before the square root (NaN gradients of a
  constant map).
"""
import torch
from mmengine.model import BaseModule

from mmplug.layers import check_divisible, check_input, check_int
from mmplug.registry import MODELS

# d sqrt(v)/dv is infinite at v = 0 (a constant group map, e.g. behind a zero-init BN).
_VAR_FLOOR = 1e-12


def sge(x, weight, bias, groups, eps=1e-5):
    """The SGE function (module docstring) on ``x`` ``[N, C, H, W]``.

    ``weight``/``bias`` are ``gamma``/``beta`` ``[groups]``. Returns the output
    ``[N, C, H, W]`` (channels-last-contiguous if ``x`` is) and the gate ``[N, G, H, W]``, in
    ``x``'s dtype.
    """
    n, c, h, w = x.shape
    m = h * w
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    with torch.autocast(device_type=x.device.type, enabled=False):
        # A view of x in NCHW or channels-last: the output multiplies it and keeps its layout
        # (the statistics' matmul copies a channels-last x once, as a reshape to 3-D did).
        xg = x.unflatten(1, (groups, c // groups)).flatten(3)  # [N, G, C/G, HW]
        xa = xg.to(acc)
        mean = xa.mean(dim=3, keepdim=True)  # [N, G, C/G, 1]  g = mean_i x_i
        sim = torch.matmul(mean.transpose(2, 3), xa)  # [N, G, 1, HW]  c_i = g . x_i
        sim = sim - sim.mean(dim=3, keepdim=True)
        var = sim.square().sum(dim=3, keepdim=True) / max(m - 1, 1)  # unbiased
        std = var.clamp_min(_VAR_FLOOR).sqrt()
        c_hat = (sim / (std + eps)).view(n, groups, h, w)
        a = c_hat * weight.to(acc).view(1, groups, 1, 1) + bias.to(acc).view(1, groups, 1, 1)
        gate = torch.sigmoid(a).to(x.dtype)  # [N, G, H, W]
        out = xg * gate.view(n, groups, 1, m)  # [N, G, C/G, HW]
    return out.reshape(n, c, h, w), gate


@MODELS.register_module()
class SGE(BaseModule):
    """Spatial Group-wise Enhance plugin (``2 * groups`` parameters).

    Args:
        in_channels (int): Channels of the input, divisible by ``groups``.
        groups (int): Channel groups ``G``. Defaults to 64 (the paper's ResNet
            setting).
        eps (float): Added to the standard deviation. Defaults to 1e-5.
        init_cfg (dict | list[dict], optional): mmengine init config; the
            authors' init is re-applied by ``init_weights()``. Defaults to None.

    Example:
        >>> import torch
        >>> from mmplug.plugins import SGE
        >>> sge = SGE(in_channels=256, groups=64)
        >>> sge(torch.randn(2, 256, 28, 28)).shape
        torch.Size([2, 256, 28, 28])

        In an mmdet/mmseg ResNet config::

            plugins=[dict(cfg=dict(type='SGE', groups=64), position='after_conv3')]
    """

    _abbr_ = 'sge'
    #: The paper's placement, filled in by the tools for the short plugin form.
    default_position = 'after_conv3'

    def __init__(self, in_channels, groups=64, eps=1e-5, init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        for name, value in (('in_channels', in_channels), ('groups', groups)):
            check_int('SGE', name, value)
        check_divisible('SGE', 'in_channels', in_channels, 'groups', groups)
        if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not eps > 0:
            raise ValueError(f'SGE: eps must be a positive float, got {eps!r}')
        self.in_channels = in_channels
        self.groups = groups
        self.eps = float(eps)
        self.weight = torch.nn.Parameter(torch.zeros(groups))  # gamma
        self.bias = torch.nn.Parameter(torch.ones(groups))  # beta

    def init_weights(self):
        """The authors' init, gamma = 0 and beta = 1, after the host's ``init_cfg``."""
        super().init_weights()
        torch.nn.init.zeros_(self.weight)
        torch.nn.init.ones_(self.bias)

    def gate(self, x):
        """The gate ``sigmoid(gamma * c_hat + beta)`` multiplying each group, ``[N, G, H, W]``."""
        check_input('SGE', x, self.in_channels)
        return sge(x, self.weight, self.bias, self.groups, self.eps)[1]

    def forward(self, x):
        check_input('SGE', x, self.in_channels)
        return sge(x, self.weight, self.bias, self.groups, self.eps)[0]
