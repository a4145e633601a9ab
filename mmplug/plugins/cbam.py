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

* Global max pooling is ``amax`` over H, W (a plain reduction), not adaptive
  max pooling, so the module exports to ONNX and compiles at any input size.
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

Implementation, for speed (same function, parameters, keys and gradients):

* Six full-size passes and one full-size allocation (the output) in forward:
  mean and max over H, W; ``F' = x * g``; max and mean over C of ``F'``;
  ``F' * s``, written into ``F'``'s memory. The avg and max descriptors go
  through the MLP in one batched call, as ``F.linear`` on the 1x1 convs'
  weights (2-5x faster than convolving 1x1 maps on CPU; the parameters and
  state-dict keys stay the convs', but forward hooks on ``fc1``/``fc2`` do
  not fire). The channel max reduces over 32 channel blocks first
  (``_channel_max``).
* In eager autograd three autograd functions do the full-size work. They
  save only the input and ``[N, C]`` / ``[N, H, W]`` tensors (0.12 MiB
  besides the input at 8x512x28x28, where autograd kept 12.4 MiB), recompute
  ``F'`` in backward, allocate two full-size tensors there where autograd
  allocated 14, and give ``amax``'s gradient (shared equally among tied
  maxima, as ``torch.amax``) from float masks. Double backward
  (``create_graph=True``) takes plain differentiable formulas. Under
  ``torch.jit.trace`` (ONNX), ``torch.export`` and ``torch.compile`` the
  module is plain tensor ops.

fightingcv-attention's ``CBAMBlock`` differs from the paper: MLP without biases,
spatial conv with bias and no BN, kernel 49 by default, and ``+ x`` at the end.
With ``norm_cfg=None``, the MLP biases at 0 and its kernel size, our output
equals its output minus ``x``.
"""
import math

import torch
import torch.nn.functional as F
from mmcv.cnn import build_activation_layer, build_norm_layer
from mmengine.model import BaseModule
from torch import nn

from mmplug.registry import MODELS
from mmplug.utils.channels import reduced_channels
from mmplug.utils.validation import check_cfg, check_input, check_int


def _channel_stats(x):
    """Global average and max over H, W, stacked on the batch axis for one MLP call."""
    # amax is a plain reduction: exports to ONNX and compiles at any input size.
    return torch.cat([x.mean(dim=(2, 3), keepdim=True),
                      x.amax(dim=(2, 3), keepdim=True)])  # [2N, C, 1, 1]


def _channel_max(x):
    """Max over channels, ``[N, C, H, W] -> [N, 1, H, W]``.

    PyTorch's CPU max over a non-innermost dim is slow when the rows it
    vectorises over are short: ``x.amax(1)`` took 0.41 ms at 8x512x28x28 and
    0.76 ms at 8x2048x7x7 on one core (a copy of ``x``: 0.48 / 0.06 ms).
    Reducing first across G = 32 channel blocks, over long contiguous rows,
    then across the ``C/G`` partial maxima took 0.25 / 0.065 ms. Max is exact
    in any order, so the result is bitwise ``x.amax(1)``.
    """
    n, c = x.shape[:2]
    groups = math.gcd(c, 32)
    if groups == 1 or not x.is_contiguous():
        return x.amax(dim=1, keepdim=True)
    part = x.view(n, groups, -1).amax(dim=1)  # [N, C/G * H * W]
    return part.view(n, c // groups, *x.shape[2:]).amax(dim=1, keepdim=True)


def _spatial_descriptor(x):
    """``[max_c F'; mean_c F']``: ``[N, C, H, W] -> [N, 2, H, W]``."""
    return torch.cat([_channel_max(x), x.mean(dim=1, keepdim=True)], dim=1)


def _channel_dot(t, g):
    """``sum_c t * g``: ``[N, C, H, W]``, ``[N, C, 1, 1] -> [N, 1, H, W]``."""
    n, c, h, w = t.shape
    if t.is_contiguous():  # a batched GEMV reads t once and writes no [N, C, H, W] temporary
        return torch.bmm(g.to(t.dtype).view(n, 1, c), t.view(n, c, h * w)).view(n, 1, h, w)
    return (t * g).sum(dim=1, keepdim=True)


def _times(x, s):
    """``x * s`` into ``x``'s memory (``x`` is a temporary), unless ``s`` promotes the dtype."""
    return x.mul_(s) if torch.result_type(x, s) == x.dtype else x * s


