"""Synchronised batch normalisation that runs on CPU tensors (gloo, or any backend).

torch's ``nn.SyncBatchNorm`` refuses CPU tensors in training ("SyncBatchNorm
expected input tensor to be on GPU or XPU ...") and DDP refuses a CPU model
that contains one ("SyncBatchNorm layers only work with GPU modules"); mmcv's
``MMSyncBN`` is CUDA-only. A config with ``norm_cfg=dict(type='SyncBN')``
therefore cannot train in several CPU processes. :class:`CPUSyncBatchNorm`
computes what ``nn.SyncBatchNorm`` computes, with plain collectives
(``all_reduce``) that gloo provides.

Forward, in training mode, over a process group of ``W`` processes, process
``r`` holding ``n_r`` values per channel (``n_r`` may differ, or be 0):

1. ``N = sum_r n_r``, ``mean = sum_r sum_i x_ri / N``     (all_reduce of ``[sum x, n]``)
2. ``var = sum_r sum_i (x_ri - mean)^2 / N``             (all_reduce of the centred sums)
3. ``y = (x - mean) / sqrt(var + eps) * weight + bias``

Two all_reduce rounds instead of one of ``sum x`` and ``sum x^2``: the one-round
form ``E[x^2] - E[x]^2`` loses the variance to cancellation when ``|mean| >> std``
(a BN after a ReLU, or float16/bfloat16 inputs). Statistics accumulate in at
least float32. Running statistics follow ``nn.SyncBatchNorm`` (and
``nn.BatchNorm2d`` on the concatenated batch): ``running_var`` takes the
unbiased ``var * N / (N - 1)``; ``momentum=None`` gives the cumulative average.

Backward, with ``x_hat = (x - mean) * invstd`` and the two sums over the whole
group (all_reduce, ``SUM``)::

    dx = weight * invstd * (dy - sum(dy) / N - x_hat * sum(dy * x_hat) / N)

``d weight = sum_local(dy * x_hat)`` and ``d bias = sum_local(dy)`` stay local, as
in ``nn.SyncBatchNorm``: DDP averages parameter gradients. The input gradient is
that of the sum of every process's loss, so together with DDP's average the
update equals one process training on the concatenated batch with the mean of
the per-process losses.

Outside training, without an initialised process group, or with a group of one
process, the layer is ``F.batch_norm`` (as ``nn.SyncBatchNorm`` falls back).

Parameters and buffers are those of every ``_BatchNorm`` (``weight``, ``bias``,
``running_mean``, ``running_var``, ``num_batches_tracked``), so state dicts
move freely between this layer, ``nn.SyncBatchNorm`` and ``nn.BatchNorm2d``.
The class is deliberately *not* a subclass of ``nn.SyncBatchNorm``: DDP rejects
a CPU model containing one.
"""
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.autograd import Function

from mmplug.registry import MODELS


def _group_size(process_group):
    group = process_group if process_group is not None else dist.group.WORLD
    return group, dist.get_world_size(group)


