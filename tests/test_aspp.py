"""ASPP: the paper's equations, parity with mmseg's ASPPHead / ASPPModule, the neck over
levels, and mmseg/mmdet models that use it (the contract every module meets:
test_contract.py)."""
import pytest
import torch
import torch.nn.functional as F

from mmplug.necks.aspp import ASPP, ASPPBlock  # importing registers both types

from _harness import (
    assert_grads_reach_every_parameter,
    build_model_in_scope,
    randomize_,
    tiny_det_batch,
    tiny_encoder_decoder,
    tiny_faster_rcnn,
    tiny_seg_batch,
    total_loss,
)

BN_ERROR = 'Expected more than 1 value per channel when training'


def _randomize(module, seed=0):
    return randomize_(module, seed=seed, scale=0.2)


def _reference_aspp(x, block):
    """The paper's equations with plain functional ops, for ``norm_cfg=None`` (convs
    with bias, ReLU): pool -> 1x1 -> broadcast, 1x1 and atrous 3x3 branches, concat,
    projection."""
    def conv(cm, inp, d=1):
        pad = cm.conv.kernel_size[0] // 2 * d
        return F.relu(F.conv2d(inp, cm.conv.weight, cm.conv.bias, padding=pad, dilation=d))

    outs = []
    if block.with_image_pool:
        pooled = conv(block.image_pool[1], x.mean(dim=(2, 3), keepdim=True))
        outs.append(F.interpolate(pooled, size=x.shape[2:], mode='bilinear',
                                  align_corners=False))
    outs += [conv(cm, x, d) for cm, d in zip(block.aspp_modules, block.dilations)]
    return conv(block.bottleneck, torch.cat(outs, dim=1))


# ------------------------------------------------------------------- arguments


# ------------------------------------------------------------------- structure


@pytest.mark.parametrize('proj', [1, 3])
def test_structure_and_param_count_at_2048(proj):
    block = ASPPBlock(2048, 512, channels=512, proj_kernel_size=proj)
    convs = [m.conv for m in block.aspp_modules]
    assert [(c.kernel_size, c.dilation, c.padding) for c in convs] == [
        ((1, 1), (1, 1), (0, 0)), ((3, 3), (6, 6), (6, 6)), ((3, 3), (12, 12), (12, 12)),
        ((3, 3), (18, 18), (18, 18))]
    assert block.image_pool[1].conv.kernel_size == (1, 1)
    assert block.bottleneck.conv.kernel_size == (proj, proj)
    assert block.bottleneck.conv.in_channels == 5 * 512
    assert all(c.bias is None for c in convs)  # BN follows every conv
    assert isinstance(block.dropout, torch.nn.Identity)
    # 1x1 branch + image pool (2048*512 each), three 3x3 (9*2048*512), projection, six BNs.
    expected = 29 * 2048 * 512 + proj * proj * 5 * 512 * 512 + 6 * 2 * 512
    assert sum(p.numel() for p in block.parameters()) == expected
    assert expected == {1: 31_725_568, 3: 42_211_328}[proj]


def test_options_without_image_pool_with_dropout_and_default_out_channels():
    block = ASPPBlock(24, channels=8, dilations=(2,), image_pool=False, dropout_ratio=0.1)
    assert block.out_channels == 24 and isinstance(block.image_pool, torch.nn.Identity)
    assert block.bottleneck.conv.in_channels == 8
    assert isinstance(block.dropout, torch.nn.Dropout2d) and block.dropout.p == 0.1
    assert block.aspp_modules[0].conv.kernel_size == (3, 3)
    # Branches and levels never share a module or parameter, even where they are alike.
    # (modules() and parameters() yield a shared one once: listed with duplicates here.)
    neck = ASPP([8, 8], channels=4, dilations=(1, 1, 1))
    params = [p for _, p in neck.named_parameters(remove_duplicate=False)]
    modules = [m for _, m in neck.named_modules(remove_duplicate=False)]
    assert params and len({id(p) for p in params}) == len(params)
    assert len({id(m) for m in modules}) == len(modules)


