"""Spatial Group-wise Enhance (SGE).

Li, Hu, Yang. "Spatial Group-wise Enhance: Improving Semantic Feature Learning
in Convolutional Networks", 2019. https://arxiv.org/abs/1905.09646

Each of ``G`` channel groups is a sub-feature ``X = {x_1..x_m}`` (``m = H*W``
positions, each a ``C/G`` vector). The paper (Sec. 3):

1. ``g = mean_i x_i``                       global descriptor of the group
2. ``c_i = g . x_i``                        similarity of each position to it
3. ``c_hat_i = (c_i - mu_c) / (sigma_c + eps)``   normalised over the positions
4. ``a_i = gamma * c_hat_i + beta``         one (gamma, beta) pair per group
5. ``x_hat_i = x_i * sigmoid(a_i)``

Details taken from the paper and the authors' release:

* ``sigma_c`` is the unbiased standard deviation and ``eps = 1e-5`` is added to
  it (not to the variance), as in the authors' code.
* Init: ``gamma = 0`` and ``beta = 1`` (the authors' code), so at step 0 every
  position is scaled by ``sigmoid(1) ~= 0.731``. Some popular re-implementations
  (e.g. fightingcv-attention) start ``beta`` at 0, i.e. a gate of 0.5.

Deliberate robustness choices (same function in fp32):

* The normalisation statistics are computed in float32 (float64 for float64
  inputs; the first release cast those to float32 too) whatever the input
  dtype. In fp16 the squared deviations overflow and give the NaNs users
  report; the map they are computed on is ``C/G`` times smaller than ``x``.
* On a 1x1 map (one position) the unbiased std is undefined (0/0). We divide by
  ``max(m - 1, 1)``, so the normalised similarity is 0 and the gate is
  ``sigmoid(beta)``: finite, instead of NaN.

Implementation (CPU measurements on a shared 2-core machine; the gradient
checks are in ``tests/test_sge.py``):

* Forward: ``x`` is read three times (the means, the similarities as one
  batched matmul, the final multiply) and the output written once, the floor
  for eager PyTorch since each step needs the previous one's result over all
  positions. The rest runs on the ``[N*G, 1, HW]`` map, ``C/G`` times smaller
  than ``x``, with the fewest ops that measured fastest (``torch.var_mean`` was
  ~15x slower than mean, subtract and a batched dot there; ``addcmul`` and
  ``baddbmm`` slower than a multiply and an in-place add).
* Backward: when something needs a gradient, a custom ``autograd.Function``
  replaces autograd's backward, which wrote six ``x``-sized temporaries; this
  one writes one ``x``-sized buffer (``dy * x``, then overwritten with ``dx``)
  and saves ``x`` (by reference), the means and two ``[N*G, 1, HW]`` maps. It
  matches autograd to float rounding (1e-15 in float64), passes
  ``gradcheck`` and, through autograd, ``gradgradcheck``. Forward plus
  backward took 0.45-0.7x the time of the first release and 0.35-0.55x
  fightingcv-attention's at 8x512x28x28 and 8x256x56x56 (medians of several
  interleaved runs); the forward 0.65-0.95x and 0.2-0.4x. Without anything to
  differentiate (``no_grad``, frozen) the same forward runs without the
  Function.
* ``torch.compile(sge)`` works (the Function included) and fused further
  (forward ~0.8x, forward plus backward ~0.65x of eager at 8x512x28x28, after
  ~8 s of compiling); the default path does not need it.
"""
import torch
from mmengine.model import BaseModule

from mmplug.registry import MODELS
from mmplug.utils.validation import check_input, check_int

# The variance is clamped here before the square root: d sqrt(v)/dv is infinite
# at v = 0, i.e. NaN gradients whenever a group's map is constant -- e.g. behind
# a zero-initialised BN (mmdet's ResNet zero_init_residual) when training from
# scratch. Below 1e-12 the std (1e-6) is negligible beside eps anyway.
_VAR_FLOOR = 1e-12


