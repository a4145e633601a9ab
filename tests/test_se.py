"""SE: the paper's equations, numerics, and parity with fightingcv-attention, mmdet's and
mmseg's SELayer (the contract every module meets: test_contract.py)."""
import pytest
import torch

from mmplug.plugins.se import SE

from _harness import (
    assert_grads_reach_every_parameter,
    randomize_,
)


@pytest.fixture(autouse=True)
def _seeded():
    """Every test draws its inputs from a fixed seed, whatever runs before it."""
    torch.manual_seed(0)


def _reference_se(x, w1, b1, w2, b2, gate=torch.sigmoid):
    """The paper's Eqs. 2-4 written out with matrices."""
    z = x.mean(dim=(2, 3))  # [N, C]
    s = gate(torch.relu(z @ w1.t() + b1) @ w2.t() + b2)
    return x * s[:, :, None, None]


def _fc(conv):
    return conv.weight.flatten(1), conv.bias


@pytest.mark.parametrize('kwargs, hidden', [
    (dict(in_channels=2048), 128),
    (dict(in_channels=64), 4),
    (dict(in_channels=8), 1),  # never below 1
    (dict(in_channels=64, rd_ratio=0.25), 16),
    (dict(in_channels=64, rd_channels=10), 10),
    (dict(in_channels=200, rd_divisor=8), 16),  # 12.5 rounded to a multiple of 8
])
def test_hidden_width(kwargs, hidden):
    se = SE(**kwargs)
    assert se.rd_channels == hidden and se.fc1.out_channels == hidden == se.fc2.in_channels


def test_param_count_at_2048():
    # 2 * C * C/16 weights + C/16 + C biases.
    n = sum(p.numel() for p in SE(2048).parameters())
    assert n == 2 * 2048 * 128 + 128 + 2048 == 526464


@pytest.mark.parametrize('shape', [(1, 32, 1, 1), (1, 32, 7, 9), (2, 32, 16, 15), (3, 48, 5, 1)])
def test_shape_preserved_and_matches_equations(shape, device):
    se = randomize_(SE(shape[1])).to(device)
    x = torch.randn(shape, device=device)
    out = se(x)
    assert out.shape == x.shape and torch.isfinite(out).all()
    ref = _reference_se(x, *_fc(se.fc1), *_fc(se.fc2))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_gate_is_half_for_zero_mean_channels():
    se = SE(64)
    a = torch.randn(2, 64, 6, 3)
    x = torch.cat([a, -a], dim=3)  # every channel's spatial mean is 0
    torch.testing.assert_close(se(x), 0.5 * x, rtol=0, atol=1e-6)


def test_gate_at_init_is_centred_on_half_with_documented_spread():
    # He init and zero biases: logit ~ symmetric, variance 2 * mean(z^2) over the weights.
    # 100 inits at C = 1024: the ratio below stays within 2 % of 1 over seeds.
    z = torch.randn(1, 1024, 1, 1, generator=torch.Generator().manual_seed(0)) * 0.5 + 0.2
    logits = []
    with torch.no_grad():
        for seed in range(100):
            torch.manual_seed(seed)
            se = SE(1024)
            logits.append(se.fc2(se.act(se.fc1(z))).flatten())
    logits = torch.cat(logits)
    expected_std = (2 * z.square().mean()).sqrt()
    assert abs(logits.std() / expected_std - 1) < 0.08, (logits.std(), expected_std)
    assert abs(torch.sigmoid(logits).mean().item() - 0.5) < 0.01


def test_gradients_reach_every_parameter(device):
    se = randomize_(SE(64)).to(device)
    x = torch.randn(2, 64, 9, 7, device=device, requires_grad=True)
    assert_grads_reach_every_parameter(se, x)


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
@pytest.mark.parametrize('hw', [(1, 1), (14, 15)])
def test_low_precision_autocast_is_finite(dtype, hw, device):
    se = randomize_(SE(128), scale=0.1).to(device)
    conv = torch.nn.Conv2d(128, 128, 1).to(device)
    x = torch.randn(2, 128, *hw, device=device) * 30
    with torch.autocast(device_type=device.type, dtype=dtype):
        y = conv(x)
        out = se(y)
    assert out.dtype == y.dtype == dtype
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), se(y.float()), rtol=2e-2, atol=0.1)


