"""Multiply-accumulates of one forward, mmcv's deformable convs included.

MACs come from ``torch.utils.flop_counter.FlopCounterMode`` (aten-level conv, matmul and
attention; elementwise ops, pooling, BN, ``grid_sample`` are not counted, as in
fvcore/mmengine counters), FLOPs / 2. SDPA's fused CPU kernel (torch releases after 2.1) has
no formula there and is given torch's own attention formula, so attention counts the same
on every device and torch. mmcv's deformable convs run outside aten, so every
``DeformConv2d`` / ``ModulatedDeformConv2d`` (and subclass: the packs, ``DCNv2UnitMask``)
that runs an mmcv op is counted as its dense conv (the MACs of the sampled im2col product;
bilinear sampling is not counted). Used by every tool of ``tools/analysis/``; import it::

    from mmplug.analysis.macs import count_macs
    macs, deform_macs = count_macs(model, lambda: model(x))
"""
import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

try:
    from mmcv.ops import DeformConv2d, ModulatedDeformConv2d
except ImportError:  # mmcv without ops: no deformable conv can be built
    DEFORM_CONVS = ()
else:
    #: mmcv's deformable convs (and subclasses: the packs, DCNv2UnitMask) run
    #: outside aten, so FlopCounterMode sees only their offset conv.
    DEFORM_CONVS = (DeformConv2d, ModulatedDeformConv2d)

__all__ = ['DEFORM_CONVS', 'count_macs']


def _attention_flops(query, key, value, *args, out_shape=None, **kwargs):
    return sdpa_flop_count(query, key, value)


def _missing_formulas():
    """FlopCounterMode formulas for the aten ops it does not count (looked up at use)."""
    cpu_flash = getattr(torch.ops.aten, '_scaled_dot_product_flash_attention_for_cpu', None)
    return {cpu_flash: _attention_flops} if cpu_flash is not None else {}


def count_macs(model, forward):
    """Return (MACs, deformable-conv MACs) of ``forward()``, a call that runs ``model``.

    MACs are FlopCounterMode's FLOPs / 2 plus, for every deformable conv of
    ``model`` (``DEFORM_CONVS``) that runs an mmcv op, which FlopCounterMode
    misses, the MACs of the dense conv it computes:
    ``N * H_out * W_out * C_out * C_in / groups * kh * kw``.
    The second value is that added part alone.
    """
    dcn_macs = []

    def dcn_hook(module, inputs, output):
        # DCNv2UnitMask off mmcv's op (its CPU default) runs the plain-PyTorch function,
        # whose dense product is an aten op that FlopCounterMode already counts.
        uses_mmcv = getattr(module, '_use_mmcv', None)
        if uses_mmcv is not None and not uses_mmcv(inputs[0]):
            return
        kh, kw = module.kernel_size
        dcn_macs.append(output.numel() * module.in_channels // module.groups * kh * kw)

    hooks = [m.register_forward_hook(dcn_hook) for m in model.modules()
             if isinstance(m, DEFORM_CONVS)]
    counter = FlopCounterMode(display=False, custom_mapping=_missing_formulas())
    try:
        with torch.no_grad(), counter:
            forward()
    finally:
        for h in hooks:
            h.remove()
    return counter.get_total_flops() // 2 + sum(dcn_macs), sum(dcn_macs)
