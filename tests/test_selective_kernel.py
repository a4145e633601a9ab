"""SK: the paper's equations, numerics and parity with fightingcv-attention (the contract
every module meets: test_contract.py)."""
import pytest
import torch
import torch.nn.functional as F

from mmplug.plugins.selective_kernel import SK

from _harness import (
    assert_grads_reach_every_parameter,
    randomize_,
)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _bn(x, bn, training):
    return F.batch_norm(x, bn.running_mean.clone(), bn.running_var.clone(), bn.weight, bn.bias,
                        training, 0.0, bn.eps)


def _reference_sk(x, sk):
    """The paper's equations (Sec. 3.1) with one loop over the paths."""
    n, c = x.shape[:2]
    paths = []
    for path, d in zip(sk.paths, sk.dilations):  # split
        u = F.conv2d(x, path.conv.weight, padding=d, dilation=d, groups=sk.groups)
        paths.append(F.relu(_bn(u, path.bn, sk.training)))
    s = sum(paths).mean(dim=(2, 3))  # fuse: [N, C]
    z = F.relu(_bn(s @ sk.fc_reduce.conv.weight.flatten(1).t(), sk.fc_reduce.bn, sk.training))
    logits = (z @ sk.fc_select.weight.flatten(1).t()).view(n, len(paths), c)  # [A_1 z, A_2 z]
    a = logits.exp() / logits.exp().sum(dim=1, keepdim=True)  # select
    return sum(a[:, i, :, None, None] * u for i, u in enumerate(paths))


def _randomize(sk, seed=0):
    return randomize_(sk, seed=seed, scale=0.3)


def test_paper_widths_and_parameter_count():
    # d = max(C / r, L) with r = 16, L = 32.
    assert SK(256).rd_channels == 32 and SK(1024).rd_channels == 64
    assert SK(256, rd_channels=8).rd_channels == 8
    sk = SK(256)
    assert [p.conv.dilation for p in sk.paths] == [(1, 1), (2, 2)]
    assert all(p.conv.groups == 32 and p.conv.bias is None for p in sk.paths)
    # 2 grouped 3x3 convs + 2 BNs, W (C->d) + BN, A_1, A_2 (d->C), no biases.
    expected = 2 * (256 * 8 * 9 + 2 * 256) + (256 * 32 + 2 * 32) + 2 * 32 * 256
    assert sum(p.numel() for p in sk.parameters()) == expected


@pytest.mark.parametrize('dilations', [(1, 2), (1, 2, 3)])
@pytest.mark.parametrize('shape', [(2, 64, 1, 1), (2, 64, 7, 9), (3, 64, 16, 15), (2, 32, 5, 1)])
def test_shape_preserved_and_matches_equations_train(shape, dilations, device):
    sk = _randomize(SK(shape[1], dilations=dilations, groups=8)).to(device)
    x = torch.randn(shape, device=device)
    out = sk(x)
    assert out.shape == x.shape and torch.isfinite(out).all()
    torch.testing.assert_close(out, _reference_sk(x, sk), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('shape', [(1, 64, 1, 1), (1, 64, 7, 9), (2, 64, 16, 15)])
def test_shape_preserved_and_matches_equations_eval_batch_one(shape, device):
    sk = _randomize(SK(64, groups=8)).to(device).eval()
    x = torch.randn(shape, device=device)
    out = sk(x)
    assert out.shape == x.shape and torch.isfinite(out).all()
    torch.testing.assert_close(out, _reference_sk(x, sk), rtol=1e-4, atol=1e-4)


def test_single_image_in_training_mode_is_a_documented_bn_limit():
    with pytest.raises(ValueError, match='more than 1 value per channel'):
        SK(64, groups=8)(torch.randn(1, 64, 5, 5))


def test_not_identity_at_init_output_is_a_convex_mix_of_relu_paths():
    torch.manual_seed(0)
    sk = SK(64, groups=8)
    x = torch.randn(4, 64, 8, 8)
    out = sk(x)
    assert (out - x).abs().max() > 0.5  # new features, not the input
    assert torch.all(out >= 0)  # softmax-weighted sum of ReLU outputs
    # The authors' N(0, 0.01) selection FCs: every path starts at a weight of about 1/2
    # (He-initialised FCs gave 0.23-0.77).
    logits = []
    sk.fc_select.register_forward_hook(lambda mod, inp, out: logits.append(out))
    sk(x)
    a = logits[0].view(4, 2, 64).softmax(dim=1)
    assert 0 < (a - 0.5).abs().max() < 0.05


def test_gradients_reach_every_parameter(device):
    sk = _randomize(SK(64, groups=8, dilations=(1, 2, 3))).to(device)
    x = torch.randn(2, 64, 9, 7, device=device, requires_grad=True)
    assert_grads_reach_every_parameter(sk, x)


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
@pytest.mark.parametrize('hw', [(1, 1), (14, 13)])
def test_low_precision_autocast_is_finite(dtype, hw, device):
    sk = _randomize(SK(64, groups=8)).to(device)
    conv = torch.nn.Conv2d(64, 64, 1).to(device)
    x = torch.randn(2, 64, *hw, device=device) * 10
    with torch.autocast(device_type=device.type, dtype=dtype):
        y = conv(x)
        out = sk(y)
    assert torch.isfinite(out).all()
    if hw == (1, 1):
        return  # train-mode BN over 2 values: +-1 or 0, rounding decides; only finiteness
    ref = sk(y.float())
    torch.testing.assert_close(out.float(), ref, rtol=5e-2, atol=5e-2 * ref.abs().max().item())
    # The float32 selection path keeps the mean error at bf16 rounding level (it was up to
    # 8 % with BN over the pooled descriptors of 2 images in bf16).
    assert (out.float() - ref).abs().mean() < 2e-2 * ref.abs().mean()


def test_low_precision_parameters_without_autocast():
    sk = _randomize(SK(64, groups=8)).to(torch.bfloat16)
    x = torch.randn(2, 64, 8, 8, dtype=torch.bfloat16) * 10
    out = sk(x)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


def test_parity_with_fightingcv_attention():
    from mmplug.analysis.peers import parity_sk_fightingcv
    fcv = pytest.importorskip('fightingcv_attention.attention.SKAttention')
    c, groups = 64, 8
    ours = _randomize(SK(c, groups=groups), seed=2).eval()
    # fightingcv: full (biased) convs of kernels k, W without BN/ReLU, biased FCs. With
    # kernels (3, 5) and group=G it computes ours once: biases are zero, the 5x5 kernel
    # holds our dilation-2 taps, W is scaled by our (eval) BN and shifted so z > 0.
    peer = fcv.SKAttention(channel=c, kernels=[3, 5], reduction=16, group=groups, L=32).eval()
    assert peer.d == ours.rd_channels == 32
    with torch.no_grad():
        _, transform = parity_sk_fightingcv(ours, peer)
    assert transform is None
    x = torch.randn(2, c, 12, 11)
    z = []
    ours.fc_reduce.register_forward_hook(lambda mod, inp, out: z.append(out))
    ours(x)
    assert torch.all(z[0] > 1)  # the ReLU is a no-op here, with margin
    diff = (ours(x) - peer(x)).abs().max().item()
    assert diff < 1e-4, diff
    # The documented differences: default fightingcv uses 4 full-conv paths (1/3/5/7) and
    # no BN on W, so its parameter count is far above the paper's unit.
    default = fcv.SKAttention(channel=c)
    assert len(default.convs) == 4 and default.convs[0].conv.groups == 1
    assert sum(p.numel() for p in default.parameters()) > 20 * sum(
        p.numel() for p in SK(c, groups=groups).parameters())