def _is_tracing():
    """Under jit.trace (ONNX), torch.export or torch.compile: plain ops only."""
    return torch.jit.is_tracing() or torch.compiler.is_compiling()


class _Scratch:
    """A full-size scratch buffer that one backward function hands to the next.

    Only memory is handed on, never values (those flow through autograd), so a
    backward pass that visits some of the functions only is still exact. It
    saves a fresh ``[N, C, H, W]`` allocation, whose page faults can cost more
    than the arithmetic on CPU.
    """

    __slots__ = ('buf', )

    def __init__(self):
        self.buf = None

    def take(self, like, dtype):
        buf, self.buf = self.buf, None
        if buf is None or buf.dtype != dtype or buf.shape != like.shape \
                or buf.stride() != like.stride():
            buf = torch.empty_like(like, dtype=dtype)
        return buf


class _ChannelStats(torch.autograd.Function):
    """``_channel_stats(x)``, and ``x`` again as the input of ``_GatedDescriptor``.

    Routing ``x`` through here hands this function ``_GatedDescriptor``'s part
    of ``dL/dx``, so it adds its own in place instead of autograd allocating
    the sum. Saves ``x`` and the ``[N, C, 1, 1]`` max.
    """

    @staticmethod
    def forward(ctx, x, scratch):
        ctx.set_materialize_grads(False)
        stats = _channel_stats(x)
        ctx.save_for_backward(x, stats[x.shape[0]:])
        ctx.scratch = scratch
        return stats, x

    @staticmethod
    def backward(ctx, gstats, gx):
        if gstats is None:
            return gx, None
        x, mx = ctx.saved_tensors
        n = x.shape[0]
        gavg, gmx = gstats[:n] / (x.shape[2] * x.shape[3]), gstats[n:]
        # amax shares its gradient equally among tied maxima (a constant channel ties
        # everywhere); a float mask, as bool tensors are slow on CPU.
        if torch.is_grad_enabled():  # create_graph: differentiable formulas
            mask = (x == mx).to(x.dtype)
            gstats = mask * (gmx / mask.sum(dim=(2, 3), keepdim=True)) + gavg
            return gstats if gx is None else gx + gstats, None
        mask = torch.eq(x, mx, out=ctx.scratch.take(x, x.dtype))
        mask.mul_(gmx / mask.sum(dim=(2, 3), keepdim=True)).add_(gavg)
        # gx: the buffer _GatedDescriptor returned, no other reader
        return mask if gx is None else gx.add_(mask), None


