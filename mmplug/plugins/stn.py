"""Spatial Transformer on feature maps (STN).

Jaderberg, Simonyan, Zisserman, Kavukcuoglu. "Spatial Transformer Networks",
NeurIPS 2015. https://arxiv.org/abs/1506.02025

A localisation net regresses an affine ``A_theta`` from ``U``; target position
``(x_t, y_t)`` in ``[-1, 1]`` coordinates samples ``(x_s, y_s) = A_theta (x_t,
y_t, 1)`` (Eq. 1), bilinearly, zero outside (Eqs. 3-5, in pixels)::

    V_c(t) = sum_{n,m} U_c(n, m) max(0, 1 - |x_s - m|) max(0, 1 - |y_s - n|)

The paper leaves the localisation net to the task: here ``num_convs`` 3x3
stride-2 ``ConvModule`` s (width ``rd_ratio * C``), global average pool, one FC
to the 6 parameters. Init: FC weight 0, bias ``[1, 0, 0, 0, 1, 0]`` (the
paper's identity), so the output equals the input bit for bit.

Deviations:

* ``align_corners=False`` coordinates: pixel ``j`` is at ``(2j + 1 - W) / W``.
* Eq. 5 written out (four gathered neighbours), the source position taken as a
  displacement from the target pixel: exact at the identity, where
  ``F.grid_sample`` is off by rounding; backward keeps four neighbour maps.
* FC, grid and sampling in float32: a bf16 ``theta`` near 1 steps by 2^-7, up
  to half a pixel on a 256-wide map.
* With ``norm_cfg`` the BatchNorms follow the plugin's own train/eval mode, not
  the host's ``norm_eval`` (``mmplug.layers.norm_mode``); inside a
  ``frozen_stages`` stage the plugin is frozen at its init.
"""
import torch
import torch.nn.functional as F
from mmcv.cnn import ConvModule
from mmengine.model import BaseModule
from torch import nn

from mmplug.layers import (
    check_cfg,
    check_input,
    check_int,
    follow_module_mode,
    memory_format_of,
    reduced_channels,
)
from mmplug.registry import MODELS

_IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def _pixel_centres(size, like):
    # align_corners=False normalised coordinate of each pixel centre: (2j + 1 - n) / n.
    return (2 * torch.arange(size, device=like.device, dtype=like.dtype) + 1 - size) / size


def _affine_bilinear_sample(x, theta, padding_mode='zeros'):
    """Eqs. 1 and 5: sample ``x`` [N, C, H, W] at ``A_theta`` (u, v, 1), ``theta`` [N, 2, 3].

    Outside the map: 0 (``'zeros'``) or the border value (``'border'``).
    """
    n, c, h, w = x.shape
    a = theta - theta.new_tensor(_IDENTITY).view(1, 2, 3)  # [N, 2, 3], exactly 0 at identity
    a = a.view(n, 6, 1, 1)
    u = _pixel_centres(w, x).view(1, 1, w)
    v = _pixel_centres(h, x).view(1, h, 1)
    # Source position in pixels = target pixel + displacement (Eq. 1 minus identity).
    xs = torch.arange(w, device=x.device, dtype=x.dtype).view(1, 1, w) \
        + (a[:, 0] * u + a[:, 1] * v + a[:, 2]) * (w / 2)  # [N, H, W]
    ys = torch.arange(h, device=x.device, dtype=x.dtype).view(1, h, 1) \
        + (a[:, 3] * u + a[:, 4] * v + a[:, 5]) * (h / 2)  # [N, H, W]
    if padding_mode == 'border':
        xs, ys = xs.clamp(0, w - 1), ys.clamp(0, h - 1)
    x0, y0 = xs.floor(), ys.floor()
    wx1, wy1 = xs - x0, ys - y0
    flat = x.reshape(n, c, h * w)  # [N, C, HW]
    out = 0
    # Eq. 5 is non-zero at the four neighbours only. Each row/column is clamped once:
    # a repeated Clip of one tensor broke ONNX export (onnxscript 0.7, optimize=True).
    cols = [(xx, wx, xx.clamp(0, w - 1)) for xx, wx in ((x0, 1 - wx1), (x0 + 1, wx1))]
    for yy, wy in ((y0, 1 - wy1), (y0 + 1, wy1)):
        row = yy.clamp(0, h - 1) * w
        for xx, wx, col in cols:
            inside = (xx >= 0) & (xx <= w - 1) & (yy >= 0) & (yy <= h - 1)
            index = (row + col).long()  # [N, H, W]
            value = flat.gather(2, index.view(n, 1, h * w).expand(n, c, h * w))  # [N, C, HW]
            out = out + value * (wx * wy * inside).view(n, 1, h * w)
    return out.view(n, c, h, w)