class _CPUSyncBatchNormFunction(Function):
    """Forward/backward of :class:`CPUSyncBatchNorm` in training mode (see the module doc)."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, eps, momentum, group):
        channels = x.shape[1]
        acc = torch.promote_types(x.dtype, torch.float32)
        dims = [0] + list(range(2, x.dim()))
        xf = x.to(acc)
        # [C + 1]: per-channel sum, then the local count (same for every channel).
        local_n = x.numel() // channels
        stats = torch.cat([xf.sum(dims), xf.new_full((1,), float(local_n))])
        dist.all_reduce(stats, group=group)
        count = stats[-1].item()
        if count <= 1:
            raise ValueError(f'CPUSyncBatchNorm: expected more than 1 value per channel over '
                             f'the process group when training, got {int(count)}')
        shape = [1, channels] + [1] * (x.dim() - 2)
        mean = stats[:channels] / count
        centred = xf - mean.view(shape)
        sq = centred.square().sum(dims)  # [C]
        dist.all_reduce(sq, group=group)
        var = sq / count
        invstd = torch.rsqrt(var + eps)

        if running_mean is not None:
            running_mean.mul_(1 - momentum).add_(mean.to(running_mean.dtype), alpha=momentum)
        if running_var is not None:
            unbiased = var * (count / (count - 1))
            running_var.mul_(1 - momentum).add_(unbiased.to(running_var.dtype), alpha=momentum)

        x_hat = centred * invstd.view(shape)
        y = x_hat
        if weight is not None:
            y = y * weight.to(acc).view(shape)
        if bias is not None:
            y = y + bias.to(acc).view(shape)
        ctx.save_for_backward(x_hat, weight, invstd)
        ctx.count, ctx.group, ctx.in_dtype = count, group, x.dtype
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx, dy):
        x_hat, weight, invstd = ctx.saved_tensors
        channels = x_hat.shape[1]
        dims = [0] + list(range(2, x_hat.dim()))
        shape = [1, channels] + [1] * (x_hat.dim() - 2)
        dyf = dy.to(x_hat.dtype)
        # [2C]: local sum(dy) and sum(dy * x_hat); their local parts are the affine grads.
        local = torch.cat([dyf.sum(dims), (dyf * x_hat).sum(dims)])
        grad_weight = grad_bias = None
        if weight is not None and ctx.needs_input_grad[1]:
            grad_weight = local[channels:].to(weight.dtype)
        if ctx.needs_input_grad[2]:
            grad_bias = local[:channels].to(weight.dtype if weight is not None else dy.dtype)
        grad_x = None
        if ctx.needs_input_grad[0]:
            total = local.clone()
            dist.all_reduce(total, group=ctx.group)
            mean_dy = (total[:channels] / ctx.count).view(shape)
            mean_dy_xhat = (total[channels:] / ctx.count).view(shape)
            scale = invstd if weight is None else invstd * weight.to(invstd.dtype)
            grad_x = (dyf - mean_dy - x_hat * mean_dy_xhat) * scale.view(shape)
            grad_x = grad_x.to(ctx.in_dtype)
        return grad_x, grad_weight, grad_bias, None, None, None, None, None


@MODELS.register_module('CPUSyncBN')
class CPUSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch normalisation over the whole process group, for CPU processes (gloo).

    The same statistics, outputs, gradients and running statistics as
    ``nn.SyncBatchNorm``, i.e. as ``nn.BatchNorm2d`` on the concatenation of
    every process's batch; per-process batch sizes may differ. Registered as
    ``'CPUSyncBN'``; it is normally not named in configs: keep
    ``norm_cfg=dict(type='SyncBN')``, and on CPU ``tools/train.py --launcher
    pytorch`` swaps each ``nn.SyncBatchNorm`` for this class (see
    :func:`convert_cpu_sync_batchnorm`). On GPUs torch's own layer stays.

    Args:
        num_features (int): Channels ``C`` of an ``[N, C, ...]`` input.
        eps (float): Added to the variance. Defaults to 1e-5.
        momentum (float, optional): Running-statistics factor; None gives the
            cumulative average. Defaults to 0.1.
        affine (bool): Learnable ``weight`` and ``bias``. Defaults to True.
        track_running_stats (bool): Keep running statistics. Defaults to True.
        process_group (optional): Group to synchronise over. Defaults to None
            (the whole world).

    Example:
        >>> import torch
        >>> bn = CPUSyncBatchNorm(8)  # without a process group: plain BN
        >>> bn(torch.randn(2, 8, 5, 5)).shape
        torch.Size([2, 8, 5, 5])

    Note:
        Accepts any input of at least 2 dims (``[N, C]``, ``[N, C, H, W]``, ...),
        like ``nn.SyncBatchNorm``. Every process must call the layer the same
        number of times per step (it communicates twice in forward, once in
        backward); a process with an empty batch must still call it.
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, process_group=None, device=None, dtype=None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats,
                         device=device, dtype=dtype)
        self.process_group = process_group

    def _check_input_dim(self, input):
        if input.dim() < 2:
            raise ValueError(f'CPUSyncBatchNorm: expected an input of at least 2 dims '
                             f'[N, C, ...], got shape {tuple(input.shape)}')

    def forward(self, input):
        self._check_input_dim(input)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                factor = 1.0 / float(self.num_batches_tracked)
        bn_training = self.training or (self.running_mean is None and self.running_var is None)
        running_mean = self.running_mean if not self.training or self.track_running_stats \
            else None
        running_var = self.running_var if not self.training or self.track_running_stats \
            else None
        world = 1
        if bn_training and self.training and dist.is_available() and dist.is_initialized():
            group, world = _group_size(self.process_group)
        if world < 2:
            return F.batch_norm(input, running_mean, running_var, self.weight, self.bias,
                                bn_training, factor, self.eps)
        return _CPUSyncBatchNormFunction.apply(input, self.weight, self.bias, running_mean,
                                               running_var, self.eps, factor, group)


def convert_cpu_sync_batchnorm(module):
    """Swap every ``nn.SyncBatchNorm`` in ``module`` for a :class:`CPUSyncBatchNorm`.

    The new layer takes the *same* ``Parameter`` and buffer objects (so an
    optimizer built before still updates them, and state-dict keys do not
    change), ``eps``, ``momentum``, ``process_group`` and the training flag.
    Other modules are untouched. Works in place on children; returns the
    (possibly replaced) root.

    Args:
        module (nn.Module): A model, or a single ``nn.SyncBatchNorm``.

    Returns:
        nn.Module: ``module``, or the new layer when ``module`` itself was one.

    Example:
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.SyncBatchNorm(8))
        >>> type(convert_cpu_sync_batchnorm(net)[1]).__name__
        'CPUSyncBatchNorm'
    """
    if isinstance(module, nn.SyncBatchNorm):
        new = CPUSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                               module.track_running_stats, module.process_group)
        # Reassigning registers the very same objects under the same names.
        new.weight, new.bias = module.weight, module.bias
        new.running_mean, new.running_var = module.running_mean, module.running_var
        new.num_batches_tracked = module.num_batches_tracked
        new.train(module.training)
        if hasattr(module, 'qconfig'):
            new.qconfig = module.qconfig
        return new
    for name, child in module.named_children():
        converted = convert_cpu_sync_batchnorm(child)
        if converted is not child:
            setattr(module, name, converted)
    return module
