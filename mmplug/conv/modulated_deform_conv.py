"""Modulated deformable convolution (DCNv2) in plain PyTorch.

Zhu, Hu, Lin, Dai. "Deformable ConvNets v2: More Deformable, Better Results",
CVPR 2019. https://arxiv.org/abs/1811.11168

``y(p) = sum_k w_k * x(p + p_k + dp_k) * dm_k`` (Eq. 3). Takes the arguments and
offset layout of ``mmcv.ops.modulated_deform_conv2d`` (channel ``2 * (g * K +
k)`` the y and ``+ 1`` the x offset of tap ``k = i * kw + j`` in deform group
``g``) and computes the same function and gradients (``tests/test_dcn.py``):
points with ``y <= -1``, ``y >= H``, ``x <= -1`` or ``x >= W`` sample 0 and
pass no gradient; at integer points the offset gradient is the cell
below/right's. One ``F.grid_sample`` samples all taps into columns (kept for
backward, like mmcv's im2col buffer), one ``F.conv2d`` with a ``K x 1`` kernel
contracts them.

Deviations from mmcv's op:

* The input is zero-padded to ``2^m + 1`` rows/columns so that
  ``grid_sample(align_corners=True)`` normalises exactly and ``floor`` picks
  mmcv's cell.
* Sampling in float32 at least; output in the offset's dtype; bfloat16 works.
* Non-finite offsets give non-finite outputs (mmcv samples 0).
* Standard ops only: any device, ``torch.compile`` / ``torch.export``, and
  ``torch.onnx.export(..., dynamo=True)`` (opset >= 16, fixed spatial size).
"""
import torch
import torch.nn.functional as F
from torch.nn.modules.utils import _pair


def _exact_size(size):
    """The smallest ``2^m + 1 >= size``, ``m >= 0``; ``size`` may be a traced 0-dim tensor.

    A loop rather than ``int.bit_length``, which torch 2.1's dynamo cannot trace.
    """
    size, edge = int(size), 1
    while edge + 1 < size:
        edge *= 2
    return edge + 1


def modulated_deform_conv2d(input, offset, mask, weight, bias=None, stride=1, padding=0,
                            dilation=1, groups=1, deform_groups=1):
    """Modulated deformable conv2d, mmcv's ``modulated_deform_conv2d`` in plain PyTorch.

    Args:
        input (Tensor): ``[N, C, H, W]``.
        offset (Tensor): ``[N, 2 * deform_groups * kh * kw, Ho, Wo]`` (mmcv's
            layout).
        mask (Tensor): ``[N, deform_groups * kh * kw, Ho, Wo]``.
        weight (Tensor): ``[C_out, C / groups, kh, kw]``.
        bias (Tensor, optional): ``[C_out]``. Defaults to None.
        stride, padding, dilation (int | tuple[int, int]): Defaults to 1, 0, 1.
        groups (int): Conv groups. Defaults to 1.
        deform_groups (int): Offset/mask groups. Defaults to 1.

    Returns:
        Tensor: ``[N, C_out, Ho, Wo]`` in ``offset``'s dtype.

    Example:
        >>> import torch
        >>> from mmplug.conv.modulated_deform_conv import modulated_deform_conv2d
        >>> x, w = torch.randn(2, 4, 9, 9), torch.randn(8, 4, 3, 3)
        >>> offset, mask = torch.randn(2, 18, 5, 5), torch.rand(2, 9, 5, 5)
        >>> modulated_deform_conv2d(x, offset, mask, w, None, 2, 1).shape
        torch.Size([2, 8, 5, 5])
    """
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    if input.dim() != 4:
        raise ValueError(f'modulated_deform_conv2d: input must be [N, C, H, W], got shape '
                         f'{tuple(input.shape)}')
    n, c, h, w = input.shape
    c_out, c_per_group, kh, kw = weight.shape
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    k, dg = kh * kw, deform_groups
    if ho <= 0 or wo <= 0:
        raise ValueError(f'modulated_deform_conv2d: input {h}x{w} too small for kernel '
                         f'{kh}x{kw}, padding {(ph, pw)}, dilation {(dh, dw)} (output '
                         f'{ho}x{wo})')
    if c != c_per_group * groups or c_out % groups or c % dg:
        raise ValueError(f'modulated_deform_conv2d: weight {tuple(weight.shape)} with groups '
                         f'{groups} and deform_groups {dg} does not fit {c} input channels')
    if offset.shape != (n, 2 * dg * k, ho, wo) or mask.shape != (n, dg * k, ho, wo):
        raise ValueError(f'modulated_deform_conv2d: expected offset {(n, 2 * dg * k, ho, wo)} '
                         f'and mask {(n, dg * k, ho, wo)}, got {tuple(offset.shape)} and '
                         f'{tuple(mask.shape)}')
    out_dtype = offset.dtype
    # sampling precision: float32 at least (torch.promote_types does not trace in torch 2.1)
    dtype = torch.float64 if out_dtype == torch.float64 else torch.float32
    device = offset.device
    hp, wp = _exact_size(h), _exact_size(w)
    x = F.pad(input.to(dtype), (0, wp - w, 0, hp - h))  # [N, C, hp, wp]

    rows = torch.arange(ho, device=device, dtype=dtype) * sh - ph
    cols = torch.arange(wo, device=device, dtype=dtype) * sw - pw
    tap_rows = torch.arange(kh, device=device, dtype=dtype).repeat_interleave(kw) * dh
    tap_cols = torch.arange(kw, device=device, dtype=dtype).repeat(kh) * dw
    offset = offset.to(dtype).reshape(n * dg, k, 2, ho, wo)
    y = rows.view(1, 1, ho, 1) + tap_rows.view(1, k, 1, 1) + offset[:, :, 0]  # [N*Gd, K, Ho, Wo]
    x_pos = cols.view(1, 1, 1, wo) + tap_cols.view(1, k, 1, 1) + offset[:, :, 1]
    inside = (y > -1) & (y < h) & (x_pos > -1) & (x_pos < w)  # mmcv's sampling domain
    grid = torch.stack((x_pos * (2 / (wp - 1)) - 1, y * (2 / (hp - 1)) - 1), dim=-1)
    sampled = F.grid_sample(x.reshape(n * dg, c // dg, hp, wp), grid.reshape(n * dg, k, ho * wo, 2),
                            mode='bilinear', padding_mode='zeros',
                            align_corners=True)  # [N*Gd, C/Gd, K, Ho*Wo]
    mask = mask.to(dtype).reshape(n, dg, 1, k, ho * wo) * inside.reshape(n, dg, 1, k, ho * wo)
    columns = (sampled.reshape(n, dg, c // dg, k, ho * wo) * mask).reshape(n, c, k, ho * wo)
    # Sum over channels and taps: a K x 1 conv over [taps, positions].
    out = F.conv2d(columns.to(out_dtype), weight.to(out_dtype).reshape(c_out, c_per_group, k, 1),
                   None if bias is None else bias.to(out_dtype), groups=groups)
    return out.reshape(n, c_out, ho, wo)
