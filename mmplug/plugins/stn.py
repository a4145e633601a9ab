"""Spatial Transformer on feature maps (STN).

Jaderberg, Simonyan, Zisserman, Kavukcuoglu. "Spatial Transformer Networks",
NeurIPS 2015. https://arxiv.org/abs/1506.02025

A spatial transformer (paper Sec. 3) has three parts:

1. a localisation network ``theta = f_loc(U)`` that regresses the parameters
   of a 2-D affine transform ``A_theta`` (2 x 3) from the input ``U``;
2. a grid generator (Eq. 1) that maps every target position ``(x_t, y_t)``,
   in normalised coordinates ``[-1, 1]``, to a source position
   ``(x_s, y_s) = A_theta (x_t, y_t, 1)``;
3. a bilinear sampler (Eqs. 3-5):
   ``V_c(t) = sum_{n,m} U_c(n, m) max(0, 1 - |x_s - m|) max(0, 1 - |y_s - n|)``
   with ``(x_s, y_s)`` in pixels, zero outside the map.

The paper leaves the localisation network to the task (fully connected or
convolutional, ending in a regression layer) and initialises its regression
layer to the identity transform. Here it is ``num_convs`` 3x3 stride-2
``ConvModule`` s (width ``rd_ratio * C``), a global average pool and one
fully connected layer to the 6 affine parameters.

Choices:

* The regression layer starts at weight 0 and bias ``[1, 0, 0, 0, 1, 0]``
  (the identity affine) and ``init_weights()`` restores that after the host's
  init, so ``theta`` is exactly the identity at init and the output equals
  the input bit for bit.
* Normalised coordinates follow ``align_corners=False`` (PyTorch's
  ``affine_grid``/``grid_sample`` convention): -1 and 1 are the outer edges of
  the border pixels, so target pixel ``j`` of a ``W``-wide map sits at
  ``u_j = (2j + 1 - W) / W`` at any size, 1 x 1 included.
* The sampler is Eq. 5 written out (four gathered neighbours), not
  ``F.grid_sample``. The source position is computed as a displacement from
  the target pixel, ``x_s = j + ((A_theta - I)(u, v, 1))_x * W / 2``, which is
  exactly ``j`` when ``theta`` is the identity; ``grid_sample`` recovers the
  pixel from a normalised grid with float rounding and at the identity
  returns the input only to ~1e-5 (at 64 x 64). Otherwise the two agree to
  float rounding (the tests compare them), at similar CPU speed (fwd + bwd at
  2x256x64x64: 40 ms vs 35 ms); backward keeps the four gathered neighbour
  maps (about 4x the input's memory, vs 1x).
* The regression layer, the grid and the sampling run in float32 whatever
  the input dtype: near 1 a bf16 ``theta`` or coordinate steps by 2^-7,
  which misplaces samples by up to half a pixel on a 256-wide map. The
  output is cast back to the input dtype.
"""
import torch
import torch.nn.functional as F
from mmcv.cnn import ConvModule
from mmengine.model import BaseModule
from torch import nn

from mmplug.registry import MODELS
from mmplug.utils.channels import reduced_channels
from mmplug.utils.validation import check_cfg, check_input, check_int

_IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def _pixel_centres(size, like):
    # align_corners=False normalised coordinate of each pixel centre: (2j + 1 - n) / n.
    return (2 * torch.arange(size, device=like.device, dtype=like.dtype) + 1 - size) / size


def _affine_bilinear_sample(x, theta, padding_mode='zeros'):
    """Paper Eqs. 1 and 5: sample ``x`` [N, C, H, W] at ``A_theta`` (u, v, 1).

    ``theta`` is [N, 2, 3] in normalised coordinates (``align_corners=False``);
    samples outside the map are 0 (``'zeros'``) or the border value
    (``'border'``). Everything in ``x``'s dtype.
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
    # Eq. 5: the kernel max(0, 1 - |x_s - m|) max(0, 1 - |y_s - n|) is non-zero
    # at the four neighbours only; neighbours outside the map contribute 0.
    # Each neighbour row/column is clamped once (not once per pair): ONNX export
    # with optimize=True (onnxscript 0.7) left a dangling input on a repeated
    # Clip of one tensor, and onnxruntime rejected the model.
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
        rd_ratio (float): Width of the localisation convs as a fraction of
            ``in_channels``. Defaults to 1/8.
        rd_channels (int, optional): Explicit localisation width; overrides
            ``rd_ratio``. Defaults to None.
        rd_divisor (int): Round the width from ``rd_ratio`` to a multiple of
            this. Defaults to 1.
        num_convs (int): Number of 3x3 stride-2 convs in the localisation
            network. Defaults to 2.
        padding_mode (str): Value of samples outside the map: 'zeros' (the
            paper's) or 'border' (the nearest border pixel). Defaults to
            'zeros'.
        conv_cfg (dict, optional): mmcv config of the localisation convs.
            Defaults to None (``nn.Conv2d``).
        norm_cfg (dict, optional): mmcv config of their norm. Defaults to None
            (none: batch size 1 on a 1x1 map works in training mode).
        act_cfg (dict, optional): mmcv config of their activation. Defaults
            to ``dict(type='ReLU')``.
        init_cfg (dict | list[dict], optional): mmengine init config. The
            identity init of the regression layer is applied by
            ``init_weights()`` regardless. Defaults to None.

    Note:
        Shape preserving, so it fits any plugin position of mmdet/mmseg
        ``ResNet``. As a plugin inside a bottleneck it warps the residual
        branch only; the shortcut is not warped. It is the identity at init
        (``theta`` exactly the identity affine), and its localisation convs
        receive no gradient until the regression weight moves off zero.
        ``C * C' * 9 + C' + (num_convs - 1) * (C' * C' * 9 + C') + 6 * C' + 6``
        parameters with ``C' = rd_ratio * C`` (83,206 at ``C = 256``,
        defaults).

        Warping a detection (or segmentation) feature map moves the features
        relative to the box (or mask) targets, which stay in the unwarped
        image frame: a head that reads position ``p`` after the STN sees
        what was at ``A_theta(p)`` before it. The network must learn to
        compensate for (or keep near the identity) any transform it applies;
        consider a lower learning rate for the localisation network.

    Example:
        >>> import torch
        >>> from mmplug.plugins.stn import STN
        >>> stn = STN(in_channels=256)
        >>> stn(torch.randn(2, 256, 28, 28)).shape
        torch.Size([2, 256, 28, 28])

        In an mmdet/mmseg ResNet config::

            plugins=[dict(cfg=dict(type='STN'),
                          stages=(False, False, False, True),
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

    def forward(self, x):
        check_input('STN', x, self.in_channels)
        n, c, h, w = x.shape
        feat = self.loc_convs(x).mean(dim=(2, 3))  # [N, C']
        with torch.autocast(device_type=x.device.type, enabled=False):
            # theta in float32: near 1, bf16 steps by 2^-7, up to half a pixel at W = 256.
            theta = F.linear(feat.float(), self.loc_fc.weight.float(),
                             self.loc_fc.bias.float()).view(n, 2, 3)  # [N, 2, 3], A_theta
            out = _affine_bilinear_sample(x.float(), theta, self.padding_mode)
        return out.to(x.dtype)  # [N, C, H, W]
