"""Adaptively Spatial Feature Fusion (ASFF).

Liu, Huang, Wang. "Learning Spatial Fusion for Single-Shot Object Detection",
arXiv 2019. https://arxiv.org/abs/1911.09516

Output level ``l`` fuses every level ``k`` resized to it, with per-pixel
weights that sum to 1 over the levels (Sec. 3.2, Eqs. 1-2)::

    y^l_ij      = sum_k alpha^{k,l}_ij * x^{k->l}_ij
    alpha^{k,l} = exp(lambda^{k,l}) / sum_m exp(lambda^{m,l})
    out^l       = ConvModule3x3(y^l)

Resizing: down by 2, a 3x3 stride-2 ConvModule; down by 4, a 3x3 stride-2
max-pool first; up, nearest interpolation. Logits: each ``x^{k->l}`` through a
1x1 ConvModule to ``compress_channels`` (16), concatenated, one 1x1 conv.
``variant='release'`` (default) is the authors' code (GOATmessi8/ASFF,
``models/network_blocks.py``): a level of the target's width is up-sampled as
it is. ``variant='paper'`` (mmplug < 0.2; its checkpoints raise a
``ValueError`` in the other variant) adds a 1x1 conv-BN-LeakyReLU before every
up-sampling, as the paper's text describes.

Deviations from the authors' code (three levels, ratios 2 and 4):

* Any number of levels ``N >= 2`` and power-of-2 stride ratios: down by
  ``r >= 4`` is a max-pool of stride ``r/2`` (kernel ``r/2 + 1``, padding
  ``r/4``: the release's at ``r = 4``), then the 3x3 stride-2 conv; equal
  strides of different widths are joined by a 1x1 ConvModule.
* Run-time size matching: up-sampling to the target's exact ``H, W`` (the
  release: a fixed ``scale_factor``), strided paths off by a pixel cropped or
  replicate-padded at the bottom-right.
* Zero-initialised logit conv (every ``alpha = 1/N``); the release keeps
  PyTorch's default init.
* Under autocast the logit conv and the softmax run in float32.

The weight compression and the output 3x3 ConvModule are the release's; they
deviate only from the paper's text (a 1x1 conv per logit, no output conv).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import ConvModule
from mmengine.model import BaseModule, ModuleList, constant_init

from mmplug.layers import check_cfg, check_int, check_variant_keys
from mmplug.necks.per_level import check_in_channels, check_inputs
from mmplug.registry import MODELS


def _match_size(x, size):
    """Crop or replicate-pad ``x`` at the bottom/right to the spatial ``size``."""
    h, w = size
    x = x[..., :h, :w]
    return F.pad(x, (0, w - x.shape[-1], 0, h - x.shape[-2]), mode='replicate')


class _Resize(BaseModule):
    """Resize a source level to a target level; ``ratio = target_stride / source_stride``."""

    def __init__(self, in_channels, out_channels, ratio, compress_upsampled, conv_cfg, norm_cfg,
                 act_cfg):
        super().__init__()
        convs = dict(conv_cfg=conv_cfg, norm_cfg=norm_cfg, act_cfg=act_cfg)
        self.upsample = ratio < 1
        self.pool = nn.Identity()
        if ratio <= 1 and in_channels == out_channels and not (ratio < 1 and compress_upsampled):
            self.conv = nn.Identity()
        elif ratio <= 1:
            # Up-sampling: compress at the coarse resolution, then interpolate.
            self.conv = ConvModule(in_channels, out_channels, 1, **convs)
        else:
            if ratio >= 4:
                # Output ceil(H / s) for stride s, like the strided convs below.
                s = int(ratio) // 2
                self.pool = nn.MaxPool2d(s + 1, stride=s, padding=s // 2)
            self.conv = ConvModule(in_channels, out_channels, 3, stride=2, padding=1, **convs)

    def forward(self, x, size):
        x = self.conv(self.pool(x))
        if self.upsample:
            return F.interpolate(x, size=size, mode='nearest')
        return _match_size(x, size)


class _Fusion(BaseModule):
    """The ASFF block of one output level: resize every level, weight, sum, 3x3 conv."""

    def __init__(self, in_channels, out_channels, strides, level, compress_channels,
                 compress_upsampled, conv_cfg, norm_cfg, act_cfg):
        super().__init__()
        convs = dict(conv_cfg=conv_cfg, norm_cfg=norm_cfg, act_cfg=act_cfg)
        channels = in_channels[level]
        num_levels = len(in_channels)
        self.resize = ModuleList([
            _Resize(c, channels, strides[level] / s, compress_upsampled, **convs)
            for c, s in zip(in_channels, strides)
        ])
        self.weight_compress = ModuleList([
            ConvModule(channels, compress_channels, 1, **convs) for _ in range(num_levels)
        ])
        self.weight_logits = nn.Conv2d(num_levels * compress_channels, num_levels, 1)
        self.expand = ConvModule(channels, out_channels, 3, padding=1, **convs)

    def resized(self, inputs, size):
        """``x^{k->l}`` for every source level ``k``: a list of ``[B, C_l, H_l, W_l]``."""
        return [resize(x, size) for resize, x in zip(self.resize, inputs)]

    def weights(self, resized):
        """``alpha^{., l}``: float32 ``[B, N, H_l, W_l]``, softmax over the ``N`` levels."""
        z = torch.cat([conv(x) for conv, x in zip(self.weight_compress, resized)], dim=1)
        # Logits in the parameters' dtype (float32 under autocast), float32 softmax.
        with torch.autocast(device_type=z.device.type, enabled=False):
            logits = self.weight_logits(z.to(self.weight_logits.weight.dtype))
        return logits.float().softmax(dim=1)

    def forward(self, inputs, size):
        resized = self.resized(inputs, size)
        alpha = self.weights(resized)  # [B, N, H_l, W_l]
        # Eq. 1: y^l = sum_k alpha^{k,l} * x^{k->l}   ([B, 1, H, W] * [B, C_l, H, W])
        fused = sum(alpha[:, k:k + 1].to(x.dtype) * x for k, x in enumerate(resized))
        return self.expand(fused)


def _per_level_channels(owner, out_channels, in_channels):
    num_levels = len(in_channels)
    if out_channels is None:
        return list(in_channels)
    if isinstance(out_channels, int) and not isinstance(out_channels, bool):
        return [check_int(owner, 'out_channels', out_channels)] * num_levels
    if isinstance(out_channels, (list, tuple)) and len(out_channels) == num_levels:
        return [check_int(owner, f'out_channels[{i}]', c) for i, c in enumerate(out_channels)]
    raise ValueError(f'{owner}: out_channels must be None, an int or a list of {num_levels} ints '
                     f'(one per level), got {out_channels!r}')


def _check_strides(owner, strides, num_levels):
    if strides is None:
        return [2**i for i in range(num_levels)]
    if not isinstance(strides, (list, tuple)) or len(strides) != num_levels:
        raise ValueError(f'{owner}: strides must be a list of {num_levels} ints (the feature '
                         f'stride of each input level), got {strides!r}')
    for i, s in enumerate(strides):
        check_int(owner, f'strides[{i}]', s)
    finest = min(strides)
    for i, s in enumerate(strides):
        ratio = s // finest
        if s % finest or ratio & (ratio - 1):
            raise ValueError(f'{owner}: the strides of any two levels must differ by a power of '
                             f'2, got strides={list(strides)} (strides[{i}] = {s} is not a '
                             f'power-of-2 multiple of {finest})')
    return list(strides)


@MODELS.register_module()
class ASFF(BaseModule):
    """Adaptively Spatial Feature Fusion neck (``N`` levels in, ``N`` levels out).

    Args:
        in_channels (list[int]): Channels of each input level (at least 2).
        out_channels (int | list[int], optional): Output channels, one int or
            one per level. Defaults to None (``in_channels``).
        strides (list[int], optional): Feature stride of each input level, in
            input order (powers of 2 apart). Defaults to None (``[1, 2, 4,
            ...]``); after ``YOLOV3Neck`` pass ``[32, 16, 8]``.
        compress_channels (int): Width before the logit conv. Defaults to 16.
        conv_cfg (dict, optional): Conv config of the ConvModules. Defaults to
            None.
        norm_cfg (dict, optional): Their norm. Defaults to ``dict(type='BN')``.
        act_cfg (dict, optional): Their activation. Defaults to
            ``dict(type='LeakyReLU', negative_slope=0.1)`` (YOLOv3's).
        init_cfg (dict | list[dict], optional): mmengine init config. Defaults
            to None.
        variant (str): ``'release'`` or ``'paper'``. Defaults to ``'release'``.

    Note:
        A neck after FPN (``neck=[dict(type='FPN', ...), dict(type='ASFF',
        ...)]``), YOLOV3Neck or a backbone; sizes that contradict ``strides``
        raise a ``ValueError``. Not the identity at init: level ``l`` is a
        fresh conv-BN-act of the average of the resized levels.

    Example:
        >>> import torch
        >>> from mmplug.necks.asff import ASFF
        >>> # After mmdet's FPN: 5 levels of 256 (strides 4..64), odd sizes ok
        >>> asff = ASFF(in_channels=[256] * 5).eval()
        >>> sizes = [(25, 19), (13, 10), (7, 5), (4, 3), (2, 2)]
        >>> outs = asff([torch.randn(1, 256, h, w) for h, w in sizes])
        >>> [tuple(o.shape) for o in outs]
        [(1, 256, 25, 19), (1, 256, 13, 10), (1, 256, 7, 5), (1, 256, 4, 3), (1, 256, 2, 2)]
        >>> # After mmdet's YOLOV3Neck: deepest level first
        >>> asff = ASFF(in_channels=[512, 256, 128], strides=[32, 16, 8]).eval()
        >>> x = [torch.randn(1, c, s, s) for c, s in [(512, 10), (256, 20), (128, 40)]]
        >>> [tuple(o.shape) for o in asff(x)]
        [(1, 512, 10, 10), (1, 256, 20, 20), (1, 128, 40, 40)]
        >>> # alpha of the 3 sources at each output level, summing to 1 over dim 1
        >>> [tuple(a.shape) for a in asff.fusion_weights(x)]
        [(1, 3, 10, 10), (1, 3, 20, 20), (1, 3, 40, 40)]

        In an mmdet config::

            neck=[dict(type='YOLOV3Neck', num_scales=3,
                       in_channels=[1024, 512, 256], out_channels=[512, 256, 128]),
                  dict(type='ASFF', in_channels=[512, 256, 128], strides=[32, 16, 8])]
    """

    #: See the module docstring.
    VARIANTS = ('release', 'paper')

    def __init__(self,
                 in_channels,
                 out_channels=None,
                 strides=None,
                 compress_channels=16,
                 conv_cfg=None,
                 norm_cfg=dict(type='BN'),
                 act_cfg=dict(type='LeakyReLU', negative_slope=0.1),
                 init_cfg=None,
                 *,
                 variant='release'):
        super().__init__(init_cfg=init_cfg)
        if variant not in self.VARIANTS:
            raise ValueError(f'ASFF: variant must be one of {self.VARIANTS}, got {variant!r}')
        self.variant = variant
        in_channels = check_in_channels('ASFF', in_channels)
        if len(in_channels) < 2:
            raise ValueError(f'ASFF: fuses several levels, so in_channels needs at least 2 '
                             f'levels, got {in_channels!r}')
        check_int('ASFF', 'compress_channels', compress_channels)
        for name, cfg in (('conv_cfg', conv_cfg), ('norm_cfg', norm_cfg), ('act_cfg', act_cfg)):
            check_cfg('ASFF', name, cfg)
        self.in_channels = in_channels
        self.out_channels = _per_level_channels('ASFF', out_channels, in_channels)
        self.strides = _check_strides('ASFF', strides, len(in_channels))
        self.compress_channels = compress_channels
        self.fusions = ModuleList([
            _Fusion(in_channels, self.out_channels[level], self.strides, level,
                    compress_channels, variant == 'paper', conv_cfg, norm_cfg, act_cfg)
            for level in range(len(in_channels))
        ])
        # Not via init_weights(): that would mark the module initialised and
        # mmengine would skip it after a host's init_cfg.
        self._reset_parameters()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        check_variant_keys(self, state_dict, prefix,
                           "ASFF before mmplug 0.2 was variant='paper'")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def init_weights(self):
        """Host ``init_cfg`` first, then ConvModule's He init, then zero logit convs."""
        super().init_weights()
        self._reset_parameters()

    def _reset_parameters(self):
        for fusion in self.fusions:
            constant_init(fusion.weight_logits, 0, bias=0)

    def _check(self, inputs):
        check_inputs('ASFF', inputs, self.in_channels)
        # Level sizes must agree with the strides: a level of stride s covering an
        # image extent E has ceil(E / s) or floor(E / s) pixels, so
        # |H_l * s_l - H_0 * s_0| < s_l + s_0 (same for W).
        s0, (h0, w0) = self.strides[0], inputs[0].shape[-2:]
        for level, (x, s) in enumerate(zip(inputs, self.strides)):
            if x.shape[0] != inputs[0].shape[0]:
                raise ValueError(f'ASFF: every level must have the batch size of level 0 '
                                 f'({inputs[0].shape[0]}), level {level} has {x.shape[0]} '
                                 f'(shapes {[list(x.shape) for x in inputs]})')
            h, w = x.shape[-2:]
            if abs(h * s - h0 * s0) >= s + s0 or abs(w * s - w0 * s0) >= s + s0:
                raise ValueError(
                    f'ASFF: level sizes {[list(x.shape[-2:]) for x in inputs]} do not match '
                    f'strides={self.strides}: level {level} is {h}x{w}, expected about '
                    f'{h0 * s0 / s:g}x{w0 * s0 / s:g} from level 0 (pass the feature stride of '
                    f'each input in input order, e.g. strides=[32, 16, 8] after YOLOV3Neck)')

    def fusion_weights(self, inputs):
        """The fusion weights ``alpha`` for ``inputs`` (for inspection/visualisation).

        Args:
            inputs (tuple[Tensor]): The ``N`` input maps, as for ``forward``.

        Returns:
            tuple[Tensor]: One float32 ``[B, N, H_l, W_l]`` map per output level
            ``l``; ``weights[l][:, k]`` is the weight of source level ``k``, and
            they sum to 1 over ``k`` at every position.
        """
        self._check(inputs)
        return tuple(
            fusion.weights(fusion.resized(inputs, x.shape[-2:]))
            for fusion, x in zip(self.fusions, inputs))

    def forward(self, inputs):
        """Fuse ``N`` maps ``[B, in_channels[l], H_l, W_l]`` into ``N`` maps
        ``[B, out_channels[l], H_l, W_l]`` (a tuple)."""
        self._check(inputs)
        return tuple(fusion(inputs, x.shape[-2:]) for fusion, x in zip(self.fusions, inputs))
