"""CoordConv: a convolution that also sees where it is.

Liu, Lehman, Molino, Such, Frank, Sergeev, Yosinski. "An Intriguing Failing of
Convolutional Neural Networks and the CoordConv Solution", NeurIPS 2018.
https://arxiv.org/abs/1807.03247

CoordConv (paper Sec. 3, Fig. 3) concatenates extra input channels that hold
the coordinates of each position to the layer's input and then convolves as
usual: an ``i`` (row) and a ``j`` (column) channel, each scaled to
``[-1, 1]``, and optionally an ``r`` channel, the distance from the centre.

Choices made here (the same function as the paper's layer otherwise):

* Coordinates come from the runtime shape of the input, so the layer works at
  any size. Each axis is normalised on its own: the column channel is
  ``x_j = (2j - (W - 1)) / max(W - 1, 1)`` and the row channel
  ``y_i = (2i - (H - 1)) / max(H - 1, 1)``, exactly -1 at the first and +1 at
  the last row/column of a non-square map (the authors' release normalised
  non-square inputs wrongly). A size-1 axis gets coordinate 0, with no
  division by zero. ``r = sqrt(x^2 + y^2)`` (in ``[0, sqrt(2)]``); the paper
  defines ``r`` as the distance from the centre and does not fix its scale.
* Channel order of the appended inputs: ``[x (varies along W), y (varies
  along H), r]``.
* The weights on the coordinate inputs start at zero, so the layer equals the
  plain conv on the remaining weights. A plain ``nn.Conv2d`` checkpoint
  (weight ``[out, in / groups, kh, kw]``) loads into ``CoordConv2d`` directly,
  strict loading included: the missing coordinate weights are filled with
  zeros, and the loaded layer computes exactly what the plain conv did.
* With ``groups > 1`` every group sees the coordinate channels (the paper
  only considers ``groups = 1``): the input is laid out as
  ``[x_g1, coords, x_g2, coords, ...]`` and the weight is
  ``[out, in / groups + K, kh, kw]`` with ``K`` = 2 or 3 coordinate channels.
"""
import torch
from torch import nn

from mmplug.registry import MODELS
from mmplug.utils.validation import check_conv_channels, check_conv_input, check_int_pair


def _axis_coords(size, like):
    # (2i - (n - 1)) / max(n - 1, 1): -1 .. 1 over the axis, 0 for a size-1 axis.
    # Computed in float32 (fp16/bf16 do not hold large indices exactly).
    pos = torch.arange(size, device=like.device, dtype=torch.float32)
    return ((2 * pos - (size - 1)) / max(size - 1, 1)).to(like.dtype)


def _coord_channels(x, with_r=False):
    """Coordinate channels for ``x`` of shape ``[N, C, H, W]``.

    Returns a ``[N, 2, H, W]`` tensor ``[x, y]`` (``[N, 3, H, W]`` with ``r``
    appended when ``with_r``) in ``x``'s dtype and device; ``x`` varies along
    W, ``y`` along H, both in ``[-1, 1]``. Shared by ``CoordConv2d`` and
    ``mmplug.plugins.coord_conv.CoordConvPlugin``.
    """
    n, _, h, w = x.shape
    xx = _axis_coords(w, x).view(1, 1, 1, w).expand(n, 1, h, w)  # [N, 1, H, W]
    yy = _axis_coords(h, x).view(1, 1, h, 1).expand(n, 1, h, w)  # [N, 1, H, W]
    channels = [xx, yy]
    if with_r:
        channels.append(torch.sqrt(xx * xx + yy * yy))
    return torch.cat(channels, dim=1)  # [N, 2 or 3, H, W]


def _num_coords(with_r):
    return 3 if with_r else 2