class _GatedDescriptor(torch.autograd.Function):
    """``F' = x * g`` and its spatial descriptor; saves ``x``, ``g`` and the channel max."""

    @staticmethod
    def forward(ctx, x, g, scratch):
        ctx.set_materialize_grads(False)
        x1 = x * g  # F', [N, C, H, W]
        desc = _spatial_descriptor(x1)  # [N, 2, H, W]
        ctx.save_for_backward(x, g, desc[:, :1])
        ctx.scratch = scratch
        return desc, x1

    @staticmethod
    def backward(ctx, gdesc, gx1):
        if gdesc is None and gx1 is None:
            return None, None, None
        x, g, dmax = ctx.saved_tensors
        dtype = torch.result_type(x, g)
        if torch.is_grad_enabled():  # create_graph: differentiable formulas
            if gdesc is not None:
                mask = (x * g == dmax).to(dtype)
                gdesc = mask * (gdesc[:, :1] / mask.sum(dim=1, keepdim=True)) \
                    + gdesc[:, 1:] / x.shape[1]
                gx1 = gdesc if gx1 is None else gx1 + gdesc
            return gx1 * g, (gx1 * x).sum(dim=(2, 3), keepdim=True), None
        tmp = ctx.scratch.take(x, dtype)
        if gdesc is not None:
            torch.mul(x, g, out=tmp)  # F' again, bitwise as in forward
            torch.eq(tmp, dmax, out=tmp)  # 1 where F' attains its channel max
            coef = gdesc[:, :1] / tmp.sum(dim=1, keepdim=True)
            # dL/dF' (in the buffer _GatedProduct returned it in, no other reader)
            gx1 = tmp * coef if gx1 is None else gx1.addcmul_(tmp, coef)
            gx1.add_(gdesc[:, 1:] / x.shape[1])
        gg = torch.mul(x, gx1, out=tmp).sum(dim=(2, 3), keepdim=True)
        ctx.scratch.buf = tmp
        return gx1.mul_(g) if ctx.needs_input_grad[0] else None, gg, None


class _GatedProduct(torch.autograd.Function):
    """``F'' = F' * s``, in ``F'``'s memory; saves ``x``, ``g`` and ``s`` (``F' = x * g``)."""

    @staticmethod
    def forward(ctx, x, g, s, x1):
        if torch.result_type(x1, s) == x1.dtype:
            ctx.mark_dirty(x1)
        ctx.save_for_backward(x, g, s)
        return _times(x1, s)

    @staticmethod
    def backward(ctx, go):
        # F' was overwritten: dL/ds = sum_c go * F' takes F' = x * g (bitwise the same).
        # x and g get their gradients through F' (_GatedDescriptor).
        x, g, s = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: differentiable formulas
            return None, None, (go * x * g).sum(dim=1, keepdim=True), go * s
        buf = torch.mul(go, x)
        gs = _channel_dot(buf, g)
        return None, None, gs, torch.mul(go, s, out=buf)  # dL/dF'


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

    def _channel_gate(self, stats):
        """``M_c``: the shared MLP on ``[avg; max]`` (``[2N, C, 1, 1]``), summed."""
        # Both descriptors in one call; the 1x1 convs' weights as F.linear
        # (measured 2-5x faster than convolving 1x1 maps, and no oneDNN call).
        h = F.linear(stats.flatten(1), self.fc1.weight.flatten(1), self.fc1.bias)
        h = self.act(h[:, :, None, None]).flatten(1)  # [2N, C/r], the act sees 1x1 maps as before
        h = F.linear(h, self.fc2.weight.flatten(1), self.fc2.bias)  # [2N, C]
        n = h.shape[0] // 2
        return torch.sigmoid(h[:n] + h[n:])[:, :, None, None]  # [N, C, 1, 1]

    def _spatial_gate(self, desc):
        """``M_s``: ``[N, 2, H, W] -> [N, 1, H, W]``."""
        return torch.sigmoid(self.spatial_norm(self.spatial_conv(desc)))

    def forward(self, x):
        check_input('CBAM', x, self.in_channels)
        tracing = _is_tracing()
        if torch.is_grad_enabled() and not tracing:
            # Eager autograd: the same ops, in autograd functions that save only
            # x and [N, C] / [N, H, W] tensors (autograd would keep F').
            scratch = _Scratch()
            stats, x_ = _ChannelStats.apply(x, scratch)
            g = self._channel_gate(stats)
            desc, x1 = _GatedDescriptor.apply(x_, g, scratch)
            return _GatedProduct.apply(x, g, self._spatial_gate(desc), x1)
        x = x * self._channel_gate(_channel_stats(x))  # F' = M_c(F) * F
        s = self._spatial_gate(_spatial_descriptor(x))  # [N, 1, H, W]
        # Eager without autograd, F' is a temporary: the output reuses its memory.
        return x * s if tracing else _times(x, s)  # [N, C, H, W]
