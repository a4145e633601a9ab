"""RFB: the paper's block and receptive fields, the per-level neck, OpenMMLab integration."""
import pytest
import torch
import torch.nn as nn
from mmcv.cnn import ConvModule

from mmplug.necks.rfb import RFB, RFBBlock  # importing registers RFB and RFBBlock

from _harness import (
    assert_grads_reach_every_parameter,
    build_model_in_scope,
    randomize_,
    tiny_det_batch,
    tiny_faster_rcnn,
    total_loss,
)


def _convs(branch):
    return [m.conv for m in branch]


def _linear_positive_block(**kwargs):
    """A linearised block (no norm, no activation) with positive weights and zero biases:
    its impulse response is non-zero exactly on each branch's receptive field."""
    block = RFBBlock(1, norm_cfg=None, act_cfg=None, rd_channels=2, variant='paper', **kwargs)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in block.named_parameters():
            if name.endswith('bias'):
                p.zero_()
            else:
                p.copy_(torch.rand(p.shape, generator=gen) + 0.1)
    return block


def _support(y):
    """Nonzero positions of a [1, C, H, W] map, as a bool [H, W] map."""
    return (y.abs().sum(dim=(0, 1)) > 0)


# --------------------------------------------------------------------------- arguments


def test_block_mid_channels_is_an_explicit_keyword():
    # in_channels, out_channels positional; the rest keyword-only (easy to confuse).
    with pytest.raises(TypeError):
        RFBBlock(64, 64, 16)


def test_neck_wrong_number_of_levels_named():
    neck = RFB([16] * 5)
    with pytest.raises(ValueError, match=r'built for 5 levels \(in_channels=\[16, 16, 16, 16, '
                                         r'16\]\), got 4 feature maps'):
        neck(tuple(torch.randn(1, 16, 4, 4) for _ in range(4)))
    with pytest.raises(TypeError, match='tuple of 5 feature maps'):
        neck(torch.randn(1, 16, 4, 4))


def test_neck_wrong_level_channels_named():
    # e.g. built for FPN's outputs but fed a backbone's stages.
    neck = RFB([16, 16, 16])
    feats = (torch.randn(1, 16, 8, 8), torch.randn(1, 32, 4, 4), torch.randn(1, 16, 2, 2))
    with pytest.raises(ValueError, match=r'level 1 must be \[N, 16, H, W\] \(in_channels\[1\] = '
                                         r'16\), got \[1, 32, 4, 4\]'):
        neck(feats)


# --------------------------------------------------------------------------- structure


