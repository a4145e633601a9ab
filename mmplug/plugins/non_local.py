"""Non-local block, embedded-Gaussian form, with O(HW) memory.

Wang, Girshick, Gupta, He. "Non-local Neural Networks", CVPR 2018.
https://arxiv.org/abs/1711.07971

Every position attends to every position (Sec. 3.2-3.3):

1. ``theta = W_theta x``, ``phi = W_phi x``, ``g = W_g x``   1x1 convs to ``C'``
   channels (the paper: ``C' = C / 2``)
2. ``y_i = sum_j softmax_j(theta_i . phi_j) g_j``           embedded Gaussian
3. ``z = W_z y + x``                                        1x1 conv back to ``C``,
   residual

Same function, parameter names, ``_abbr_`` and init as mmcv's
``NonLocal2d(mode='embedded_gaussian')``, so ``type='NonLocal2d'`` can be
swapped for ``type='NonLocal'`` in a config and its checkpoints still load
(see the differences below):

* The attention runs through the fused flash kernel behind
  ``F.scaled_dot_product_attention``, which keeps only the per-row log-sum-exp
  and recomputes the attention in backward: memory kept for backward grows as
  ``O(HW)``, where mmcv's ``NonLocal2d`` keeps the ``HW x HW`` matrix (64 MiB
  per image for a 64x64 map).
* Training on CPU goes one step further where the attention outweighs a
  projection (at least ``C'`` keys: 4096 at 64x64 against ``C' = 512``): a
  custom autograd function keeps only ``x`` (mmcv's ``theta``/``phi``/``g``
  convs keep it too), the attention output (also the output conv's input: one
  storage) and the row log-sum-exp, and recomputes the three 1x1 projections
  from ``x`` in backward. Kept for backward beyond ``x`` and the parameters:
  16 MiB against mmcv's 192 MiB at 2x1024x64x64 (0.083x; the plain path keeps
  64 MiB), 2 MiB against 72 MiB at 1x256x64x64. The price is multiply-adds:
  where mmcv's backward reads its kept matrix, the kernel recomputes the
  logits and we recompute the projections, +19 % over mmcv at 2x1024x64x64 (8
  points of it the projections), partly won back by skipping mmcv's passes
  over the matrix. Measured side by side on a shared, busy 2-core CPU (2
  threads, medians of paired ratios): forward+backward 1.04-1.06x mmcv's at
  2x1024x64x64 (the plain path: 1.00x), 0.8x at 1x256x64x64; forward 0.87x
  and 0.65x. The backward spreads the queries of a batch smaller than the
  thread count over pseudo-heads (``_query_groups``). With fewer keys
  (8x1024x14x14: 196 keys, ``C' = 512``) the plain path runs: recomputing
  would cost ~1.2x mmcv's time to save ~9 MiB. Inference (no grad),
  ``torch.compile``, tracing/export and other devices run the plain forward:
  the same kernel, no custom function. On CUDA, SDPA picks its flash /
  memory-efficient kernels where dtype and head size allow (not measured
  here), which keep ``theta``, ``phi``, ``g``, the output and the log-sum-exp.
* ``use_scale`` divides the logits by ``sqrt(C')`` as mmcv and the authors'
  released code do (the paper's equation has no scale). SDPA's own default
  scale is that as well; we always pass ``scale=`` so ``use_scale=False`` means
  no scaling, as in mmcv.
* ``sub_sample`` (the paper's "subsampling trick": a 2x2 max-pool after ``phi``
  and ``g``) pools with ``ceil_mode=True``. On even H and W that is mmcv's
  pooling exactly; on odd sizes mmcv (floor mode) drops the last row/column
  from the keys and raises on maps with H or W = 1, where ours keeps them and
  works. ``checkpoint keys``: mmcv nests ``g``/``phi`` in a Sequential when it
  sub-samples (``g.0.conv.weight``); ours keeps ``g.conv.weight`` and a
  parameter-free ``pool``, so only ``sub_sample=False`` checkpoints load as is.

Init (mmcv's and the authors' code): ``theta``, ``phi`` and ``g`` normal with
std 0.01 and zero bias; the output projection is zero (its norm's scale and
shift when ``norm_cfg`` is given, the paper's zero-gamma BN; otherwise the conv
itself), so the block is exactly the identity at init. With a norm, the output
conv itself is N(0, 0.01^2) as in the authors' code, where mmcv leaves its
Kaiming init; either way the block starts as the identity.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import ConvModule
from mmengine.model import BaseModule, constant_init, normal_init
from torch.autograd.function import once_differentiable

from mmplug.registry import MODELS
from mmplug.utils.channels import reduced_channels
from mmplug.utils.validation import check_cfg, check_input, check_int

# The fused CPU kernel behind F.scaled_dot_product_attention; called directly
# for its row log-sum-exp, which the backward kernel takes.
_FLASH_CPU = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
_FLASH_CPU_BACKWARD = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward


def _exporting_or_compiling():
    return (torch.jit.is_scripting() or torch.jit.is_tracing() or torch.compiler.is_compiling()
            or torch.onnx.is_in_onnx_export())


def _query_groups(n, hw):
    """How many head-like groups to split the queries into for the backward kernel.

    The CPU kernel parallelises its backward over batch x heads only; a single
    image runs its loop on one thread, which calls small multi-threaded GEMMs
    block by block. Rows of the attention are independent, so queries can be
    spread over pseudo-heads that share ``k`` and ``v`` and each thread runs its
    own blocks: measured at 1x256x64x64 on 2 threads, 6 % faster on an idle
    machine and 2.7x faster on a busy one (0.13 s against 0.36 s), where every
    small GEMM waits for a descheduled thread.
    """
    groups = -(-torch.get_num_threads() // n)  # ceil
    return groups if hw % groups == 0 else 1


def _as_heads(t, groups):
    """``[N, 1, HW, *]`` -> ``[N, G, HW / G, *]`` view, query ``i * G + j`` in head ``j``."""
    n, _, hw = t.shape[:3]
    return t.view(n, hw // groups, groups, *t.shape[3:]).transpose(1, 2)


class _RecomputedProjectionAttention(torch.autograd.Function):
    """``softmax(theta phi^T * scale) g`` of ``x`` keeping only ``x``, the output and lse.

    ``forward(x, block, *params)``: ``params`` are the parameters of
    ``block.theta``, ``block.phi`` and ``block.g`` (so they get gradients);
    returns the attention output ``[N, 1, HW, C']``. Backward recomputes the
    three projections from ``x`` (under the forward's autocast state) and runs
    the fused kernel's backward on them with the kept output and log-sum-exp.
    """

    @staticmethod
    def forward(ctx, x, block, *params):
        q, k, v = block._qkv(x, channels_last=True)
        out, lse = _FLASH_CPU(q, k, v, scale=block.scale)
        device = x.device.type
        ctx.block = block
        ctx.autocast = (torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
        ctx.save_for_backward(x, out, lse, *params)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        x, out, lse, *params = ctx.saved_tensors
        enabled, dtype = ctx.autocast
        needs = (ctx.needs_input_grad[0], *ctx.needs_input_grad[2:])
        with torch.enable_grad(), torch.autocast(x.device.type, dtype=dtype, enabled=enabled):
            x_leaf = x.detach().requires_grad_(needs[0])
            q, k, v = ctx.block._qkv(x_leaf, channels_last=True)
        n, _, hw, c = q.shape
        groups = _query_groups(n, hw)
        grad_q, grad_k, grad_v = _FLASH_CPU_BACKWARD(
            _as_heads(grad_out.contiguous(), groups), _as_heads(q, groups),
            k.expand(-1, groups, -1, -1), v.expand(-1, groups, -1, -1), _as_heads(out, groups),
            _as_heads(lse, groups), 0.0, False, scale=ctx.block.scale)
        grad_qkv = (grad_q.transpose(1, 2).reshape(n, 1, hw, c),  # [N, 1, HW, C']
                    grad_k.sum(1, keepdim=True), grad_v.sum(1, keepdim=True))  # [N, 1, L, C']
        wanted = [t for t, need in zip((x_leaf, *params), needs) if need]
        grads = iter(torch.autograd.grad((q, k, v), wanted, grad_qkv))
        grad_x, *grad_params = (next(grads) if need else None for need in needs)
        return (grad_x, None, *grad_params)


@MODELS.register_module()
class NonLocal(BaseModule):
    """Embedded-Gaussian non-local block with memory linear in H*W.

    Args:
        in_channels (int): Channels of the input feature map.
        rd_ratio (float): Inner width ``C'`` as a fraction of ``in_channels``.
            Defaults to 0.5 (the paper's ``C / 2``; mmcv's ``reduction=2``).
        rd_channels (int, optional): Explicit inner width; overrides
            ``rd_ratio``. Defaults to None.
        rd_divisor (int): Round the inner width to a multiple of this.
            Defaults to 1 (no rounding).
        use_scale (bool): Divide the pairwise logits by ``sqrt(C')``.
            Defaults to True (mmcv and the authors' code).
        sub_sample (bool): 2x2 max-pool ``phi`` and ``g`` (keys/values), 4x
            less attention work. Defaults to False.
        conv_cfg (dict, optional): Config of the four 1x1 convs. Defaults to
            None (``nn.Conv2d``).
        norm_cfg (dict, optional): Norm after the output conv (the paper uses
            BN with zero-initialised scale). Defaults to None (mmcv's default,
            also better with the small per-GPU batches of detection).
        init_cfg (dict | list[dict], optional): mmengine init config. The
            block's own init (identity) is re-applied by ``init_weights()``.
            Defaults to None.

    Note:
        Shape preserving and residual, so it fits any plugin position of
        mmdet/mmseg ``ResNet``; the paper adds one block before the last
        residual block of ``res4`` for COCO (in mmdet terms: a plugin in stage 3
        ``after_conv3``; mmdet applies it to every block of the stage). It is
        the identity at init, so a pretrained backbone is undisturbed at step
        0. Attention cost is still ``O((HW)^2)`` time; only memory is linear.

    Example:
        >>> import torch
        >>> from mmplug.plugins.non_local import NonLocal
        >>> nl = NonLocal(in_channels=256)
        >>> nl(torch.randn(2, 256, 28, 28)).shape
        torch.Size([2, 256, 28, 28])

        In an mmdet/mmseg ResNet config::

            plugins=[dict(cfg=dict(type='NonLocal'),
                          stages=(False, False, True, False),
                          position='after_conv3')]
    """

    # mmcv NonLocal2d's: backbone checkpoint keys stay the same on a swap.
    _abbr_ = 'nonlocal_block'

    def __init__(self,
                 in_channels,
                 rd_ratio=0.5,
                 rd_channels=None,
                 rd_divisor=1,
                 use_scale=True,
                 sub_sample=False,
                 conv_cfg=None,
                 norm_cfg=None,
                 init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        check_int('NonLocal', 'in_channels', in_channels)
        for name, value in (('use_scale', use_scale), ('sub_sample', sub_sample)):
            if not isinstance(value, bool):
                raise ValueError(f'NonLocal: {name} must be True or False, got {value!r}')
        for name, value in (('conv_cfg', conv_cfg), ('norm_cfg', norm_cfg)):
            check_cfg('NonLocal', name, value)
        self.in_channels = in_channels
        self.inter_channels = reduced_channels('NonLocal', in_channels, rd_ratio, rd_channels,
                                               rd_divisor)
        self.use_scale = use_scale
        self.sub_sample = sub_sample
        inter = self.inter_channels
        self.scale = inter**-0.5 if use_scale else 1.0
        # Names as in mmcv's NonLocal2d, so its (sub_sample=False) checkpoints load.
        self.g = ConvModule(in_channels, inter, 1, conv_cfg=conv_cfg, act_cfg=None)
        self.theta = ConvModule(in_channels, inter, 1, conv_cfg=conv_cfg, act_cfg=None)
        self.phi = ConvModule(in_channels, inter, 1, conv_cfg=conv_cfg, act_cfg=None)
        self.conv_out = ConvModule(inter, in_channels, 1, conv_cfg=conv_cfg, norm_cfg=norm_cfg,
                                   act_cfg=None)
        self.pool = nn.MaxPool2d(2, ceil_mode=True) if sub_sample else nn.Identity()
        # Not via init_weights(): that would mark the module initialised and
        # mmengine would then skip it after the host's init_cfg.
        self._reset_parameters()

    def init_weights(self):
        """theta/phi/g ~ N(0, 0.01^2), zero bias; zero output projection.

        Runs after the host's ``init_cfg`` (mmengine calls children's
        ``init_weights`` last), so the block is the identity again afterwards;
        a ``Pretrained`` init of the whole model still wins.
        """
        super().init_weights()
        self._reset_parameters()

    def _reset_parameters(self):
        for m in (self.g, self.theta, self.phi):
            normal_init(m.conv, std=0.01, bias=0)
        if self.conv_out.with_norm:
            normal_init(self.conv_out.conv, std=0.01, bias=0)
            constant_init(self.conv_out.norm, 0, bias=0)
        else:
            constant_init(self.conv_out.conv, 0, bias=0)

    def _qkv(self, x, channels_last=False):
        """``theta``, pooled ``phi`` and ``g`` as SDPA wants them: one head, ``[N, 1, *, C']``.

        The CPU flash kernel needs unit-stride channels; with a strided last dim
        SDPA silently falls back to its math path, which keeps the ``[HW, L]``
        matrix for backward (measured, torch 2.13). ``channels_last``: convs on a
        channels-last copy of ``x`` write that layout directly (measured ~25 %
        faster than transposing NCHW outputs), but the copy would be kept for
        backward: only where no graph keeps it (inference, the custom function).
        """
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        theta = self.theta(x).permute(0, 2, 3, 1).flatten(1, 2).contiguous()  # [N, HW, C']
        phi = self.pool(self.phi(x)).permute(0, 2, 3, 1).flatten(1, 2).contiguous()  # [N, L, C']
        g = self.pool(self.g(x)).permute(0, 2, 3, 1).flatten(1, 2).contiguous()  # [N, L, C']
        return theta.unsqueeze(1), phi.unsqueeze(1), g.unsqueeze(1)

    def _recompute_projections(self, x, params):
        """Whether this forward runs the custom function (module docstring).

        Training on CPU in eager mode, and only where the attention outweighs a
        projection (at least ``C'`` keys): with few keys the recomputed
        projections are most of the work, and the plain path keeps little more
        than mmcv's four ``[HW, C']`` maps anyway.
        """
        if _exporting_or_compiling() or not torch.is_grad_enabled() or x.device.type != 'cpu':
            return False
        h, w = x.shape[2:]
        keys = (h + 1) // 2 * ((w + 1) // 2) if self.sub_sample else h * w
        return keys >= self.inter_channels and (x.requires_grad
                                                or any(p.requires_grad for p in params))

    def forward(self, x):
        check_input('NonLocal', x, self.in_channels)
        n, _, h, w = x.shape
        params = [p for m in (self.theta, self.phi, self.g) for p in m.parameters()]
        # softmax_j(theta_i . phi_j * scale) g_j without the [HW, L] matrix kept
        # for backward (fused SDPA kernels recompute it from the row log-sum-exp).
        if self._recompute_projections(x, params):
            y = _RecomputedProjectionAttention.apply(x, self, *params)  # [N, 1, HW, C']
        else:
            # Channels-last projections where no graph keeps the copy; one graph
            # whatever the grad mode for tracing/export.
            qkv = self._qkv(x, channels_last=not (torch.is_grad_enabled()
                                                  or _exporting_or_compiling()))
            y = F.scaled_dot_product_attention(*qkv, scale=self.scale)  # [N, 1, HW, C']
        y = y.squeeze(1).transpose(1, 2).reshape(n, self.inter_channels, h, w)  # [N, C', H, W]
        return x + self.conv_out(y)
