"""Synchronised batch normalisation that runs on CPU tensors (gloo, or any backend).

torch's ``nn.SyncBatchNorm`` refuses CPU tensors in training (and DDP a CPU model
holding one); mmcv's ``MMSyncBN`` is CUDA-only. Over ``W`` processes holding
``n_r`` values per channel, with two ``all_reduce`` rounds (one round of
``E[x^2] - E[x]^2`` cancels when ``|mean| >> std``), in at least float32::

    N = sum_r n_r,  mean = sum_r sum_i x_ri / N,  var = sum_r sum_i (x_ri - mean)^2 / N
    y = (x - mean) / sqrt(var + eps) * weight + bias
    dx = weight * invstd * (dy - sum(dy) / N - x_hat * sum(dy * x_hat) / N)

Running statistics, local parameter gradients (DDP averages them), the
``F.batch_norm`` fallback and the state dict are ``nn.SyncBatchNorm``'s; it is
not its subclass, which DDP rejects on CPU.
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
    """Forward/backward of :class:`CPUSyncBatchNorm` in training mode."""

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

    ``nn.BatchNorm2d`` on the concatenated batches (sizes may differ). Registered as
    ``'CPUSyncBN'``; configs keep ``norm_cfg=dict(type='SyncBN')`` and
    ``tools/train.py --launcher pytorch`` swaps it in on CPU. Every process must
    call it equally often per step, an empty batch included.

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

    The new layer takes the same ``Parameter`` and buffer objects (an optimizer
    built before still updates them), ``eps``, ``momentum``, ``process_group`` and
    the training flag. Returns ``module``, or the new layer if it was one.

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