def test_hsigmoid_gate_option():
    se = randomize_(SE(64, gate_cfg=dict(type='HSigmoid', bias=3.0, divisor=6.0)))
    x = torch.randn(2, 64, 5, 5)
    ref = _reference_se(x, *_fc(se.fc1), *_fc(se.fc2),
                        gate=lambda t: ((t + 3.0) / 6.0).clamp(0, 1))
    torch.testing.assert_close(se(x), ref, rtol=1e-5, atol=1e-5)


def test_default_configs_are_not_shared_or_mutated():
    act = dict(type='ReLU')
    SE(32, act_cfg=act)
    assert act == dict(type='ReLU')
    a, b = SE(32), SE(32)
    assert a.act is not b.act and a.gate is not b.gate


def test_parity_with_fightingcv_attention():
    from mmplug.analysis.peers import parity_se_fightingcv
    fcv = pytest.importorskip('fightingcv_attention.attention.SEAttention')
    ours = randomize_(SE(128), seed=1)
    peer = fcv.SEAttention(channel=128, reduction=16)
    fc1, fc2 = [m for m in peer.modules() if isinstance(m, torch.nn.Linear)]
    # The documented difference: the peer's FC layers have no bias.
    assert fc1.bias is None and fc2.bias is None
    x = torch.randn(4, 128, 9, 11)
    assert (ours(x) - peer(x)).abs().max() > 1e-3  # biases matter
    with torch.no_grad():
        _, transform = parity_se_fightingcv(ours, peer)  # our biases 0, weights copied
    assert transform is None
    assert ours.fc1.bias.abs().max() == 0 and ours.fc2.bias.abs().max() == 0
    diff = (ours(x) - peer(x)).abs().max().item()
    # Linear vs 1x1 conv: a different float32 summation order (measured up to 1.0e-6).
    assert diff < 1e-5, diff


def test_parity_with_mmdet_selayer():
    from mmdet.models.layers import SELayer

    from mmplug.analysis.peers import parity_se_selayer
    ours = randomize_(SE(96), seed=2)  # default config = mmdet's: ReLU, Sigmoid, int(C/16)
    peer = SELayer(96, ratio=16)
    for src, dst in ((ours.fc1, peer.conv1.conv), (ours.fc2, peer.conv2.conv)):
        assert dst.weight.shape == src.weight.shape and dst.bias is not None
    with torch.no_grad():
        _, transform = parity_se_selayer(ours, peer)  # the same parameters
    assert transform is None
    x = torch.randn(3, 96, 10, 7)
    diff = (ours(x) - peer(x)).abs().max().item()
    # F.linear vs the peer's 1x1 convs: float32 summation order only.
    assert diff < 1e-5, diff


def test_parity_with_mmseg_selayer():
    from mmseg.models.utils import SELayer

    from mmplug.analysis.peers import parity_se_selayer
    ours = randomize_(SE(256, rd_divisor=8,
                         gate_cfg=dict(type='HSigmoid', bias=3.0, divisor=6.0)), seed=3)
    peer = SELayer(256, ratio=16)  # its default gate is HSigmoid(bias=3, divisor=6)
    for src, dst in ((ours.fc1, peer.conv1.conv), (ours.fc2, peer.conv2.conv)):
        assert dst.weight.shape == src.weight.shape and dst.bias is not None
    with torch.no_grad():
        _, transform = parity_se_selayer(ours, peer)  # the same parameters
    assert transform is None
    x = torch.randn(3, 256, 6, 5)
    diff = (ours(x) - peer(x)).abs().max().item()
    # Our FC weights run as F.linear, the peer's as 1x1 convs: a different float32
    # summation order over 256 inputs of random (unit-scale) weights; measured 2.1e-6.
    assert diff < 1e-5, diff
    # The documented width difference: mmseg bumps a rounding that loses > 10 %.
    assert SELayer(176, ratio=16).conv1.conv.out_channels == 16
    assert SE(176, rd_divisor=8).rd_channels == 8
    assert SE(176, rd_channels=16).rd_channels == 16


