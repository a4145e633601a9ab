"""CBAM: the paper's equations, numerics, export, OpenMMLab integration and parity with
fightingcv-attention (the contract every module meets: test_contract.py)."""
import inspect

import pytest
import torch
import torch.nn.functional as F

from mmplug.plugins.cbam import CBAM

from _harness import (
    assert_grads_reach_every_parameter,
    randomize_,
)
from _harness import mmdet_resnet as _mmdet_resnet


@pytest.fixture(autouse=True)
def _seeded():
    """Every test draws its inputs from a fixed seed, whatever runs before it."""
    torch.manual_seed(0)


def _randomize(cbam, seed=0):
    return randomize_(cbam, seed=seed, scale=0.5)


def _reference_cbam(x, cbam):
    """The paper's Eqs. 1-3, written out with plain functional ops (eval-mode BN)."""
    w1, b1 = cbam.fc1.weight.flatten(1), cbam.fc1.bias
    w2, b2 = cbam.fc2.weight.flatten(1), cbam.fc2.bias

    def mlp(v):  # [N, C]
        return torch.relu(v @ w1.t() + b1) @ w2.t() + b2

    n, c, h, w = x.shape
    flat = x.reshape(n, c, h * w)
    mc = torch.sigmoid(mlp(flat.mean(2)) + mlp(flat.max(2).values))
    f1 = x * mc[:, :, None, None]
    desc = torch.stack([f1.max(1).values, f1.mean(1)], dim=1)
    k = cbam.kernel_size
    s = F.conv2d(desc, cbam.spatial_conv.weight, cbam.spatial_conv.bias, padding=k // 2)
    norm = cbam.spatial_norm
    if isinstance(norm, torch.nn.BatchNorm2d):
        s = (s - norm.running_mean) / (norm.running_var + norm.eps).sqrt() * norm.weight \
            + norm.bias
    return f1 * torch.sigmoid(s)


def _grads(cbam, x, go, fn=None, create_graph=False):
    x = x.detach().clone().requires_grad_()
    out = (fn or (lambda v: cbam(v)))(x)
    grads = torch.autograd.grad(out, [x, *cbam.parameters()], go, create_graph=create_graph)
    return out.detach(), grads


def test_structure_and_param_count_at_2048():
    cbam = CBAM(2048)
    assert cbam.rd_channels == 128 and cbam.kernel_size == 7
    assert cbam.fc1.bias is not None and cbam.fc2.bias is not None  # the authors' MLP
    assert cbam.spatial_conv.bias is None  # conv then BN, no bias
    assert isinstance(cbam.spatial_norm, torch.nn.BatchNorm2d)
    assert cbam.spatial_norm.momentum == 0.01
    n = sum(p.numel() for p in cbam.parameters())
    assert n == (2 * 2048 * 128 + 128 + 2048) + 2 * 7 * 7 + 2 == 526564
    no_norm = CBAM(2048, norm_cfg=None)
    assert isinstance(no_norm.spatial_norm, torch.nn.Identity)
    assert no_norm.spatial_conv.bias is not None


@pytest.mark.parametrize('shape', [(1, 32, 1, 1), (1, 32, 7, 9), (2, 32, 16, 15), (3, 48, 5, 1)])
def test_shape_preserved_and_matches_equations(shape, device):
    cbam = _randomize(CBAM(shape[1])).to(device).eval()
    x = torch.randn(shape, device=device)
    out = cbam(x)
    assert out.shape == x.shape and torch.isfinite(out).all()
    torch.testing.assert_close(out, _reference_cbam(x, cbam), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('kernel_size', [3, 7])
def test_without_norm_matches_equations(kernel_size):
    cbam = _randomize(CBAM(32, kernel_size=kernel_size, norm_cfg=None))
    x = torch.randn(2, 32, 8, 11)
    torch.testing.assert_close(cbam(x), _reference_cbam(x, cbam), rtol=1e-5, atol=1e-5)


def test_init_spatial_gate_is_exactly_half():
    cbam = CBAM(64)
    assert torch.equal(cbam.spatial_norm.weight, torch.zeros(1))
    assert torch.equal(cbam.fc1.bias, torch.zeros_like(cbam.fc1.bias))
    assert torch.equal(cbam.fc2.bias, torch.zeros_like(cbam.fc2.bias))
    x = torch.randn(2, 64, 6, 7)
    # Channel gate as written in the paper, then the spatial gate must be exactly 0.5.
    w1, w2 = cbam.fc1.weight.flatten(1), cbam.fc2.weight.flatten(1)
    flat = x.flatten(2)
    mc = torch.sigmoid(torch.relu(flat.mean(2) @ w1.t()) @ w2.t()
                       + torch.relu(flat.amax(2) @ w1.t()) @ w2.t())
    for mode in (True, False):  # BN weight 0: both batch and running stats give 0
        cbam.train(mode)
        torch.testing.assert_close(cbam(x), 0.5 * x * mc[:, :, None, None])
    assert 0.3 < mc.mean().item() < 0.7


def test_gradients_reach_every_parameter(device):
    cbam = _randomize(CBAM(64)).to(device)
    x = torch.randn(2, 64, 9, 7, device=device, requires_grad=True)
    assert_grads_reach_every_parameter(cbam, x)


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
@pytest.mark.parametrize('hw', [(1, 1), (14, 15)])
def test_low_precision_autocast_is_finite(dtype, hw, device):
    cbam = _randomize(CBAM(128)).to(device).eval()
    with torch.no_grad():
        cbam.fc1.weight.mul_(0.1)
    conv = torch.nn.Conv2d(128, 128, 1).to(device)
    x = torch.randn(2, 128, *hw, device=device) * 30
    with torch.autocast(device_type=device.type, dtype=dtype):
        y = conv(x)
        out = cbam(y)
    assert out.dtype == y.dtype == dtype
    assert torch.isfinite(out).all()
    # Two sigmoid gates in sequence compound bf16's 8-bit mantissa: compare to the scale.
    ref = cbam(y.float())
    err = (out.float() - ref).abs()
    assert err.max() <= 0.05 * ref.abs().max() and err.mean() <= 0.02 * ref.abs().mean()


@pytest.mark.parametrize('kwargs', [dict(), dict(norm_cfg=None, kernel_size=3)])
def test_gradients_match_the_equations(kwargs, device):
    ours = _randomize(CBAM(48, **kwargs)).to(device, torch.float64).eval()
    x = torch.randn(3, 48, 6, 5, device=device, dtype=torch.float64)
    go = torch.randn_like(x)
    out, grads = _grads(ours, x, go)
    ref_out, ref_grads = _grads(ours, x, go, lambda v: _reference_cbam(v, ours))
    torch.testing.assert_close(out, ref_out, rtol=1e-12, atol=1e-12)
    names = ['x'] + [n for n, _ in ours.named_parameters()]
    for name, g, r in zip(names, grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12, msg=name)


def test_gradcheck_and_gradgradcheck_fp64():
    cbam = _randomize(CBAM(8, rd_channels=2, kernel_size=3)).double()
    x = torch.randn(2, 8, 3, 4, dtype=torch.float64, requires_grad=True)
    for mode in (True, False):  # BN with batch and with running statistics
        cbam.train(mode)
        assert torch.autograd.gradcheck(cbam, (x,))
        # create_graph=True takes the differentiable formulas; the second-order pass
        # then visits only some of the three functions.
        assert torch.autograd.gradgradcheck(cbam, (x,), fast_mode=True)
    # Parameters too (through a functional call).
    names = [n for n, _ in cbam.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for p in cbam.parameters())

    def fn(x, *ps):
        return torch.func.functional_call(cbam, dict(zip(names, ps)), (x,))
    assert torch.autograd.gradcheck(fn, (x,) + params, fast_mode=True)


def test_channels_last_input():
    cbam = _randomize(CBAM(64))
    x = torch.randn(2, 64, 6, 7)
    go = torch.randn_like(x)
    out, grads = _grads(cbam, x, go)
    cl = x.contiguous(memory_format=torch.channels_last)
    out_cl, grads_cl = _grads(cbam, cl, go.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out_cl, out, rtol=1e-6, atol=1e-6)
    for g, r in zip(grads_cl, grads):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_low_precision_autocast_backward(dtype, device):
    cbam = _randomize(CBAM(64)).to(device)
    conv = torch.nn.Conv2d(64, 64, 1).to(device)
    x = torch.randn(2, 64, 10, 9, device=device, requires_grad=True)
    with torch.autocast(device_type=device.type, dtype=dtype):
        out = cbam(conv(x))
    assert out.dtype == dtype
    out.float().square().mean().backward()
    for name, p in [('x', x), ('conv', conv.weight)] + list(cbam.named_parameters()):
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_gates_are_what_multiply_the_features():
    cbam = _randomize(CBAM(32)).eval()
    x = torch.randn(2, 32, 5, 7)
    channel, spatial = cbam.gates(x)
    assert channel.shape == (2, 32, 1, 1) and spatial.shape == (2, 1, 5, 7)
    torch.testing.assert_close(cbam(x), x * channel * spatial, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(cbam(x), _reference_cbam(x, cbam), rtol=1e-5, atol=1e-6)


def test_global_max_pool_is_a_reduction_and_exports():
    cbam = _randomize(CBAM(32)).eval()
    assert not any(isinstance(m, (torch.nn.AdaptiveMaxPool2d, torch.nn.MaxPool2d))
                   for m in cbam.modules())
    x = torch.randn(2, 32, 7, 9)
    exported = torch.export.export(cbam, (x,))
    ops = {str(node.target) for node in exported.graph.nodes if node.op == 'call_function'}
    assert not any('max_pool' in op for op in ops), ops
    assert any('max' in op and 'pool' not in op for op in ops), ops
    torch.testing.assert_close(exported.module()(x), cbam(x))
    # The same program runs at another size (no size baked in by pooling).
    other = torch.randn(1, 32, 5, 12)
    torch.testing.assert_close(torch.export.export(cbam, (other,)).module()(other), cbam(other))


def test_onnx_export():
    pytest.importorskip('onnx')
    import io
    cbam = _randomize(CBAM(32)).eval()
    buf = io.BytesIO()
    # The TorchScript exporter: torch's default before 2.9, `dynamo=False` from 2.5 on.
    legacy = {'dynamo': False} if 'dynamo' in inspect.signature(torch.onnx.export).parameters \
        else {}
    torch.onnx.export(cbam, (torch.randn(1, 32, 7, 9),), buf, input_names=['x'],
                      dynamic_axes={'x': {2: 'h', 3: 'w'}}, **legacy)
    import onnx
    model = onnx.load_from_string(buf.getvalue())
    op_types = {node.op_type for node in model.graph.node}
    assert 'ReduceMax' in op_types and not op_types & {'MaxPool', 'GlobalMaxPool'}, op_types
    # The exported graph computes the module's function, at another size too.
    from onnx.reference import ReferenceEvaluator
    x = torch.randn(1, 32, 5, 12)
    out = ReferenceEvaluator(model).run(None, {'x': x.numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(out), cbam(x), rtol=1e-5, atol=1e-5)


def test_tracing_sees_plain_ops():
    """jit.trace (the ONNX exporter's path) records tensor ops, not our autograd
    functions, even with grad enabled and an input that requires it."""
    cbam = _randomize(CBAM(32)).train()
    x = torch.randn(2, 32, 7, 9, requires_grad=True)
    traced = torch.jit.trace(cbam, (x,), check_trace=False)
    kinds = {node.kind() for node in traced.graph.nodes()}
    assert 'prim::PythonOp' not in kinds and 'aten::max' in kinds, kinds
    # The same graph with and without grad (jit.trace's own check re-traces).
    cbam.eval()
    traced = torch.jit.trace(cbam, (x,))
    with torch.no_grad():
        no_grad = torch.jit.trace(cbam, (x,))
    assert [n.kind() for n in no_grad.graph.nodes()] == [n.kind() for n in traced.graph.nodes()]
    other = torch.randn(1, 32, 5, 12)
    torch.testing.assert_close(traced(other), cbam(other))


def test_parity_with_fightingcv_attention():
    from mmplug.analysis.peers import parity_cbam_fightingcv
    fcv = pytest.importorskip('fightingcv_attention.attention.CBAM')
    ours = _randomize(CBAM(128, norm_cfg=None), seed=5)
    peer = fcv.CBAMBlock(channel=128, reduction=16, kernel_size=7)
    x = torch.randn(3, 128, 9, 10)
    with torch.no_grad():
        # our MLP biases 0 (the peer's MLP has none), the rest copied
        _, transform = parity_cbam_fightingcv(ours, peer)
    # The documented difference: the peer adds the input back (a residual).
    diff = (ours(x) - transform(peer(x), [x])).abs().max().item()
    assert diff < 1e-5, diff
    torch.testing.assert_close(transform(peer(x), [x]), peer(x) - x)


def test_documented_differences_from_fightingcv_attention():
    fcv = pytest.importorskip('fightingcv_attention.attention.CBAM')
    peer = fcv.CBAMBlock(channel=128, reduction=16)
    assert peer.sa.conv.kernel_size == (49, 49)  # paper: 7
    assert peer.ca.se[0].bias is None and peer.ca.se[2].bias is None  # authors: bias
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in peer.modules())
    assert any(isinstance(m, torch.nn.AdaptiveMaxPool2d) for m in peer.modules())
    ours = CBAM(128)
    assert ours.kernel_size == 7 and isinstance(ours.spatial_norm, torch.nn.BatchNorm2d)
    # Ours has no residual: a zero spatial gate input would give exactly 0.5 * M_c * x,
    # the peer's output is that plus x.
    with torch.no_grad():
        torch.nn.init.zeros_(peer.sa.conv.weight)
        torch.nn.init.zeros_(peer.sa.conv.bias)
        for i in (0, 2):
            peer.ca.se[i].weight.copy_(getattr(ours, f'fc{i // 2 + 1}').weight)
    x = torch.randn(2, 128, 5, 6)
    torch.testing.assert_close(peer(x) - x, ours(x), rtol=1e-5, atol=1e-6)


def test_inside_mmdet_resnet_with_config_plugins():
    plugins = [dict(cfg=dict(type='CBAM'), stages=(False, True, True, True),
                    position='after_conv3')]
    model = _mmdet_resnet(plugins, out_indices=(0, 1, 2, 3), norm_eval=True)
    # mmdet's norm_eval puts every BN in eval mode, the plugins' included; each plugin sets
    # its own BNs back to its mode at forward (tests/test_norm_eval.py).
    model.train()
    cbams = {n: m for n, m in model.named_modules() if isinstance(m, CBAM)}
    assert len(cbams) == 4 + 6 + 3 and 'layer2.0.cbam' in cbams and 'layer1.0.cbam' not in cbams
    assert {m.in_channels for m in cbams.values()} == {512, 1024, 2048}
    assert not any(m.spatial_norm.training for m in cbams.values())
    calls = []
    for m in cbams.values():
        m.register_forward_hook(lambda *a: calls.append(1))
    outs = model(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == [256, 512, 1024, 2048]
    assert len(calls) == 13