def test_release_structure_and_defaults():
    """The authors' BasicRFB (RFBNet models/RFB_Net_vgg.py) with the arguments every RFB of
    the released models passes: scale 1.0, visual 2 (rates 2, 3, 5)."""
    block = RFBBlock(256)
    assert block.variant == 'release' and block.residual_scale == 1.0
    assert block.branch_dilations == (2, 3, 5) and block.rd_channels == 32  # C / 8
    m = 32
    expected = [  # (kernel, dilation, in, out, activation) per conv
        [((1, 1), (1, 1), 256, 2 * m, True), ((3, 3), (2, 2), 2 * m, 2 * m, False)],
        [((1, 1), (1, 1), 256, m, True), ((3, 3), (1, 1), m, 2 * m, True),
         ((3, 3), (3, 3), 2 * m, 2 * m, False)],
        [((1, 1), (1, 1), 256, m, True), ((3, 3), (1, 1), m, m // 2 * 3, True),
         ((3, 3), (1, 1), m // 2 * 3, 2 * m, True), ((3, 3), (5, 5), 2 * m, 2 * m, False)],
    ]
    for branch, exp in zip(block.branches, expected):
        got = [(mod.conv.kernel_size, mod.conv.dilation, mod.conv.in_channels,
                mod.conv.out_channels, mod.with_activation) for mod in branch]
        assert got == exp
    assert block.fuse.conv.in_channels == 6 * m and not block.fuse.with_activation
    # A 1x1 conv + BN shortcut even when the widths match.
    assert isinstance(block.shortcut, ConvModule) and not block.shortcut.with_activation
    randomize_(block).eval()
    with torch.no_grad():
        inp = torch.randn(2, 256, 7, 6)
        cat = torch.cat([br(inp) for br in block.branches], dim=1)
        torch.testing.assert_close(block(inp), torch.relu(block.fuse(cat) + block.shortcut(inp)))
    with pytest.raises(ValueError, match='three branches'):
        RFBBlock(64, branch_dilations=(1, 2))


def test_paper_variant_loads_checkpoints_of_the_former_default():
    paper = randomize_(RFBBlock(64, variant='paper'))
    with pytest.raises(ValueError, match="variant='release'.*variant='paper', residual_scale=0.1"):
        RFBBlock(64).load_state_dict(paper.state_dict())
    again = RFBBlock(64, variant='paper')
    again.load_state_dict(paper.state_dict())
    x = torch.randn(2, 64, 5, 5)
    torch.testing.assert_close(again.eval()(x), paper.eval()(x))
    with pytest.raises(ValueError, match='variant must be one of'):
        RFBBlock(64, variant='v1')


def test_paper_structure_and_defaults():
    block = RFBBlock(256, variant='paper')
    assert block.branch_dilations == (1, 3, 5) and block.residual_scale == 0.1
    assert block.rd_channels == 64 and block.out_channels == 256
    assert isinstance(block.shortcut, nn.Identity)
    # Branch i: 1x1 bottleneck, i stacked 3x3 (kernel 1, 3, 5), then 3x3 at rate r_i.
    expected = [
        [((1, 1), (1, 1)), ((3, 3), (1, 1))],
        [((1, 1), (1, 1)), ((3, 3), (1, 1)), ((3, 3), (3, 3))],
        [((1, 1), (1, 1)), ((3, 3), (1, 1)), ((3, 3), (1, 1)), ((3, 3), (5, 5))],
    ]
    for branch, exp in zip(block.branches, expected):
        convs = _convs(branch)
        assert [(c.kernel_size, c.dilation) for c in convs] == exp
        assert convs[0].in_channels == 256
        assert all(c.out_channels == 64 and c.stride == (1, 1) for c in convs)
        # conv-BN-ReLU in every branch layer
        assert all(isinstance(m.bn, nn.BatchNorm2d) and isinstance(m.activate, nn.ReLU)
                   for m in branch)
    # Fusing 1x1: linear (BN, no activation) before the sum; ReLU after it.
    assert block.fuse.conv.kernel_size == (1, 1) and block.fuse.conv.in_channels == 3 * 64
    assert not block.fuse.with_activation and isinstance(block.fuse.bn, nn.BatchNorm2d)
    assert isinstance(block.act, nn.ReLU)
    assert block.receptive_fields == (3, 9, 15)
    # No module or parameter shared between branches or levels. (parameters() and modules()
    # yield a shared one once, so they are listed with their duplicates.)
    neck = RFB([16, 16], variant='paper')
    params = [p for _, p in neck.named_parameters(remove_duplicate=False)]
    modules = [m for _, m in neck.named_modules(remove_duplicate=False)]
    assert params and len({id(p) for p in params}) == len(params)
    assert len({id(m) for m in modules}) == len(modules)


def test_rd_channels_and_rd_divisor():
    paper = dict(variant='paper')
    assert RFBBlock(256, rd_ratio=1 / 8, **paper).rd_channels == 32
    assert RFBBlock(256, rd_channels=40, **paper).rd_channels == 40
    assert RFBBlock(100, rd_divisor=8, **paper).rd_channels == 24
    assert RFBBlock(2, **paper).rd_channels == 1
    assert RFBBlock(256).rd_channels == 32 and RFBBlock(100, rd_divisor=8).rd_channels == 16


def test_parameter_counts_at_256():
    assert sum(p.numel() for p in RFBBlock(256, variant='paper').parameters()) == 321_152
    assert sum(p.numel() for p in RFB([256] * 5, variant='paper').parameters()) == 5 * 321_152
    assert sum(p.numel() for p in RFBBlock(256).parameters()) == 319_968


def test_shortcut_projection_when_channels_change():
    block = RFBBlock(32, 16, variant='paper')
    assert isinstance(block.shortcut, ConvModule)
    assert block.shortcut.conv.kernel_size == (1, 1) and not block.shortcut.with_activation
    assert isinstance(RFBBlock(16, 16, variant='paper').shortcut, nn.Identity)


# --------------------------------------------------------------------------- receptive fields


@pytest.mark.parametrize('dilations', [(1, 3, 5), (1, 2, 3), (1, 3, 5, 7)])
def test_branch_impulse_response_is_the_full_receptive_field(dilations):
    # Paper: branch i is a (2i+1)x(2i+1) kernel then a 3x3 at rate r_i, i.e. an RF of
    # (2i+1) + 2 r_i. With r_i <= 2i+1 the dilated taps leave no holes.
    block = _linear_positive_block(branch_dilations=dilations)
    size, c = 41, 20
    x = torch.zeros(1, 1, size, size)
    x[0, 0, c, c] = 1.0
    with torch.no_grad():
        for i, (branch, r) in enumerate(zip(block.branches, dilations)):
            rf = 2 * i + 1 + 2 * r
            half = rf // 2
            expected = torch.zeros(size, size, dtype=torch.bool)
            expected[c - half:c + half + 1, c - half:c + half + 1] = True
            assert torch.equal(_support(branch(x)), expected), (i, r, rf)
        # The whole linear block: the widest branch's field (15x15 for the paper's block).
        half = max(block.receptive_fields) // 2
        support = _support(block(x))
        assert support.sum() == (2 * half + 1) ** 2
        assert support[c - half:c + half + 1, c - half:c + half + 1].all()


def test_paper_receptive_fields_are_3_9_15():
    block = _linear_positive_block()
    x = torch.zeros(1, 1, 31, 31)
    x[0, 0, 15, 15] = 1.0
    with torch.no_grad():
        sides = [int(_support(b(x)).any(dim=0).sum()) for b in block.branches]
    assert sides == [3, 9, 15] == list(block.receptive_fields)


def test_rate_above_kernel_size_leaves_holes():
    # Why the paper pairs rate r with kernel k = r: a rate-5 3x3 after a 3x3 kernel
    # (k = 3 < r) samples 3 columns out of every 5.
    block = _linear_positive_block(branch_dilations=(1, 5))
    x = torch.zeros(1, 1, 31, 31)
    x[0, 0, 15, 15] = 1.0
    with torch.no_grad():
        row = _support(block.branches[1](x))[15]
    assert row.nonzero().flatten().tolist() == [9, 10, 11, 14, 15, 16, 19, 20, 21]


def test_residual_scale_multiplies_the_branches_not_the_shortcut():
    a = randomize_(RFBBlock(8, act_cfg=None, residual_scale=0.1, variant='paper'))
    b = RFBBlock(8, act_cfg=None, residual_scale=0.3, variant='paper')
    b.load_state_dict(a.state_dict())
    a.eval(), b.eval()
    x = torch.randn(2, 8, 6, 7)
    with torch.no_grad():
        fa, fb = (a(x) - x) / 0.1, (b(x) - x) / 0.3
    torch.testing.assert_close(fa, fb, rtol=1e-4, atol=1e-4)
    assert fa.abs().max() > 1e-2


def test_forward_matches_the_paper_equation():
    block = randomize_(RFBBlock(12, 8, residual_scale=0.2)).eval()
    x = torch.randn(2, 12, 9, 8)
    with torch.no_grad():
        cat = torch.cat([br(x) for br in block.branches], dim=1)
        ref = torch.relu(block.shortcut(x) + 0.2 * block.fuse(cat))
        torch.testing.assert_close(block(x), ref)
    assert (block(x) >= 0).all()


# --------------------------------------------------------------------------- shapes, grads


@pytest.mark.parametrize('shape', [(1, 16, 7, 9), (2, 16, 1, 1), (1, 16, 2, 3), (3, 16, 16, 15),
                                   (2, 16, 5, 33)])
def test_block_shape_preserved(shape, device):
    block = randomize_(RFBBlock(16)).to(device)
    x = torch.randn(shape, device=device)
    out = block(x)
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_batch_one_one_by_one_in_eval_mode(device):
    block = RFBBlock(16).to(device).eval()
    out = block(torch.randn(1, 16, 1, 1, device=device))
    assert out.shape == (1, 16, 1, 1) and torch.isfinite(out).all()


@pytest.mark.parametrize('c_in, c_out', [(32, 16), (16, 48)])
def test_block_channel_change(c_in, c_out, device):
    block = randomize_(RFBBlock(c_in, c_out)).to(device)
    out = block(torch.randn(1, c_in, 11, 7, device=device))
    assert out.shape == (1, c_out, 11, 7) and torch.isfinite(out).all()


def test_neck_levels_subset_pass_through_unchanged(device):
    neck = RFB([16, 16, 8, 8], out_channels=24, levels=[0, 2]).to(device)
    assert neck.out_channels == [24, 16, 24, 8] and sorted(neck.blocks.keys()) == ['0', '2']
    feats = (torch.randn(1, 16, 16, 15, device=device), torch.randn(1, 16, 8, 7, device=device),
             torch.randn(1, 8, 4, 3, device=device), torch.randn(1, 8, 2, 1, device=device))
    outs = neck(feats)
    assert isinstance(outs, tuple) and len(outs) == 4
    assert [tuple(o.shape) for o in outs] == [(1, 24, 16, 15), (1, 16, 8, 7), (1, 24, 4, 3),
                                              (1, 8, 2, 1)]
    assert outs[1] is feats[1] and outs[3] is feats[3]


def test_neck_per_level_out_channels():
    neck = RFB([32, 16, 8], out_channels=[16, 16, 8], variant='paper')
    outs = neck((torch.randn(2, 32, 8, 8), torch.randn(2, 16, 4, 4), torch.randn(2, 8, 2, 2)))
    assert [o.shape[1] for o in outs] == [16, 16, 8]
    assert isinstance(neck.blocks['0'].shortcut, ConvModule)
    assert isinstance(neck.blocks['1'].shortcut, nn.Identity)


def test_neck_passes_block_arguments_to_every_block():
    neck = RFB([16, 32], variant='paper', branch_dilations=(1, 2), residual_scale=0.25,
               rd_channels=4,
               norm_cfg=dict(type='GN', num_groups=2), act_cfg=dict(type='SiLU'))
    for block in neck.blocks.values():
        assert block.branch_dilations == (1, 2) and block.residual_scale == 0.25
        assert block.rd_channels == 4 and len(block.branches) == 2
        assert isinstance(block.fuse.gn, nn.GroupNorm) and isinstance(block.act, nn.SiLU)
    # Each block got its own copy of the configs.
    assert neck.blocks['0'].branches[0][0].norm_cfg is not neck.blocks['1'].branches[0][0].norm_cfg


def test_block_gradients_reach_every_parameter(device):
    block = randomize_(RFBBlock(16, 8)).to(device)  # projection shortcut too
    x = torch.randn(2, 16, 9, 7, device=device, requires_grad=True)
    assert_grads_reach_every_parameter(block, x)


def test_neck_gradients_reach_every_parameter(device):
    neck = randomize_(RFB([16, 8, 8], out_channels=[8, 8, 8], levels=[0, 2])).to(device)
    sizes = ((16, 8), (8, 4), (8, 2))

    class OneInput(nn.Module):  # the harness takes one tensor; split it into levels
        def __init__(self):
            super().__init__()
            self.neck = neck

        def forward(self, x):
            return torch.cat([o.flatten(1) for o in self.neck(tuple(
                x[:, i * 16:i * 16 + c, :s, :s + 1] for i, (c, s) in enumerate(sizes)))], dim=1)

    x = torch.randn(2, 48, 8, 9, device=device, requires_grad=True)
    assert_grads_reach_every_parameter(OneInput(), x)
    # The passed-through level's gradient is the loss's own (d sum(x^2)/dx = 2x).
    torch.testing.assert_close(x.grad[:, 16:24, :4, :5], 2 * x.detach()[:, 16:24, :4, :5])


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_low_precision_autocast_is_finite(dtype, device):
    neck = RFB([32, 32]).to(device)
    feats = (torch.randn(2, 32, 12, 11, device=device) * 30,
             torch.randn(2, 32, 6, 5, device=device) * 30)
    with torch.autocast(device_type=device.type, dtype=dtype):
        outs = neck(feats)
    neck.eval()
    with torch.no_grad():
        refs = neck(feats)
        with torch.autocast(device_type=device.type, dtype=dtype):
            outs_eval = neck(feats)
    # Max error relative to the output's scale, measured 6.7e-4 (fp16) and 6.5e-3 (bf16),
    # ~1.5 units of roundoff u (at most 1.1e-3 and 7.4e-3 over 20 seeds): tolerance 5 u.
    tol = 5 * {torch.float16: 2.0 ** -11, torch.bfloat16: 2.0 ** -8}[dtype]
    for o, oe, ref in zip(outs, outs_eval, refs):
        # fp32 input + identity shortcut: the sum promotes to float32, as in a ResNet.
        assert o.dtype in (dtype, torch.float32) and torch.isfinite(o).all()
        err = ((oe.float() - ref).abs().max() / ref.abs().max()).item()
        assert err < tol, (err, tol)


# --------------------------------------------------------------------------- OpenMMLab


def test_after_mmdet_yolov3_neck():
    # YOLOV3Neck's [512, 256, 128] outputs, scaled down 16x.
    neck = build_model_in_scope([
        dict(type='YOLOV3Neck', num_scales=3, in_channels=[64, 32, 16], out_channels=[32, 16, 8]),
        dict(type='RFB', in_channels=[32, 16, 8]),
    ], 'mmdet')
    # Backbone order (shallow first); YOLOV3Neck's in_channels list it deepest first.
    feats = (torch.randn(2, 16, 12, 12), torch.randn(2, 32, 6, 6), torch.randn(2, 64, 3, 3))
    outs = neck(feats)
    assert [tuple(o.shape) for o in outs] == [(2, 32, 3, 3), (2, 16, 6, 6), (2, 8, 12, 12)]


def test_faster_rcnn_with_fpn_then_rfb_loss_mode():
    model = build_model_in_scope(
        tiny_faster_rcnn(neck_after_fpn=dict(type='RFB', levels=[0, 1, 2, 3])), 'mmdet')
    model.init_weights()
    # The detector's init (FPN's Xavier) leaves RFB with its own init.
    rfb = model.neck[1]
    assert isinstance(rfb, RFB) and sorted(rfb.blocks.keys()) == ['0', '1', '2', '3']
    assert all(torch.all(m.weight == 1) for m in rfb.modules() if isinstance(m, nn.BatchNorm2d))
    model.train()
    losses = model(**tiny_det_batch(model), mode='loss')
    assert {'loss_rpn_cls', 'loss_rpn_bbox', 'loss_cls', 'loss_bbox'} <= set(losses)
    total = total_loss(losses)
    assert torch.isfinite(total)
    total.backward()
    for name, p in rfb.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert rfb.blocks['0'].branches[2][-1].conv.weight.grad.abs().sum() > 0
    # Inference on the same model still runs end to end.
    model.eval()
    with torch.no_grad():
        results = model(**tiny_det_batch(model, [(64, 64)], training=False), mode='predict')
    assert len(results) == 1 and hasattr(results[0], 'pred_instances')