@MODELS.register_module()
class CoordConv2d(nn.Conv2d):
    """CoordConv as a drop-in ``nn.Conv2d`` (a subclass with its signature).

    Args:
        in_channels (int): Input channels (the features; the coordinate
            channels are added internally).
        out_channels (int): Output channels.
        kernel_size (int | tuple[int, int]): Kernel size.
        stride (int | tuple[int, int]): Stride. Defaults to 1.
        padding (int | tuple[int, int] | str): Padding. Defaults to 0.
        dilation (int | tuple[int, int]): Dilation. Defaults to 1.
        groups (int): Groups; every group also sees the coordinate channels.
            Defaults to 1.
        bias (bool): Add a bias. Defaults to True.
        padding_mode (str): As ``nn.Conv2d``. Defaults to 'zeros'.
        device (torch.device, optional): As ``nn.Conv2d``. Defaults to None.
        dtype (torch.dtype, optional): As ``nn.Conv2d``. Defaults to None.
        with_r (bool): Also append the radius channel ``r``. Defaults to False
            (the paper's default layer).

    Note:
        Same output shape as ``nn.Conv2d``; build it with
        ``conv_cfg=dict(type='CoordConv2d')`` in mmcv's ``ConvModule``, mmdet's
        ``FPN`` / mask heads, or mmdet/mmseg ``ResNet`` (or for conv2 only
        with ``dcn=dict(type='CoordConv2d', fallback_on_stride=False)``).
        ``weight`` is ``[out, in / groups + K, kh, kw]``, the coordinate
        columns last. At construction, after ``init_weights()`` and after
        loading a plain conv's checkpoint, the coordinate weights are zero and
        the layer equals the plain conv. mmengine calls ``init_weights()`` for
        a layer that is a direct child of a ``BaseModule`` (mmdet ResNet's
        ``conv1/2/3`` and stem), so there the zeros survive the host's
        ``init_cfg``; mmcv's ``ConvModule`` and ``nn.Sequential`` (ResNet's
        ``downsample``) do not forward ``init_weights()``, so a host
        ``init_cfg`` that reaches ``Conv2d`` (e.g. FPN's Xavier) initialises
        the coordinate weights there like the rest of a new layer. A
        pretrained plain checkpoint loaded afterwards zeroes them again. As
        for mmcv's DCN packs, ``ConvModule`` leaves the layer's own
        initialisation alone (no Kaiming re-init by ``ConvModule``). Conv/BN
        fusion (``mmcv.cnn.fuse_conv_bn``, ``efficient_conv_bn_eval``) is
        exact: the coordinates go through the same ``weight``.

    Example:
        >>> import torch
        >>> from mmplug.conv.coord_conv import CoordConv2d
        >>> conv = CoordConv2d(64, 128, 3, stride=2, padding=1)
        >>> conv(torch.randn(2, 64, 28, 28)).shape
        torch.Size([2, 128, 14, 14])

        In an mmdet FPN or ResNet config::

            neck=dict(type='FPN', in_channels=[256, 512, 1024, 2048],
                      out_channels=256, num_outs=5,
                      conv_cfg=dict(type='CoordConv2d'))
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
        if not isinstance(with_r, bool):
            raise ValueError(f'{owner}: with_r must be a bool, got {with_r!r}')
        if not isinstance(bias, bool):
            raise ValueError(f'{owner}: bias must be a bool, got {bias!r}')
        num_coords = _num_coords(with_r)
        # Each group gets the K coordinate channels: weight [out, in/groups + K, kh, kw].
        super().__init__(in_channels + groups * num_coords, out_channels, kernel_size, stride,
                         padding, dilation, groups, bias, padding_mode, device, dtype)
        self.in_channels = in_channels  # the feature channels the layer takes
        self.with_r = with_r
        self.num_coords = num_coords
        self._zero_coord_weights()

    def _zero_coord_weights(self):
        with torch.no_grad():
            self.weight[:, self.in_channels // self.groups:].zero_()

    def init_weights(self):
        """Zero the weights on the coordinate inputs.

        Keeps whatever the host's ``init_cfg`` put into the feature weights
        and the bias; the layer then equals that plain conv.
        """
        self._zero_coord_weights()

    def extra_repr(self):
        return super().extra_repr() + f', with_r={self.with_r}'

    def _conv_forward(self, input, weight, bias):
        # Overriding _conv_forward (not forward) keeps conv/BN fusion exact:
        # mmcv's efficient_conv_bn_eval calls it with the fused weight.
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
        coords = _coord_channels(input, self.with_r)  # [N, K, H, W]
        x = torch.cat([input.reshape(n, g, c // g, h, w),
                       coords.unsqueeze(1).expand(n, g, k, h, w)], dim=2)  # [N, G, C/G + K, H, W]
        return super()._conv_forward(x.reshape(n, c + g * k, h, w), weight, bias)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # A plain conv's weight [out, in/groups, kh, kw]: append zero weights on the
        # coordinate inputs so the loaded layer computes what the plain conv did.
        # (Mutating state_dict here is what torch's load pre-hooks do too.)
        key = prefix + 'weight'
        weight = state_dict.get(key)
        if isinstance(weight, torch.Tensor) and weight.dim() == 4:
            out, cin, kh, kw = self.weight.shape
            if tuple(weight.shape) == (out, cin - self.num_coords, kh, kw):
                zeros = weight.new_zeros(out, self.num_coords, kh, kw)
                state_dict[key] = torch.cat([weight, zeros], dim=1)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
