"""NonLocal: the paper's equations, O(HW) memory, OpenMMLab integration and parity with mmcv's
NonLocal2d (the contract every module meets: test_contract.py)."""
import pytest
import torch
import torch.nn.functional as F

from mmplug.plugins.non_local import NonLocal

from _harness import (
    MixedLayouts,
    assert_grads_reach_every_parameter,
    needs_cpu_flash_attention,
    randomize_,
)
from _harness import mmdet_resnet as _mmdet_resnet


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _reference_non_local(x, nl):
    """The paper's equations with the attention matrix written out (ceil-mode sub-sampling)."""
    n, c, h, w = x.shape
    theta = nl.theta(x).flatten(2)  # [N, C', HW]
    phi, g = nl.phi(x), nl.g(x)
    if nl.sub_sample:
        phi = F.max_pool2d(phi, 2, ceil_mode=True)
        g = F.max_pool2d(g, 2, ceil_mode=True)
    logits = theta.transpose(1, 2) @ phi.flatten(2)  # [N, HW, L]
    if nl.use_scale:
        logits = logits / nl.inter_channels**0.5
    y = logits.softmax(dim=-1) @ g.flatten(2).transpose(1, 2)  # [N, HW, C']
    return x + nl.conv_out(y.transpose(1, 2).reshape(n, -1, h, w))


def _saved_bytes(module, x):
    """Bytes autograd keeps for backward of ``module(x)``: distinct storages, leaving out
    those of ``x`` and of the parameters (they exist anyway; the same rule for every peer)."""
    exclude = {t.untyped_storage().data_ptr() for t in (x, *module.parameters())}
    storages = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in exclude:
            storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = module(x)
    return sum(storages.values()), out


def test_inner_width_follows_mmcv_reduction():
    assert NonLocal(64).inter_channels == 32
    assert NonLocal(7).inter_channels == 3  # max(C // 2, 1) as mmcv
    assert NonLocal(1).inter_channels == 1
    assert NonLocal(64, rd_channels=16).inter_channels == 16
    assert NonLocal(64, rd_ratio=0.25).inter_channels == 16


@pytest.mark.parametrize('norm_cfg', [None, dict(type='BN')])
def test_identity_at_init(norm_cfg):
    nl = NonLocal(32, norm_cfg=norm_cfg)
    x = torch.randn(2, 32, 9, 7)
    assert torch.equal(nl(x), x)
    assert nl.theta.conv.weight.std() < 0.02 and torch.all(nl.theta.conv.bias == 0)


