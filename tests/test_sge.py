"""SGE: the paper's equations, numerics and parity with fightingcv-attention (the contract
every module meets: test_contract.py)."""
import math

import pytest
import torch

from mmplug.plugins import SGE

from _harness import assert_grads_reach_every_parameter, randomize_


def _reference_sge(x, groups, weight, bias, eps=1e-5):
    """The paper's equations written out plainly (unbiased std, eps added to std)."""
    n, c, h, w = x.shape
    xg = x.reshape(n, groups, c // groups, h * w)
    g = xg.mean(dim=3, keepdim=True)
    sim = (xg * g).sum(dim=2)  # [N, G, HW]
    sim = sim - sim.mean(dim=2, keepdim=True)
    sim = sim / (sim.std(dim=2, keepdim=True) + eps)
    a = sim * weight.view(1, groups, 1) + bias.view(1, groups, 1)
    return (xg * torch.sigmoid(a).unsqueeze(2)).reshape(n, c, h, w)


def _randomize(sge, seed=0):
    return randomize_(sge, seed=seed)


def test_wrong_input_channels_named():
    with pytest.raises(ValueError, match='expected 64 input channels, got 32'):
        SGE(64, groups=8)(torch.randn(1, 32, 4, 4))


@pytest.mark.parametrize('shape', [(1, 64, 1, 1), (1, 64, 7, 9), (2, 64, 16, 15), (3, 128, 5, 1)])
def test_shape_preserved_and_matches_equations(shape, device):
    sge = _randomize(SGE(shape[1], groups=16)).to(device)
    x = torch.randn(shape, device=device)
    out = sge(x)
    assert out.shape == x.shape and torch.isfinite(out).all()
    if shape[2] * shape[3] > 1:
        ref = _reference_sge(x, 16, sge.weight, sge.bias)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_paper_init_gate_is_sigmoid_one():
    sge = SGE(64, groups=8)
    assert torch.equal(sge.weight, torch.zeros(8)) and torch.equal(sge.bias, torch.ones(8))
    x = torch.randn(2, 64, 6, 6)
    torch.testing.assert_close(sge(x), x * torch.sigmoid(torch.tensor(1.0)))


def test_one_by_one_map_is_finite_and_gated_by_bias():
    # One position: the unbiased std of one element is 0/0 in the naive form.
    sge = _randomize(SGE(32, groups=4))
    x = torch.randn(2, 32, 1, 1) * 10
    out = sge(x)
    gate = torch.sigmoid(sge.bias).repeat_interleave(8).view(1, 32, 1, 1)
    torch.testing.assert_close(out, x * gate)


def test_gradients_reach_every_parameter(device):
    sge = _randomize(SGE(64, groups=8)).to(device)
    x = torch.randn(2, 64, 9, 7, device=device, requires_grad=True)
    assert_grads_reach_every_parameter(sge, x)


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
@pytest.mark.parametrize('scale', [1.0, 300.0])
@pytest.mark.parametrize('hw', [(1, 1), (14, 14)])
def test_low_precision_autocast_is_finite(dtype, scale, hw, device):
    # scale 300: squared deviations of the similarity map overflow fp16 (max 65504).
    sge = _randomize(SGE(256, groups=64)).to(device)
    conv = torch.nn.Conv2d(256, 256, 1).to(device)
    x = torch.randn(2, 256, *hw, device=device) * scale
    with torch.autocast(device_type=device.type, dtype=dtype):
        y = conv(x)
        out = sge(y)
    assert out.dtype == y.dtype == dtype
    assert torch.isfinite(out).all()
    ref = sge(y.float())
    torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2 * scale)


def test_low_precision_parameters_without_autocast():
    sge = _randomize(SGE(64, groups=8)).to(torch.bfloat16)
    x = torch.randn(2, 64, 8, 8, dtype=torch.bfloat16) * 100
    out = sge(x)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


def test_constant_input_is_finite():
    sge = _randomize(SGE(64, groups=8))
    x = torch.full((2, 64, 5, 5), 3.0)
    out = sge(x)
    gate = torch.sigmoid(sge.bias).repeat_interleave(8).view(1, 64, 1, 1)
    torch.testing.assert_close(out, x * gate)


def test_parity_with_fightingcv_attention():
    from mmplug.analysis.peers import parity_sge_fightingcv
    fcv = pytest.importorskip('fightingcv_attention.attention.SGE')
    groups = 16
    ours = _randomize(SGE(128, groups=groups), seed=3)
    peer = fcv.SpatialGroupEnhance(groups=groups)
    with torch.no_grad():
        _, transform = parity_sge_fightingcv(ours, peer)  # the same parameters
    assert transform is None
    x = torch.randn(4, 128, 14, 14)
    diff = (ours(x) - peer(x)).abs().max().item()
    assert diff < 1e-5, diff
    # The documented difference: fightingcv starts beta at 0 (gate 0.5), the authors at 1.
    assert torch.equal(fcv.SpatialGroupEnhance(groups=groups).bias, torch.zeros(1, groups, 1, 1))
    torch.testing.assert_close(SGE(128, groups=groups)(x), x * (1 / (1 + math.exp(-1))))


