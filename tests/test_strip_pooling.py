"""StripPooling (SPM): the paper's equations, gate at init (default and identity_init),
OpenMMLab integration."""
import pytest
import torch
import torch.nn.functional as F

from mmplug.plugins.strip_pooling import StripPooling

from _harness import (
    assert_grads_reach_every_parameter,
    mmseg_resnet,
    randomize_,
)


def _bn(x, norm):
    return F.batch_norm(x, norm.running_mean, norm.running_var, norm.weight, norm.bias,
                        training=False, eps=norm.eps)


def _reference_spm(m, x):
    """Paper Sec. 3.2 in eval mode, from the module's parameters, with 1-D convolutions."""
    y = x
    if not isinstance(m.reduce, torch.nn.Identity):
        y = F.relu(_bn(F.conv2d(y, m.reduce.conv.weight), m.reduce.norm))
    y_h = y.mean(dim=3)  # [N, C, H]: y^h_{c,i} = mean_j x_{c,i,j}
    y_v = y.mean(dim=2)  # [N, C, W]: y^v_{c,j} = mean_i x_{c,i,j}
    y_h = F.conv1d(y_h, m.conv_h.conv.weight[..., 0], padding=1)  # kernel 3 along H
    y_v = F.conv1d(y_v, m.conv_w.conv.weight[:, :, 0], padding=1)  # kernel 3 along W
    y_h = _bn(y_h, m.conv_h.norm)
    y_v = _bn(y_v, m.conv_w.norm)
    y = F.relu(y_h[..., :, None] + y_v[..., None, :])  # y_{c,i,j} = y^h_{c,i} + y^v_{c,j}
    logit = F.conv2d(y, m.fuse.conv.weight, m.fuse.conv.bias)
    return x * torch.sigmoid(logit) * (2.0 if m.identity_init else 1.0)


def _randomize(m, seed=0):
    return randomize_(m, seed=seed, scale=0.3)


@pytest.mark.parametrize('kwargs', [dict(), dict(identity_init=True), dict(rd_ratio=0.5)])
@pytest.mark.parametrize('shape', [(1, 16, 1, 1), (1, 16, 7, 9), (2, 16, 16, 15), (3, 16, 5, 1)])
def test_shape_preserved_and_matches_paper_equations(kwargs, shape, device):
    m = _randomize(StripPooling(16, **kwargs)).to(device)
    m.eval()
    x = torch.randn(shape, device=device)
    out = m(x)
    assert out.shape == x.shape and torch.isfinite(out).all()
    torch.testing.assert_close(out, _reference_spm(m, x), rtol=1e-5, atol=1e-5)


def test_structure_and_parameter_count():
    m = StripPooling(512)
    assert isinstance(m.reduce, torch.nn.Identity) and m.rd_channels == 512
    assert m.conv_h.conv.kernel_size == (3, 1) and m.conv_w.conv.kernel_size == (1, 3)
    assert m.conv_h.conv.bias is None and m.fuse.conv.bias is not None and m.fuse.norm is None
    assert sum(p.numel() for p in m.parameters()) == 7 * 512 * 512 + 5 * 512  # 1,837,568
    reduced = StripPooling(512, rd_ratio=1 / 4)
    assert reduced.rd_channels == 128 and reduced.reduce.conv.kernel_size == (1, 1)
    assert reduced.fuse.conv.out_channels == 512


def test_training_mode_shapes():
    m = _randomize(StripPooling(16))
    for shape in [(2, 16, 1, 1), (1, 16, 7, 9), (2, 16, 16, 15)]:
        assert m(torch.randn(shape)).shape == shape
    # Without a norm, batch 1 on a 1x1 map trains too (BN needs > 1 value per channel).
    m = _randomize(StripPooling(16, norm_cfg=None))
    assert m.conv_h.conv.bias is not None and m(torch.randn(1, 16, 1, 1)).shape == (1, 16, 1, 1)