@pytest.mark.parametrize('sub_sample', [False, True])
@pytest.mark.parametrize('shape', [(1, 32, 1, 1), (1, 32, 7, 9), (2, 32, 16, 15), (3, 16, 5, 1)])
def test_shape_preserved_and_matches_equations(shape, sub_sample, device):
    nl = randomize_(NonLocal(shape[1], sub_sample=sub_sample), scale=0.3).to(device)
    x = torch.randn(shape, device=device)
    out = nl(x)
    assert out.shape == x.shape and torch.isfinite(out).all()
    torch.testing.assert_close(out, _reference_non_local(x, nl), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('sub_sample', [False, True])
def test_channels_last_input_stays_channels_last(sub_sample):
    # The attention output is a channels-last view: it goes to the output conv as it is
    # for a channels-last x, and as an NCHW copy for an NCHW x (test_contract.py).
    nl = randomize_(NonLocal(16, sub_sample=sub_sample), scale=0.3)
    x = torch.randn(2, 16, 7, 6)
    with MixedLayouts() as mixed:
        out = nl(x.contiguous(memory_format=torch.channels_last))
    assert not mixed.ops, sorted(mixed.ops)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, nl(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('norm_cfg', [None, dict(type='BN')])
def test_gradients_reach_every_parameter(norm_cfg, device):
    nl = randomize_(NonLocal(32, sub_sample=True, norm_cfg=norm_cfg), scale=0.3).to(device)
    x = torch.randn(2, 32, 9, 8, device=device, requires_grad=True)
    assert_grads_reach_every_parameter(nl, x)


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
@pytest.mark.parametrize('hw', [(1, 1), (14, 13)])
def test_low_precision_autocast_is_finite(dtype, hw, device):
    # Large activations (x 30), attention logits of a few units: bf16 keeps 8 bits, so much
    # sharper logits would turn rounding into a different softmax, not a precision bug.
    nl = randomize_(NonLocal(64, sub_sample=True), scale=0.05).to(device)
    conv = torch.nn.Conv2d(64, 64, 1).to(device)
    x = torch.randn(2, 64, *hw, device=device) * 30
    with torch.autocast(device_type=device.type, dtype=dtype):
        y = conv(x)
        out = nl(y)
    assert out.dtype == dtype and torch.isfinite(out).all()
    ref = nl(y.float())
    torch.testing.assert_close(out.float(), ref, rtol=5e-2, atol=5e-2 * ref.abs().max().item())


def _mmcv_pair(use_scale, sub_sample, norm_cfg, channels=32, seed=0):
    from mmcv.cnn import NonLocal2d
    ours = randomize_(NonLocal(channels, use_scale=use_scale, sub_sample=sub_sample,
                               norm_cfg=norm_cfg), seed=seed, scale=0.3)
    peer = NonLocal2d(channels, reduction=2, use_scale=use_scale, sub_sample=sub_sample,
                      conv_cfg=dict(type='Conv2d'), norm_cfg=norm_cfg, mode='embedded_gaussian')
    # mmcv nests g/phi in a Sequential(conv, pool) when it sub-samples.
    state = {(k.replace('g.conv', 'g.0.conv').replace('phi.conv', 'phi.0.conv')
              if sub_sample else k): v
             for k, v in ours.state_dict().items()}
    peer.load_state_dict(state, strict=True)
    return ours, peer


@pytest.mark.parametrize('norm_cfg', [None, dict(type='BN')])
@pytest.mark.parametrize('sub_sample', [False, True])
@pytest.mark.parametrize('use_scale', [True, False])
def test_parity_with_mmcv_non_local_2d(use_scale, sub_sample, norm_cfg):
    ours, peer = _mmcv_pair(use_scale, sub_sample, norm_cfg)
    x = torch.randn(2, 32, 12, 10)  # even H, W: both pool the same windows
    for train in (True, False):
        ours.train(train)
        peer.train(train)
        diff = (ours(x) - peer(x)).abs().max().item()
        assert diff < 1e-4, (train, diff)


def test_mmcv_checkpoint_loads_and_both_start_as_identity():
    from mmcv.cnn import NonLocal2d
    peer = NonLocal2d(32)
    ours = NonLocal(32)
    assert {k: v.shape for k, v in peer.state_dict().items()} == \
        {k: v.shape for k, v in ours.state_dict().items()}
    x = torch.randn(1, 32, 6, 6)
    assert torch.equal(peer(x), x) and torch.equal(ours(x), x)
    randomize_(peer, scale=0.3)
    ours.load_state_dict(peer.state_dict(), strict=True)
    torch.testing.assert_close(ours(x), peer(x), rtol=1e-5, atol=1e-5)


def test_odd_size_sub_sample_keeps_border_where_mmcv_drops_it():
    # The documented difference: ceil-mode pooling keeps the last row/column as keys.
    ours, peer = _mmcv_pair(True, True, None)
    x = torch.randn(2, 32, 7, 9)
    out = ours(x)
    torch.testing.assert_close(out, _reference_non_local(x, ours), rtol=1e-4, atol=1e-4)
    assert (out - peer(x)).abs().max() > 1e-3
    # mmcv's floor-mode pool cannot take a map with a side of 1; ours can.
    with pytest.raises(RuntimeError):
        peer(torch.randn(1, 32, 1, 6))
    assert ours(torch.randn(1, 32, 1, 6)).shape == (1, 32, 1, 6)


@needs_cpu_flash_attention
def test_memory_kept_for_backward_is_linear_in_hw():
    from mmcv.cnn import NonLocal2d
    ours = randomize_(NonLocal(16), scale=0.3)
    peer = NonLocal2d(16)
    peer.load_state_dict(ours.state_dict())
    ours_bytes, peer_bytes = {}, {}
    for side in (32, 64):
        x = torch.randn(1, 16, side, side, requires_grad=True)
        ours_bytes[side], out = _saved_bytes(ours, x)
        peer_bytes[side], ref = _saved_bytes(peer, x)
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    # Linear in HW: theta, phi, g, the attention output and the output conv's input
    # ([HW, C'] each) and the row log-sum-exp [HW], never the [HW, HW] matrix.
    assert ours_bytes[64] == 4 * ours_bytes[32] <= 64 * 64 * (5 * 8 + 1) * 4, ours_bytes
    hw = 64 * 64
    # mmcv keeps the [HW, HW] matrix (64 MiB here) and theta, phi, g, y.
    assert peer_bytes[64] > hw * hw * 4
    assert ours_bytes[64] <= peer_bytes[64] / 4, (ours_bytes, peer_bytes)


def test_attention_rows_are_what_the_block_averages():
    nl = randomize_(NonLocal(16, sub_sample=True), scale=0.3).eval()
    x = torch.randn(2, 16, 6, 5)
    query = torch.tensor([0, 7, 29])
    attn = nl.attention(x, query)  # [N, Q, L], L = 3 x 3 pooled keys
    assert attn.shape == (2, 3, 9)
    torch.testing.assert_close(attn.sum(-1), torch.ones(2, 3))
    g = F.max_pool2d(nl.g(x), 2, ceil_mode=True).flatten(2)  # [N, C', L]
    y = torch.einsum('nql,ncl->ncq', attn, g)  # the block's y at the queries
    z = nl(x) - x  # W_z y
    w = nl.conv_out.conv
    expected = torch.einsum('oc,ncq->noq', w.weight.flatten(1), y) + w.bias[:, None]
    torch.testing.assert_close(z.flatten(2)[..., query], expected, rtol=1e-5, atol=1e-6)


def test_traces():
    nl = randomize_(NonLocal(16, sub_sample=True), scale=0.3)
    x = torch.randn(1, 16, 6, 6)
    traced = torch.jit.trace(nl, x)
    torch.testing.assert_close(traced(x + 1), nl(x + 1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('sub_sample', [False, True])
def test_gradcheck_float64(sub_sample):
    nl = randomize_(NonLocal(4, sub_sample=sub_sample), scale=0.5).double()
    x = torch.randn(1, 4, 3, 4, dtype=torch.float64, requires_grad=True)
    params = tuple(nl.parameters())
    # gradcheck perturbs the parameters in place; the module reads them.
    assert torch.autograd.gradcheck(lambda x, *p: nl(x), (x, *params), eps=1e-6, atol=1e-7)


def test_backward_matches_explicit_attention():
    # float64 (the CPU flash kernel runs it too): the fused kernel's backward equals
    # autograd through the explicit matrix to rounding. phi's bias has an exactly-zero gradient
    # (it shifts every logit of a row alike), so compare against the largest gradient.
    nl = randomize_(NonLocal(16, sub_sample=True), scale=0.3).double()
    x = torch.randn(2, 16, 10, 11, dtype=torch.float64, requires_grad=True)
    nl(x).square().sum().backward()
    grads = [p.grad.clone() for p in nl.parameters()] + [x.grad.clone()]
    nl.zero_grad()
    x.grad = None
    _reference_non_local(x, nl).square().sum().backward()
    wants = [p.grad for p in nl.parameters()] + [x.grad]
    scale = max(w.abs().max().item() for w in wants)
    for got, want in zip(grads, wants):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12 * scale)


def test_inside_mmdet_resnet_is_identity_at_init():
    plugins = [dict(cfg=dict(type='NonLocal'), stages=(False, False, True, False),
                    position='after_conv3')]
    model = _mmdet_resnet(plugins, depth=50, out_indices=(0, 1, 2, 3))
    plain = _mmdet_resnet(None, depth=50, out_indices=(0, 1, 2, 3))
    model.init_weights()
    plain.load_state_dict(model.state_dict(), strict=False)
    model.eval()
    plain.eval()
    nls = {n: m for n, m in model.named_modules() if isinstance(m, NonLocal)}
    assert len(nls) == 6 and {m.in_channels for m in nls.values()} == {1024}
    assert 'layer3.0.nonlocal_block' in nls
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(model(x), plain(x)):
            assert torch.equal(a, b)


def test_swapping_mmcv_type_in_a_backbone_keeps_checkpoint_and_outputs():
    def backbone(type_name):
        plugins = [dict(cfg=dict(type=type_name), stages=(False, False, False, True),
                        position='after_conv3')]
        model = _mmdet_resnet(plugins, depth=50)
        model.eval()  # mmdet's ResNet.train() returns None: no chaining
        return model

    theirs, ours = backbone('NonLocal2d'), backbone('NonLocal')
    for m in theirs.modules():
        if type(m).__name__ == 'NonLocal2d':
            randomize_(m, scale=0.05)
    ours.load_state_dict(theirs.state_dict(), strict=True)  # same keys, same shapes
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        diff = max((a - b).abs().max().item() for a, b in zip(ours(x), theirs(x)))
    assert diff < 1e-4, diff
