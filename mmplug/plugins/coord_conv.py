"""CoordConv as a shape-preserving residual plugin.

Liu, Lehman, Molino, Such, Frank, Sergeev, Yosinski. "An Intriguing Failing of
Convolutional Neural Networks and the CoordConv Solution", NeurIPS 2018.
https://arxiv.org/abs/1807.03247

The paper's layer convolves ``[x; coordinates]`` (``CoordConv2d``). This plugin
adds coordinates at a plugin position without changing the backbone's convs::

    out = x + Conv_k([x; x_coord; y_coord (; r)])      Conv_k: C + K -> C

Coordinates in ``[-1, 1]`` per axis from the runtime shape, ``r = sqrt(x^2 +
y^2)``. Init: ``Conv_k`` zero, so the plugin is the identity.

Deviations: the residual form and the zero init are ours (the paper only
replaces convs); with ``k = 1`` the coordinate part is a learned bias linear in
``x``, ``y`` (and ``r``).
"""
import torch
from mmcv.cnn import build_conv_layer
from mmengine.model import BaseModule
from torch import nn

from mmplug.layers import (
    check_bool,
    check_cfg,
    check_input,
    check_int,
    check_odd,
    coord_channels,
    num_coords,
)
from mmplug.registry import MODELS


@MODELS.register_module()
class CoordConvPlugin(BaseModule):
    """CoordConv residual plugin.

    Args:
        in_channels (int): Channels of the input feature map.
        kernel_size (int): Odd kernel size of the projection. Defaults to 1.
        with_r (bool): Also append the radius channel ``r``. Defaults to False.
        conv_cfg (dict, optional): Config of the projection. Defaults to None.
        init_cfg (dict | list[dict], optional): mmengine init config; the zero
            init is re-applied by ``init_weights()``. Defaults to None.

    Note:
        No ResNet position is the paper's; ``after_conv2`` keeps it narrow
        (``C * (C + K) * k * k + C`` parameters: 66,304 at ``C = 256``, ``k =
        1``; 4.2M at ``C = 2048``).

    Example:
        >>> import torch
        >>> from mmplug.plugins.coord_conv import CoordConvPlugin
        >>> plugin = CoordConvPlugin(in_channels=256)
        >>> plugin(torch.randn(2, 256, 28, 28)).shape
        torch.Size([2, 256, 28, 28])

        In an mmdet/mmseg ResNet config::

            plugins=[dict(cfg=dict(type='CoordConvPlugin'), position='after_conv2')]
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
        check_odd('CoordConvPlugin', 'kernel_size', kernel_size)
        check_bool('CoordConvPlugin', 'with_r', with_r)
        check_cfg('CoordConvPlugin', 'conv_cfg', conv_cfg)
        self.in_channels = in_channels
        self.kernel_size = kernel_size
        self.with_r = with_r
        self.proj = build_conv_layer(conv_cfg, in_channels + num_coords(with_r), in_channels,
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
        coords = coord_channels(x, self.with_r)  # [N, K, H, W]
        return x + self.proj(torch.cat([x, coords], dim=1))  # [N, C, H, W]
