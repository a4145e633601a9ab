"""CoordConv as a shape-preserving residual plugin.

Liu, Lehman, Molino, Such, Frank, Sergeev, Yosinski. "An Intriguing Failing of
Convolutional Neural Networks and the CoordConv Solution", NeurIPS 2018.
https://arxiv.org/abs/1807.03247

The paper's CoordConv layer convolves ``[x; coordinates]`` (see
``mmplug.conv.coord_conv.CoordConv2d``, the conv replacement, which shares
the coordinate helper with this plugin). To add coordinates at a plugin
position of an existing backbone without changing its convolutions, this
plugin computes::

    out = x + Conv_k([x; x_coord; y_coord (; r)])      Conv_k: C + K -> C

with the projection ``Conv_k`` (``k = 1`` by default) zero-initialised, so the
plugin is the identity at init and a pretrained backbone is undisturbed at
step 0. Coordinates are in ``[-1, 1]`` per axis from the runtime shape
(0 on a size-1 axis), ``r = sqrt(x^2 + y^2)``.

Deviation: the residual form and the zero init are ours, not the paper's (the
paper replaces a conv by CoordConv; it has no plugin). With a 1x1 projection
the coordinate part is a learned, position-dependent bias that is linear in
``x``, ``y`` (and ``r``); a 3x3 projection (``kernel_size=3``) also mixes
neighbouring features.
"""
import torch
from mmcv.cnn import build_conv_layer
from mmengine.model import BaseModule
from torch import nn

from mmplug.conv.coord_conv import _coord_channels, _num_coords
from mmplug.registry import MODELS
from mmplug.utils.validation import check_cfg, check_input, check_int


@MODELS.register_module()
class CoordConvPlugin(BaseModule):
    """CoordConv residual plugin.

    Args:
        in_channels (int): Channels of the input feature map.
        kernel_size (int): Odd kernel size of the projection (the map keeps
            its size). Defaults to 1.
        with_r (bool): Also append the radius channel ``r``. Defaults to False.
        conv_cfg (dict, optional): mmcv config of the projection conv; None
            for ``nn.Conv2d``. Defaults to None.
        init_cfg (dict | list[dict], optional): mmengine init config. The
            zero init of the projection is applied by ``init_weights()``
            regardless. Defaults to None.

    Note:
        Shape preserving, so it fits any plugin position of mmdet/mmseg
        ``ResNet`` (``after_conv2`` keeps it on the narrow width). It is the
        identity at init (projection weight and bias 0). It adds
        ``C * (C + K) * k * k + C`` parameters (``K`` = 2, or 3 with ``r``):
        66,304 at ``C = 256``, ``k = 1``; 4.2M at ``C = 2048``, so prefer the
        narrow positions.

    Example:
        >>> import torch
        >>> from mmplug.plugins.coord_conv import CoordConvPlugin
        >>> plugin = CoordConvPlugin(in_channels=256)
        >>> plugin(torch.randn(2, 256, 28, 28)).shape
        torch.Size([2, 256, 28, 28])

        In an mmdet/mmseg ResNet config::

            plugins=[dict(cfg=dict(type='CoordConvPlugin'),
                          stages=(False, False, False, True),
                          position='after_conv2')]
    """

    _abbr_ = 'coord_conv'
    #: No ResNet plugin position is the paper's.
    default_position = None
    position_note = ("the paper adds coordinates to a conv's input; 'after_conv2' keeps "
                     'the extra conv narrow')

    def __init__(self, in_channels, kernel_size=1, with_r=False, *, conv_cfg=None,
                 init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        check_int('CoordConvPlugin', 'in_channels', in_channels)
        if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) \
                or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f'CoordConvPlugin: kernel_size must be a positive odd int (the map '
                             f'keeps its size), got {kernel_size!r}')
        if not isinstance(with_r, bool):
            raise ValueError(f'CoordConvPlugin: with_r must be a bool, got {with_r!r}')
        check_cfg('CoordConvPlugin', 'conv_cfg', conv_cfg)
        self.in_channels = in_channels
        self.kernel_size = kernel_size
        self.with_r = with_r
        self.proj = build_conv_layer(conv_cfg, in_channels + _num_coords(with_r), in_channels,
                                     kernel_size, padding=kernel_size // 2, bias=True)
        self._zero_init()

    def _zero_init(self):
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def init_weights(self):
        """Zero the projection (identity at init), after the host's ``init_cfg``."""
        super().init_weights()
        self._zero_init()

    def forward(self, x):
        check_input('CoordConvPlugin', x, self.in_channels)
        coords = _coord_channels(x, self.with_r)  # [N, K, H, W]
        return x + self.proj(torch.cat([x, coords], dim=1))  # [N, C, H, W]