def _gate_logit(m, x):
    with torch.no_grad():
        y = m.act(m.conv_h(x.mean(3, keepdim=True)) + m.conv_w(x.mean(2, keepdim=True)))
        return m.fuse(y)


def test_default_gate_at_init_is_one_half_in_expectation():
    # Paper default (training mode): BN outputs ~N(0, 1), y = y^h + y^v has variance ~2,
    # E[ReLU(y)^2] ~ 1, f has He weights (variance 2 / C) and bias 0: z ~ (0, 2).
    torch.manual_seed(0)
    m = StripPooling(256)
    assert torch.all(m.fuse.conv.bias == 0)
    x = torch.randn(4, 256, 16, 16) * 3 + 1
    z = _gate_logit(m, x)
    assert z.mean().abs() < 0.15 and 1.6 < z.var() < 2.4
    gate = m(x) / x
    torch.testing.assert_close(gate, torch.sigmoid(z), rtol=1e-4, atol=1e-5)
    assert 0.45 < gate.mean() < 0.55 and 0.22 < gate.std() < 0.30
    assert 0 < gate.min() and gate.max() < 1


def test_identity_init_is_exact_at_init(device):
    m = StripPooling(32, identity_init=True).to(device)
    assert torch.equal(m.fuse.conv.weight, torch.zeros_like(m.fuse.conv.weight))
    for shape in [(2, 32, 1, 1), (1, 32, 7, 9), (2, 32, 16, 15)]:
        x = torch.randn(shape, device=device)
        assert torch.equal(m(x), x)  # 2 * sigmoid(0) = 1 exactly
    m.eval()
    assert torch.equal(m(x), x)
    # Once f moves, the gate ranges over (0, 2).
    _randomize(m)
    gate = m(x) / x
    assert gate.min() > 0 and gate.max() < 2 and (gate - 1).abs().max() > 0.1


def test_identity_init_at_step_zero_only_f_learns():
    m = StripPooling(16, identity_init=True)
    m(torch.randn(2, 16, 6, 5)).square().sum().backward()
    assert m.fuse.conv.weight.grad.abs().sum() > 0 and m.fuse.conv.bias.grad.abs().sum() > 0
    assert m.conv_h.conv.weight.grad.abs().sum() == 0  # behind the zero-initialised f


@pytest.mark.parametrize('kwargs', [dict(), dict(rd_ratio=0.5)])
def test_gradients_reach_every_parameter(kwargs, device):
    m = _randomize(StripPooling(16, **kwargs)).to(device)
    x = torch.randn(2, 16, 9, 7, device=device, requires_grad=True)
    assert_grads_reach_every_parameter(m, x)


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_low_precision_autocast_is_finite(dtype, device):
    m = _randomize(StripPooling(32)).to(device)
    m.eval()
    conv = torch.nn.Conv2d(32, 32, 1).to(device)
    x = torch.randn(2, 32, 14, 13, device=device) * 10
    with torch.autocast(device_type=device.type, dtype=dtype):
        y = conv(x)
        out = m(y)
    assert out.dtype == dtype and torch.isfinite(out).all()
    ref = m(y.float())
    diff = (out.float() - ref).abs().max().item()
    assert diff < 0.05 * ref.abs().max().item(), diff


def test_inside_mmseg_resnetv1c_dilated():
    plugins = [dict(cfg=dict(type='StripPooling', identity_init=True),
                    stages=(False, False, False, True), position='after_conv2')]
    model = mmseg_resnet(plugins, out_indices=(3, ), strides=(1, 2, 1, 1),
                         dilations=(1, 1, 2, 4))
    model.init_weights()
    model.eval()
    spms = {n: m for n, m in model.named_modules() if isinstance(m, StripPooling)}
    assert set(spms) == {f'layer4.{i}.strip_pooling' for i in range(3)}
    calls = []
    for m in spms.values():
        m.register_forward_hook(lambda *a: calls.append(1))
    out = model(torch.randn(1, 3, 33, 47))[0]
    assert out.shape == (1, 2048, 5, 6) and len(calls) == 3