def test_export_traces_without_data_dependent_control_flow():
    se = randomize_(SE(32)).eval()
    x = torch.randn(2, 32, 7, 9)
    exported = torch.export.export(se, (x,))
    torch.testing.assert_close(exported.module()(x), se(x))


def _out_and_grads(module, x, grad_out, reference=False):
    """Output and gradients (input first, then parameters) of ``module`` or, with
    ``reference``, of the equations with autograd's own backward."""
    x = x.detach().requires_grad_()
    if reference:
        fc1, fc2 = _fc(module.fc1), _fc(module.fc2)
        out = _reference_se(x, *fc1, *fc2, gate=module.gate)
    else:
        out = module(x)
    params = list(module.parameters())
    return (out, *torch.autograd.grad(out, [x] + params, grad_out))


def test_gradcheck_float64():
    se = randomize_(SE(16, rd_channels=4), scale=0.5).double()
    x = (torch.randn(2, 16, 4, 3, dtype=torch.float64) + 0.5).requires_grad_()
    params = [p.detach().requires_grad_() for p in se.parameters()]
    names = [n for n, _ in se.named_parameters()]

    def fn(x, *ps):
        return torch.func.functional_call(se, dict(zip(names, ps)), (x,))

    assert torch.autograd.gradcheck(fn, (x, *params))


def test_output_can_be_modified_in_place():
    # mmdet's Bottleneck adds the identity in place: `out += identity`.
    se = randomize_(SE(32))
    x = torch.randn(2, 32, 5, 5, requires_grad=True)
    out = se(x)
    out += 1.0
    out.square().sum().backward()
    ref_x = x.detach().clone().requires_grad_()
    (_reference_se(ref_x, *_fc(se.fc1), *_fc(se.fc2)) + 1.0).square().sum().backward()
    torch.testing.assert_close(x.grad, ref_x.grad, rtol=1e-5, atol=1e-5)


def test_channels_last_and_strided_inputs():
    se = randomize_(SE(32))
    x = torch.randn(2, 32, 7, 6)
    ref = _out_and_grads(se, x, torch.ones_like(x), reference=True)
    for xs in (x.contiguous(memory_format=torch.channels_last), x.transpose(2, 3).mT):
        xs = xs.detach().requires_grad_()
        out = se(xs)
        assert out.is_contiguous(memory_format=torch.channels_last) == \
            xs.is_contiguous(memory_format=torch.channels_last)  # layout kept
        out.sum().backward()  # an expanded (stride-0) output gradient
        torch.testing.assert_close(out, ref[0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(xs.grad, ref[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_low_precision_autocast_backward(dtype, device):
    se = randomize_(SE(64), scale=0.1).to(device)
    conv = torch.nn.Conv2d(64, 64, 1).to(device)
    x = torch.randn(2, 64, 8, 8, device=device) * 30
    with torch.autocast(device_type=device.type, dtype=dtype):
        out = se(conv(x))
    assert out.dtype == dtype
    out.float().square().mean().backward()
    for name, p in [('conv', conv.weight)] + list(se.named_parameters()):
        assert p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_saves_only_input_and_gate_for_backward():
    se = randomize_(SE(64))
    x = torch.randn(2, 64, 14, 14, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        se(x)
    big = [t for t in saved if t.numel() >= x.numel()]
    # no x-sized intermediate: only x itself (saved once or, by older torch, twice)
    assert big and all(t.untyped_storage().data_ptr() == x.untyped_storage().data_ptr()
                       for t in big)
    assert sum(t.numel() for t in saved if t is not x) < x.numel() / 10