def test_constant_group_map_has_finite_gradients():
    # Behind a zero-initialised BN (mmdet ResNet's zero_init_residual, from scratch) the
    # input is all zeros: the std is 0 and a plain sqrt has an infinite derivative there.
    sge = _randomize(SGE(64, groups=8))
    bn = torch.nn.BatchNorm2d(64)
    torch.nn.init.zeros_(bn.weight)
    x = torch.randn(2, 64, 7, 7, requires_grad=True)
    out = sge(bn(x))
    (out.sum() + bn(x).sum()).backward()
    for name, p in [('x', x), ('bn.weight', bn.weight)] + list(sge.named_parameters()):
        assert torch.isfinite(p.grad).all(), name
    assert bn.weight.grad.abs().sum() > 0


def _call(sge, x, weight, bias):
    """``sge(x)`` with its parameters replaced by the given tensors."""
    return torch.func.functional_call(sge, {'weight': weight, 'bias': bias}, (x,))


def _out_and_grads(fn, x, weight, bias, grad_out):
    x, weight, bias = (t.detach().requires_grad_() for t in (x, weight, bias))
    out = fn(x, weight, bias)
    return (out, *torch.autograd.grad(out, (x, weight, bias), grad_out))


def test_gradcheck_float64():
    sge = _randomize(SGE(16, groups=4)).double()
    x = (torch.randn(2, 16, 5, 3, dtype=torch.float64) + 1).requires_grad_()
    weight = sge.weight.detach().requires_grad_()
    bias = sge.bias.detach().requires_grad_()
    assert torch.autograd.gradcheck(lambda x, w, b: _call(sge, x, w, b), (x, weight, bias))


def test_gradients_match_the_equations():
    sge = _randomize(SGE(64, groups=8)).double()
    x = torch.randn(2, 64, 6, 5, dtype=torch.float64)
    grad_out = torch.randn_like(x)
    ours = _out_and_grads(lambda x, w, b: _call(sge, x, w, b), x, sge.weight, sge.bias, grad_out)
    ref = _out_and_grads(lambda x, w, b: _reference_sge(x, 8, w, b), x, sge.weight, sge.bias,
                         grad_out)
    for name, a, b in zip(('out', 'x', 'weight', 'bias'), ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=name)


def test_output_can_be_modified_in_place():
    # mmdet's Bottleneck adds the identity in place: `out += identity`.
    sge = _randomize(SGE(64, groups=8))
    x = torch.randn(2, 64, 5, 5, requires_grad=True)
    out = sge(x)
    out += 1.0
    out.square().sum().backward()
    ref_x = x.detach().clone().requires_grad_()
    (_reference_sge(ref_x, 8, sge.weight, sge.bias) + 1.0).square().sum().backward()
    torch.testing.assert_close(x.grad, ref_x.grad, rtol=1e-5, atol=1e-5)


def test_channels_last_and_strided_inputs():
    sge = _randomize(SGE(64, groups=8))
    x = torch.randn(2, 64, 7, 6)
    ref = _out_and_grads(lambda x, w, b: _reference_sge(x, 8, w, b), x, sge.weight, sge.bias,
                         torch.ones_like(x))
    for xs in (x.contiguous(memory_format=torch.channels_last), x.transpose(2, 3).mT):
        xs = xs.detach().requires_grad_()
        out = sge(xs)
        out.sum().backward()  # an expanded (stride-0) output gradient
        torch.testing.assert_close(out, ref[0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(xs.grad, ref[1], rtol=1e-5, atol=1e-5)


def test_gate_is_what_multiplies_each_group():
    sge = _randomize(SGE(64, groups=8))
    x = torch.randn(2, 64, 5, 7)
    gate = sge.gate(x)
    assert gate.shape == (2, 8, 5, 7)
    expected = (x.view(2, 8, 8, 5, 7) * gate.unsqueeze(2)).view_as(x)
    torch.testing.assert_close(sge(x), expected, rtol=0, atol=0)


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_low_precision_autocast_backward(dtype, device):
    sge = _randomize(SGE(64, groups=8)).to(device)
    conv = torch.nn.Conv2d(64, 64, 1).to(device)
    x = torch.randn(2, 64, 8, 8, device=device) * 30
    with torch.autocast(device_type=device.type, dtype=dtype):
        out = sge(conv(x))
    assert out.dtype == dtype
    out.float().square().mean().backward()
    for name, p in [('conv', conv.weight), ('weight', sge.weight), ('bias', sge.bias)]:
        assert p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_export_traces():
    sge = _randomize(SGE(32, groups=4)).eval()
    x = torch.randn(2, 32, 7, 9)
    exported = torch.export.export(sge, (x,))
    torch.testing.assert_close(exported.module()(x), sge(x))