@MODELS.register_module()
class STN(BaseModule):
    """Spatial transformer plugin (affine, on feature maps).

    Args:
        in_channels (int): Channels of the input feature map.
        rd_ratio (float): Localisation width as a fraction of ``in_channels``.
            Defaults to 1/8.
        rd_channels (int, optional): Explicit width. Defaults to None.
        rd_divisor (int): Round the width to a multiple of this. Defaults to 1.
        num_convs (int): 3x3 stride-2 localisation convs. Defaults to 2.
        padding_mode (str): 'zeros' (the paper's) or 'border'. Defaults to
            'zeros'.
        conv_cfg (dict, optional): Localisation conv config. Defaults to None.
        norm_cfg (dict, optional): Their norm. Defaults to None.
        act_cfg (dict, optional): Their activation. Defaults to
            ``dict(type='ReLU')``.
        init_cfg (dict | list[dict], optional): mmengine init config; the
            identity init is re-applied by ``init_weights()``. Defaults to None.

    Note:
        No ResNet position is the paper's; in a bottleneck it warps only the
        residual branch. Warped features move relative to the (unwarped) box or
        mask targets: consider a lower learning rate for the localisation net.

    Example:
        >>> import torch
        >>> from mmplug.plugins.stn import STN
        >>> stn = STN(in_channels=256)
        >>> stn(torch.randn(2, 256, 28, 28)).shape
        torch.Size([2, 256, 28, 28])

        In an mmdet/mmseg ResNet config (83,206 parameters at ``C = 256``)::

            plugins=[dict(cfg=dict(type='STN'), stages=(False, False, False, True),
                          position='after_conv3')]
    """

    _abbr_ = 'stn'
    #: No ResNet plugin position is the paper's.
    default_position = None
    position_note = 'where to warp depends on the task (class docstring)'

    def __init__(self,
                 in_channels,
                 rd_ratio=1 / 8,
                 rd_channels=None,
                 rd_divisor=1,
                 num_convs=2,
                 *,
                 padding_mode='zeros',
                 conv_cfg=None,
                 norm_cfg=None,
                 act_cfg=dict(type='ReLU'),
                 init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        check_int('STN', 'in_channels', in_channels)
        hidden = reduced_channels('STN', in_channels, rd_ratio, rd_channels, rd_divisor)
        check_int('STN', 'num_convs', num_convs)
        if padding_mode not in ('zeros', 'border'):
            raise ValueError(f"STN: padding_mode must be 'zeros' or 'border', "
                             f'got {padding_mode!r}')
        for name, cfg in (('conv_cfg', conv_cfg), ('norm_cfg', norm_cfg), ('act_cfg', act_cfg)):
            check_cfg('STN', name, cfg)
        self.in_channels = in_channels
        self.rd_channels = hidden
        self.padding_mode = padding_mode
        self.loc_convs = nn.Sequential(*[
            ConvModule(in_channels if i == 0 else hidden, hidden, 3, stride=2, padding=1,
                       conv_cfg=conv_cfg, norm_cfg=norm_cfg, act_cfg=act_cfg)
            for i in range(num_convs)
        ])
        self.loc_fc = nn.Linear(hidden, 6)
        self._identity_init()

    def _identity_init(self):
        nn.init.zeros_(self.loc_fc.weight)
        with torch.no_grad():
            self.loc_fc.bias.copy_(torch.tensor(_IDENTITY))

    def init_weights(self):
        """Regression layer to weight 0, bias = identity, after the host's ``init_cfg``."""
        super().init_weights()
        self._identity_init()

    def theta(self, x):
        """``A_theta`` for ``x``: float32 ``[N, 2, 3]`` in normalised coordinates."""
        feat = self.loc_convs(x).mean(dim=(2, 3))  # [N, C']
        with torch.autocast(device_type=x.device.type, enabled=False):
            return F.linear(feat.float(), self.loc_fc.weight.float(),
                            self.loc_fc.bias.float()).view(x.shape[0], 2, 3)

    def forward(self, x):
        check_input('STN', x, self.in_channels)
        follow_module_mode(self)
        theta = self.theta(x)  # [N, 2, 3]
        with torch.autocast(device_type=x.device.type, enabled=False):
            out = _affine_bilinear_sample(x.float(), theta, self.padding_mode)
        # The gathers build an NCHW output: a channels-last input gets a channels-last one.
        return out.to(x.dtype, memory_format=memory_format_of(x))