def _sge_forward(x, weight, bias, groups, eps, keep_stats=True):
    """SGE forward; also returns what ``_SGEFunction.backward`` needs.

    With ``keep_stats=False`` (nothing to differentiate) the gate is computed
    in the similarity map's memory, which is then overwritten (the same values;
    one ``[N*G, 1, HW]`` allocation less: 0.86-0.92x the forward time at
    c2-c5 shapes), and the returned statistics are not meaningful.

    The statistics run in ``acc`` = float32 (float64 for float64 inputs) with
    autocast off; only the ``[N*G, 1, HW]`` gate is cast back to ``x.dtype``.
    The in-place ops only touch intermediates that no backward formula reads,
    so autograd can differentiate this too (``_SGEFunction`` does for
    double backward).
    """
    n, c, h, w = x.shape
    m = h * w
    acc = torch.promote_types(x.dtype, torch.float32)
    with torch.autocast(device_type=x.device.type, enabled=False):
        xg = x.reshape(n * groups, c // groups, m)  # [N*G, C/G, HW], a view if contiguous
        xa = xg.to(acc)  # a copy only for fp16/bf16 inputs
        mean = xa.mean(dim=2, keepdim=True)  # [N*G, C/G, 1]  g = mean_i x_i
        # c_i = g . x_i for all positions as one batched matmul, centred in place.
        d = torch.bmm(mean.transpose(1, 2), xa)  # [N*G, 1, HW]
        d = d.sub_(d.mean(dim=2, keepdim=True))
        var = torch.bmm(d, d.transpose(1, 2)).div_(max(m - 1, 1))  # [N*G, 1, 1]
        std = var.clamp_min(_VAR_FLOOR).sqrt_()
        inv = (std + eps).reciprocal_()  # 1 / (sigma_c + eps)
        # gamma / (sigma_c + eps), row b = n * G + g of [N*G, ...] being group g
        scale = (inv.view(n, groups) * weight.to(acc)).view(n * groups, 1, 1)
        # a_i = gamma * c_hat_i + beta on the small map (mul + add_ beat addcmul and
        # baddbmm there); x is touched once more, by the final multiply.
        gate = (d * scale) if keep_stats else d.mul_(scale)
        gate = gate.view(n, groups, m).add_(bias.to(acc).view(groups, 1)).sigmoid_()
        gate = gate.view(n * groups, 1, m)  # [N*G, 1, HW]
        out = xg * gate.to(x.dtype)  # [N*G, C/G, HW]
    return out, (xg, mean, d, var, std, inv, scale, gate)


def _sge_double_backward(ctx, grad_out, x, weight, bias):
    """Gradients that are themselves differentiable (``create_graph=True``, e.g.
    gradient penalties): autograd through the same forward, recomputed."""
    inputs = [t for t, need in zip((x, weight, bias), ctx.needs_input_grad) if need]
    with torch.enable_grad():
        out = _sge_forward(x, weight, bias, ctx.groups, ctx.eps)[0]
    grads = iter(torch.autograd.grad(out, inputs, grad_out, create_graph=True))
    return (*(next(grads) if need else None for need in ctx.needs_input_grad[:3]), None, None)


class _SGEFunction(torch.autograd.Function):
    """SGE with a hand-written backward.

    Autograd through the forward above writes six ``x``-sized temporaries in
    backward (``dy * gate``, ``dy * x``, the matmul's and the mean's gradients
    and their sums). This backward writes one ``x``-sized buffer: ``dy * x``
    (summed over each group's channels), then overwritten with ``dx``. It saves
    ``x``, the ``[N*G, C/G, 1]`` means and two ``[N*G, 1, HW]`` maps (the
    centred similarity and the gate). With ``create_graph=True`` it falls back
    to autograd through the recomputed forward, so double backward works.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, groups, eps):
        out, (_, *stats) = _sge_forward(x, weight, bias, groups, eps)
        ctx.groups, ctx.eps = groups, eps
        ctx.save_for_backward(x, weight, bias, *stats)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, bias, mean, d, var, std, inv, scale, gate = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: let autograd differentiate
            return _sge_double_backward(ctx, grad_out, x, weight, bias)
        n, c, h, w = x.shape
        m, g = h * w, ctx.groups
        acc = mean.dtype
        with torch.autocast(device_type=x.device.type, enabled=False):
            # a view of x (a copy again if x was not contiguous, e.g. channels_last)
            xg = x.reshape(n * g, c // g, m)  # [N*G, C/G, HW]
            yg = grad_out  # [N*G, C/G, HW], the shape forward returned
            # dL/dgate_i = sum_k y_ki x_ki; the product's buffer becomes dx below.
            buf = x.new_empty(x.shape)
            prod = torch.mul(yg, xg, out=buf.view(xg.shape))
            dgate = prod.sum(dim=1, keepdim=True, dtype=acc)  # [N*G, 1, HW]
            da = torch.ops.aten.sigmoid_backward(dgate, gate)  # dL/da_i
            da_d = torch.bmm(da, d.transpose(1, 2))  # [N*G, 1, 1]  sum_i da_i d_i
            grad_w = grad_b = grad_x = None
            if ctx.needs_input_grad[1]:
                grad_w = (da_d * inv).view(n, g).sum(0).to(weight.dtype)
            if ctx.needs_input_grad[2]:
                grad_b = da.sum(dim=2).view(n, g).sum(0).to(weight.dtype)
            if ctx.needs_input_grad[0]:
                # Back through c_hat = d / (sqrt(clamp(var)) + eps), var = |d|^2 / (m-1).
                d_inv = (da_d.view(n, g) * weight.to(acc)).view(n * g, 1, 1)  # dL/dinv
                d_std = -d_inv * inv * inv
                d_var = torch.where(var >= _VAR_FLOOR, d_std * 0.5 / std, 0.0)
                dd = da * scale  # dL/dd
                dd.addcmul_(d, d_var, value=2.0 / max(m - 1, 1))
                dc = dd.sub_(dd.mean(dim=2, keepdim=True))  # dL/dc_i (centring)
                # c_i = g . x_i with g = mean_i x_i:
                # dx_ki = y_ki gate_i + g_k dc_i + (sum_j dc_j x_kj) / m.
                via_mean = torch.bmm(xg.to(acc), dc.transpose(1, 2)).div_(m)  # [N*G, C/G, 1]
                dt = xg.dtype
                # (baddbmm with a broadcast input first copies it over the output)
                torch.mul(mean.to(dt), dc.to(dt), out=prod).add_(via_mean.to(dt))
                prod.addcmul_(yg, gate.to(dt))
                grad_x = buf
        return grad_x, grad_w, grad_b, None, None


@MODELS.register_module()
class SGE(BaseModule):
    """Spatial Group-wise Enhance plugin.

    Args:
        in_channels (int): Channels of the input feature map. Must be divisible
            by ``groups``.
        groups (int): Number of channel groups ``G``. Defaults to 64, the
            paper's setting for ResNet.
        eps (float): Added to the standard deviation in the normalisation.
            Defaults to 1e-5.
        init_cfg (dict | list[dict], optional): mmengine init config. The
            paper's init (gamma 0, beta 1) is applied by ``init_weights()``
            regardless. Defaults to None.

    Note:
        Shape preserving, so it fits any plugin position of mmdet/mmseg
        ``ResNet``; the paper puts it after the last BatchNorm of every
        bottleneck (``position='after_conv3'``). It adds only ``2 * groups``
        parameters. At init it scales the features by ``sigmoid(1)`` ~= 0.731
        everywhere.

    Example:
        >>> import torch
        >>> from mmplug.plugins import SGE
        >>> sge = SGE(in_channels=256, groups=64)
        >>> sge(torch.randn(2, 256, 28, 28)).shape
        torch.Size([2, 256, 28, 28])

        In an mmdet/mmseg ResNet config::

            plugins=[dict(cfg=dict(type='SGE', groups=64),
                          stages=(True, True, True, True),
                          position='after_conv3')]
    """

    _abbr_ = 'sge'

    def __init__(self, in_channels, groups=64, eps=1e-5, init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        for name, value in (('in_channels', in_channels), ('groups', groups)):
            check_int('SGE', name, value)
        if in_channels % groups != 0:
            raise ValueError(
                f'SGE: in_channels ({in_channels}) must be divisible by groups ({groups}); '
                f'choose groups among the divisors of {in_channels}')
        if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not eps > 0:
            raise ValueError(f'SGE: eps must be a positive float, got {eps!r}')
        self.in_channels = in_channels
        self.groups = groups
        self.eps = float(eps)
        self.weight = torch.nn.Parameter(torch.zeros(groups))  # gamma
        self.bias = torch.nn.Parameter(torch.ones(groups))  # beta

    def init_weights(self):
        """Paper/authors' init: gamma = 0, beta = 1.

        Runs after the host's ``init_cfg`` (mmengine calls children's
        ``init_weights`` last); a ``Pretrained`` init of the whole model that
        holds SGE keys still wins, as mmengine skips re-initialising then.
        """
        super().init_weights()
        torch.nn.init.zeros_(self.weight)
        torch.nn.init.ones_(self.bias)

    def forward(self, x):
        check_input('SGE', x, self.in_channels)
        n, c, h, w = x.shape
        args = (x, self.weight, self.bias, self.groups, self.eps)
        if torch.is_grad_enabled() and any(t.requires_grad for t in args[:3]):
            # The Function returns [N*G, C/G, HW]; reshaping outside it keeps the
            # result an ordinary autograd view, so hosts may modify it in place
            # (mmdet's Bottleneck does `out += identity`).
            out = _SGEFunction.apply(*args)
        else:  # nothing to differentiate: the same forward without the Function
            out = _sge_forward(*args, keep_stats=False)[0]
        return out.view(n, c, h, w)