@pytest.mark.parametrize('shape', [(1, 16, 1, 1), (1, 16, 7, 9), (2, 16, 13, 5), (3, 16, 33, 33)])
@pytest.mark.parametrize('proj, image_pool', [(1, True), (3, True), (1, False)])
def test_shapes_and_paper_equations(shape, proj, image_pool, device):
    # norm_cfg=None: the equations without BN, so the reference needs no statistics;
    # maps smaller than the rates (1x1, 7x9 at rate 18) read zero padding.
    block = ASPPBlock(16, 12, channels=8, image_pool=image_pool, proj_kernel_size=proj,
                      norm_cfg=None).to(device)
    randomize_(block, scale=0.3)
    x = torch.randn(shape, device=device)
    out = block(x)
    assert out.shape == (shape[0], 12, shape[2], shape[3])
    torch.testing.assert_close(out, _reference_aspp(x, block), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('shape', [(1, 16, 1, 1), (1, 16, 7, 9), (2, 16, 10, 11)])
def test_shapes_with_bn_in_eval_mode(shape, device):
    block = _randomize(ASPPBlock(16, channels=8)).to(device).eval()
    out = block(torch.randn(shape, device=device))
    assert out.shape == shape and torch.isfinite(out).all()


def test_batch_one_in_train_mode():
    x1 = torch.randn(1, 16, 9, 7)
    # As the paper and mmseg: BN in the image branch normalises an [N, C, 1, 1] map over
    # the N images; PyTorch refuses N = 1 in training mode.
    block = ASPPBlock(16, channels=8).train()
    with pytest.raises(ValueError, match=BN_ERROR):
        block(x1)
    assert block(torch.randn(2, 16, 9, 7)).shape == (2, 16, 9, 7)
    assert block.eval()(x1).shape == (1, 16, 9, 7)
    # With 2 images the pooled branch is +-1 before BN's affine (documented).
    pooled = block.image_pool[1]
    pooled.norm.train()
    z = pooled.norm(pooled.conv(torch.randn(2, 16, 1, 1)))
    torch.testing.assert_close(z.abs(), torch.ones_like(z), rtol=1e-2, atol=1e-2)
    # The documented ways out: GN, no norm, or no image branch.
    for kwargs in (dict(norm_cfg=dict(type='GN', num_groups=4)), dict(norm_cfg=None)):
        out = ASPPBlock(16, channels=8, **kwargs).train()(x1)
        assert out.shape == (1, 16, 9, 7) and torch.isfinite(out).all()
    out = ASPPBlock(16, channels=8, image_pool=False).train()(x1)
    assert out.shape == (1, 16, 9, 7)


def test_dropout_only_in_train_mode():
    block = _randomize(ASPPBlock(16, channels=8, dropout_ratio=0.5, norm_cfg=None))
    x = torch.randn(2, 16, 6, 6)
    block.train()
    y = block(x)
    dropped = (y == 0).flatten(2).all(dim=2)  # Dropout2d zeroes whole channels
    assert dropped.any() and not dropped.all()
    block.eval()
    torch.testing.assert_close(block(x), _reference_aspp(x, block))


def test_gradients_reach_every_parameter(device):
    block = _randomize(ASPPBlock(16, 8, channels=8)).to(device).train()
    x = torch.randn(2, 16, 9, 7, device=device, requires_grad=True)
    assert_grads_reach_every_parameter(block, x)
    neck = _randomize(ASPP([8, 16], channels=8, dilations=(1, 2))).to(device).train()
    xs = (torch.randn(2, 8, 10, 10, device=device), torch.randn(2, 16, 5, 5, device=device))
    outs = neck(xs)
    sum(o.square().sum() for o in outs).backward()
    for name, p in neck.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


@pytest.mark.parametrize('train', [False, True])
def test_bf16_autocast_is_finite(train, device):
    block = _randomize(ASPPBlock(32, channels=16)).to(device).train(train)
    x = torch.randn(2, 32, 11, 13, device=device) * 10
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
        out = block(x)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    ref = block(x)
    err = (out.float() - ref).abs().mean() / ref.abs().mean()
    assert err < 0.05, err.item()


# --------------------------------------------------------- parity with mmseg


def _mmseg_head(in_channels=32, channels=16, dilations=(1, 6, 12, 18), **kwargs):
    from mmseg.models.decode_heads import ASPPHead
    head = ASPPHead(in_channels=in_channels, channels=channels, dilations=dilations,
                    num_classes=3, norm_cfg=dict(type='BN'), **kwargs)
    return _randomize(head, seed=5)


@pytest.mark.parametrize('train', [False, True])
@pytest.mark.parametrize('align_corners', [False, True])
def test_parity_with_mmseg_aspp_head(train, align_corners):
    head = _mmseg_head(align_corners=align_corners).train(train)
    ours = ASPPBlock.from_mmseg_head(head).train(train)
    assert ours.bottleneck.conv.kernel_size == (3, 3) and ours.out_channels == 16
    assert ours.dilations == (1, 6, 12, 18)
    x = torch.randn(2, 32, 21, 19)
    with torch.no_grad():
        diff = (ours(x) - head._forward_feature([x])).abs().max().item()
    assert diff < 1e-5, diff


def test_parity_with_mmseg_aspp_head_by_hand_built_block():
    # The same without from_mmseg_head: equal arguments, and the head's keys load as they
    # are (conv_seg aside) because the submodules carry mmseg's names.
    head = _mmseg_head(dilations=(1, 12, 24, 36)).eval()
    ours = ASPPBlock(32, 16, channels=16, dilations=(1, 12, 24, 36), proj_kernel_size=3).eval()
    state = {k: v for k, v in head.state_dict().items() if not k.startswith('conv_seg')}
    assert sorted(state) == sorted(ours.state_dict())
    ours.load_state_dict(state)
    x = torch.randn(1, 32, 40, 37)
    with torch.no_grad():
        diff = (ours(x) - head._forward_feature([x])).abs().max().item()
    assert diff < 1e-5, diff


def test_parity_with_mmseg_aspp_module_branches():
    from mmseg.models.decode_heads.aspp_head import ASPPModule
    ours = _randomize(ASPPBlock(32, channels=16), seed=2).eval()
    peer = ASPPModule((1, 6, 12, 18), 32, 16, conv_cfg=None, norm_cfg=dict(type='BN'),
                      act_cfg=dict(type='ReLU')).eval()
    peer.load_state_dict(ours.aspp_modules.state_dict())
    x = torch.randn(2, 32, 15, 17)
    with torch.no_grad():
        outs, peer_outs = [branch(x) for branch in ours.aspp_modules], peer(x)
    assert len(outs) == len(peer_outs) == 4
    for a, b in zip(outs, peer_outs):
        assert a.shape == b.shape and (a - b).abs().max().item() < 1e-6


def test_from_mmseg_head_rejects_other_heads():
    from mmseg.models.decode_heads import DepthwiseSeparableASPPHead
    head = DepthwiseSeparableASPPHead(in_channels=32, channels=16, c1_in_channels=8,
                                      c1_channels=4, num_classes=3)
    with pytest.raises(TypeError, match='DepthwiseSeparableASPPHead'):
        ASPPBlock.from_mmseg_head(head)


# ------------------------------------------------------------------------ neck


def test_neck_levels_subset_pass_through():
    neck = _randomize(ASPP([8, 16, 32], out_channels=24, levels=[2, 0], channels=8)).eval()
    assert neck.levels == [0, 2] and sorted(neck.blocks) == ['0', '2']
    assert neck.out_channels == [24, 16, 24]
    xs = (torch.randn(1, 8, 16, 15), torch.randn(1, 16, 8, 7), torch.randn(1, 32, 3, 5))
    outs = neck(xs)
    assert isinstance(outs, tuple) and outs[1] is xs[1]
    assert [tuple(o.shape) for o in outs] == [(1, 24, 16, 15), (1, 16, 8, 7), (1, 24, 3, 5)]
    for i in (0, 2):
        torch.testing.assert_close(outs[i], neck.blocks[str(i)](xs[i]))


def test_neck_block_arguments_reach_every_block():
    neck = ASPP([8, 8], out_channels=[4, 6], channels=5, dilations=(1, 3, 6), image_pool=False,
                proj_kernel_size=3, dropout_ratio=0.1, norm_cfg=dict(type='GN', num_groups=1),
                act_cfg=dict(type='LeakyReLU'))
    a, b = neck.blocks['0'], neck.blocks['1']
    assert a is not b and a.aspp_modules[0] is not b.aspp_modules[0]
    for block, out in ((a, 4), (b, 6)):
        assert (block.out_channels, block.channels, block.dilations) == (out, 5, (1, 3, 6))
        assert not block.with_image_pool and block.bottleneck.conv.kernel_size == (3, 3)
        assert isinstance(block.bottleneck.norm, torch.nn.GroupNorm)
        assert isinstance(block.act, torch.nn.LeakyReLU)  # the projection's activation
        assert block.dropout.p == 0.1


def test_neck_wrong_inputs_name_level_and_expected():
    neck = ASPP([8, 16], channels=4).eval()
    with pytest.raises(ValueError, match=r'built for 2 levels \(in_channels=\[8, 16\]\), got 3'):
        neck((torch.randn(1, 8, 4, 4), torch.randn(1, 16, 4, 4), torch.randn(1, 16, 2, 2)))
    with pytest.raises(ValueError, match=r'level 1 must be \[N, 16, H, W\].*got \[1, 32, 4, 4\]'):
        neck((torch.randn(1, 8, 4, 4), torch.randn(1, 32, 4, 4)))
    with pytest.raises(TypeError, match='tuple of 2 feature maps'):
        neck(torch.randn(1, 8, 4, 4))


# ----------------------------------------------------------- registry, models


def test_no_collision_with_mmdet_detectors_aspp():
    from mmdet.models.necks import rfp
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    register_all_modules(init_default_scope=False)
    assert rfp.ASPP is not ASPP  # mmdet's (DetectoRS) is internal to RFP, unregistered
    assert MODELS.get('RFP') is rfp.RFP and MODELS.get('ASPP') is ASPP


def test_mmseg_encoder_decoder_with_aspp_neck_loss_forward():
    model = build_model_in_scope(tiny_encoder_decoder(
        neck=dict(type='ASPP', in_channels=[8, 16, 32, 64], levels=[3], out_channels=32,
                  channels=16, dilations=(1, 2, 3)),
        decode_in_channels=32), 'mmseg')
    model.init_weights()
    model.train()
    loss = total_loss(model.loss(*tiny_seg_batch(size=32)))
    assert torch.isfinite(loss)
    loss.backward()
    block = model.neck.blocks['3']
    assert block.bottleneck.conv.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        logits = model(torch.randn(1, 3, 32, 32), mode='tensor')
    assert logits.shape == (1, 3, 4, 4)  # output stride 8


def test_mmdet_faster_rcnn_with_fpn_then_aspp_loss_forward():
    cfg = tiny_faster_rcnn(neck_after_fpn=dict(
        type='ASPP', channels=8, dilations=(1, 3, 6), norm_cfg=dict(type='GN', num_groups=4)))
    # The RPN loss takes every anchor: the stride-64 level has 3 per 64x64 image, which
    # mmdet's random 256 of ~1000 miss for some seeds, leaving that level's block no gradient.
    cfg.train_cfg.rpn.sampler.num = 4096
    model = build_model_in_scope(cfg, 'mmdet')
    model.init_weights()
    model.train()
    assert type(model.neck[1]) is ASPP and len(model.neck[1].blocks) == 5
    loss = total_loss(model(**tiny_det_batch(model), mode='loss'))
    assert torch.isfinite(loss)
    loss.backward()
    for i in range(5):
        assert model.neck[1].blocks[str(i)].bottleneck.conv.weight.grad.abs().sum() > 0
