"""CoordConv: a convolution that also sees where it is.

Liu, Lehman, Molino, Such, Frank, Sergeev, Yosinski. "An Intriguing Failing of
Convolutional Neural Networks and the CoordConv Solution", NeurIPS 2018.
https://arxiv.org/abs/1807.03247

CoordConv (Sec. 3, Fig. 3) appends coordinate channels to the input and
convolves as usual: ``x_j = (2j - (W - 1)) / max(W - 1, 1)``, ``y_i`` alike, in
``[-1, 1]``, optionally ``r = sqrt(x^2 + y^2)``, in the order ``[x, y, r]``.
Init: zero weights on the coordinates, so the layer equals the plain conv; a
plain ``nn.Conv2d`` checkpoint loads strictly, coordinate weights zero-filled.

Deviations:

* Coordinates from the runtime shape, each axis normalised on its own (the
  authors' release normalised non-square inputs wrongly); 0 on a size-1 axis;
  ``r`` in ``[0, sqrt(2)]`` (the paper fixes no scale).
* With ``groups > 1`` every group sees the coordinates (the paper only has
  ``groups = 1``): weight ``[out, in / groups + K, kh, kw]``.
"""
import torch
from torch import nn

from mmplug.layers import (
    check_bool,
    check_conv_channels,
    check_conv_input,
    check_int_pair,
    coord_channels,
    num_coords,
)
from mmplug.registry import MODELS


@MODELS.register_module()
class CoordConv2d(nn.Conv2d):
    """CoordConv as a drop-in ``nn.Conv2d`` (a subclass with its signature).

    Args:
        in_channels (int): Input (feature) channels.
        out_channels (int): Output channels.
        kernel_size (int | tuple[int, int]): Kernel size.
        stride (int | tuple[int, int]): Stride. Defaults to 1.
        padding (int | tuple[int, int] | str): Padding. Defaults to 0.
        dilation (int | tuple[int, int]): Dilation. Defaults to 1.
        groups (int): Groups; every group sees the coordinates. Defaults to 1.
        bias (bool): Add a bias. Defaults to True.
        padding_mode, device, dtype: As ``nn.Conv2d``.
        with_r (bool): Also append ``r``. Defaults to False (the paper's layer).

    Note:
        ``conv_cfg=dict(type='CoordConv2d')`` (``ConvModule``, mmdet's FPN and
        heads, ResNets) or ``dcn=dict(type='CoordConv2d',
        fallback_on_stride=False)``. The coordinate zeros survive a host's
        ``init_cfg`` where mmengine calls ``init_weights()`` (a direct child of
        a ``BaseModule``), not inside ``ConvModule`` or ``nn.Sequential``.
        Conv/BN fusion is exact.

    Example:
        >>> import torch
        >>> from mmplug.conv.coord_conv import CoordConv2d
        >>> conv = CoordConv2d(64, 128, 3, stride=2, padding=1)
        >>> conv(torch.randn(2, 64, 28, 28)).shape
        torch.Size([2, 128, 14, 14])
    """

    _abbr_ = 'coord_conv'

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 dilation=1, groups=1, bias=True, padding_mode='zeros', device=None,
                 dtype=None, *, with_r=False):
        owner = type(self).__name__
        check_conv_channels(owner, in_channels, out_channels, groups)
        # nn.Conv2d accepts some of these and fails in forward (or inside torch).
        for name, value in (('kernel_size', kernel_size), ('stride', stride),
                            ('dilation', dilation)):
            check_int_pair(owner, name, value)
        if isinstance(padding, str):
            if padding not in ('same', 'valid'):
                raise ValueError(f"{owner}: padding must be 'same', 'valid', an int >= 0 or a "
                                 f'pair of them, got {padding!r}')
            if padding == 'same' and check_int_pair(owner, 'stride', stride) != (1, 1):
                raise ValueError(f"{owner}: padding='same' needs stride 1, got stride "
                                 f'{stride!r}')
        else:
            check_int_pair(owner, 'padding', padding, 0)
        if padding_mode not in ('zeros', 'reflect', 'replicate', 'circular'):
            raise ValueError(f"{owner}: padding_mode must be 'zeros', 'reflect', 'replicate' "
                             f"or 'circular', got {padding_mode!r}")
        check_bool(owner, 'with_r', with_r)
        check_bool(owner, 'bias', bias)
        coords = num_coords(with_r)
        # Each group gets the K coordinate channels: weight [out, in/groups + K, kh, kw].
        super().__init__(in_channels + groups * coords, out_channels, kernel_size, stride,
                         padding, dilation, groups, bias, padding_mode, device, dtype)
        self.in_channels = in_channels  # the feature channels the layer takes
        self.with_r = with_r
        self.num_coords = coords
        self._zero_coord_weights()

    def _zero_coord_weights(self):
        with torch.no_grad():
            self.weight[:, self.in_channels // self.groups:].zero_()

    def init_weights(self):
        """Zero the coordinate weights; keep the host's init of the rest."""
        self._zero_coord_weights()

    def extra_repr(self):
        return super().extra_repr() + f', with_r={self.with_r}'

    def _conv_forward(self, input, weight, bias):
        # Not forward: mmcv's efficient_conv_bn_eval calls this with the fused weight.
        check_conv_input(type(self).__name__, input, self.in_channels, self.kernel_size,
                         self.padding, self.dilation)
        n, c, h, w = input.shape
        if self.padding_mode in ('reflect', 'circular') and self.padding != 'valid' and any(
                p > s - (self.padding_mode == 'reflect')
                for s, p in zip((h, w), self._reversed_padding_repeated_twice[::-2])):
            raise ValueError(f"{type(self).__name__}: padding_mode={self.padding_mode!r} needs "
                             f'the input larger than the padding {self.padding}, got input '
                             f'shape {tuple(input.shape)}')
        g, k = self.groups, self.num_coords
        coords = coord_channels(input, self.with_r)  # [N, K, H, W]
        x = torch.cat([input.reshape(n, g, c // g, h, w),
                       coords.unsqueeze(1).expand(n, g, k, h, w)], dim=2)  # [N, G, C/G + K, H, W]
        return super()._conv_forward(x.reshape(n, c + g * k, h, w), weight, bias)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # A plain conv's weight [out, in/groups, kh, kw]: append zero coordinate weights.
        key = prefix + 'weight'
        weight = state_dict.get(key)
        if isinstance(weight, torch.Tensor) and weight.dim() == 4:
            out, cin, kh, kw = self.weight.shape
            if tuple(weight.shape) == (out, cin - self.num_coords, kh, kw):
                zeros = weight.new_zeros(out, self.num_coords, kh, kw)
                state_dict[key] = torch.cat([weight, zeros], dim=1)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
