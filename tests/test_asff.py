"""ASFF: the fusion equation, resizing at odd sizes, init, autocast, and use after FPN in an
mmdet Faster R-CNN (the contract every module meets: test_contract.py)."""
import doctest
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import ConvModule

import mmplug.necks.asff as asff_module
from mmplug.necks.asff import ASFF

from _harness import (
    assert_grads_reach_every_parameter,
    build_model_in_scope,
    randomize_,
    tiny_det_batch,
    tiny_faster_rcnn,
    total_loss,
)

YOLO_CHANNELS = [512, 256, 128]  # mmdet YOLOV3Neck's outputs, deepest first
YOLO_STRIDES = [32, 16, 8]
FPN_STRIDES = [4, 8, 16, 32, 64]


def _pyramid_sizes(h, w, strides, rounding=math.ceil):
    """Level sizes of an ``h x w`` image: ResNet/FPN strided convs and pools round up."""
    return [(rounding(h / s), rounding(w / s)) for s in strides]


def _levels(channels, sizes, batch=1, scale=1.0, requires_grad=False):
    return _Levels(
        (torch.randn(batch, c, h, w) * scale).requires_grad_(requires_grad)
        for c, (h, w) in zip(channels, sizes))


class _Levels(tuple):
    """A tuple of maps; ``assert_grads_reach_every_parameter`` reads ``requires_grad``
    of its input (the input maps are checked separately)."""
    requires_grad = False


def _sum_of_squares(outs):
    return sum(o.square().sum() for o in outs)


def _randomized(asff, seed=0):
    """Random weights (paper init is uniform fusion) and BN statistics."""
    return randomize_(asff, seed=seed, scale=0.2)


# -- arguments and inputs ------------------------------------------------------------------

def test_wrong_number_of_levels_named():
    asff = ASFF([16, 8, 4], strides=YOLO_STRIDES)
    x = _levels([16, 8], [(4, 4), (8, 8)])
    with pytest.raises(ValueError, match=r'built for 3 levels \(in_channels=\[16, 8, 4\]\), got 2'):
        asff(x)
    with pytest.raises(TypeError, match='expected a tuple of 3 feature maps'):
        asff(torch.randn(1, 16, 4, 4))


def test_wrong_channels_named():
    # A backbone's C2-C5 fed to an ASFF built for FPN's outputs.
    asff = ASFF([16] * 4)
    x = _levels([8, 16, 32, 64], _pyramid_sizes(64, 64, FPN_STRIDES[:4]))
    with pytest.raises(ValueError, match=r'level 0 must be \[N, 16, H, W\] '
                       r'\(in_channels\[0\] = 16\), got \[1, 8, 16, 16\]'):
        asff(x)


def test_sizes_that_contradict_strides_are_named():
    # YOLOV3Neck's outputs come deepest first; forgetting strides=[32, 16, 8] is caught.
    asff = ASFF([16, 8, 4])
    x = _levels([16, 8, 4], _pyramid_sizes(320, 320, YOLO_STRIDES))
    with pytest.raises(ValueError, match=r'do not match strides=\[1, 2, 4\]: level 1 is 20x20, '
                       r'expected about 5x5.*strides=\[32, 16, 8\]'):
        asff(x)
    with pytest.raises(ValueError, match='do not match strides'):
        asff.fusion_weights(x)


# -- shapes --------------------------------------------------------------------------------

@pytest.mark.parametrize('image', [(320, 320), (300, 236)])
def test_yolov3_levels_shapes(image):
    asff = ASFF(YOLO_CHANNELS, strides=YOLO_STRIDES)
    sizes = _pyramid_sizes(*image, YOLO_STRIDES)
    outs = asff(_levels(YOLO_CHANNELS, sizes, batch=1))
    assert isinstance(outs, tuple) and len(outs) == 3
    expected = [(1, c, h, w) for c, (h, w) in zip(YOLO_CHANNELS, sizes)]
    assert [tuple(o.shape) for o in outs] == expected
    assert all(torch.isfinite(o).all() for o in outs)


@pytest.mark.parametrize('rounding', [math.ceil, math.floor])
def test_fpn_five_levels_odd_sizes(rounding):
    # 100x76 image: ceil gives FPN's sizes (25x19 ... 2x2); floor-rounded pyramids make the
    # strided paths come out one pixel too large, so they are cropped.
    sizes = _pyramid_sizes(100, 76, FPN_STRIDES, rounding)
    assert sizes == ([(25, 19), (13, 10), (7, 5), (4, 3), (2, 2)] if rounding is math.ceil else
                     [(25, 19), (12, 9), (6, 4), (3, 2), (1, 1)])
    asff = ASFF([32] * 5).eval()  # eval: a 1x1 level at batch 1 is fine for BN
    outs = asff(_levels([32] * 5, sizes, batch=1))
    assert [tuple(o.shape) for o in outs] == [(1, 32, h, w) for h, w in sizes]
    assert all(torch.isfinite(o).all() for o in outs)


@pytest.mark.parametrize('out_channels, expected', [
    (None, [16, 8, 4]), (24, [24, 24, 24]), ([5, 6, 7], [5, 6, 7]), ((3, 3, 3), [3, 3, 3]),
])
def test_out_channels(out_channels, expected):
    asff = ASFF([16, 8, 4], out_channels=out_channels, strides=YOLO_STRIDES)
    assert asff.out_channels == expected
    sizes = _pyramid_sizes(96, 64, YOLO_STRIDES)
    outs = asff(_levels([16, 8, 4], sizes, batch=2))
    assert [tuple(o.shape) for o in outs] == [(2, c, h, w) for c, (h, w) in zip(expected, sizes)]


def test_any_number_of_levels_and_equal_strides():
    # Two levels only; and two levels at one stride with different channels (1x1 path).
    asff = ASFF([8, 4], strides=[16, 8])
    assert [tuple(o.shape) for o in asff(_levels([8, 4], [(5, 7), (10, 14)], batch=2))] == [
        (2, 8, 5, 7), (2, 4, 10, 14)]
    asff = ASFF([16, 8, 8], strides=[8, 8, 16])
    same = asff.fusions[0].resize[1]
    assert isinstance(same.conv.conv, nn.Conv2d) and same.conv.conv.kernel_size == (1, 1)
    assert isinstance(asff.fusions[0].resize[0].conv, nn.Identity)
    outs = asff(_levels([16, 8, 8], [(9, 9), (9, 9), (5, 5)], batch=2))
    assert [tuple(o.shape) for o in outs] == [(2, 16, 9, 9), (2, 8, 9, 9), (2, 8, 5, 5)]


def test_resize_paths_follow_the_release_and_the_paper():
    # Up-sampling a level of the target's width: the release interpolates it as it is, the
    # paper's text (variant='paper') compresses it with a 1x1 conv first.
    release, paper = ASFF([32] * 5), ASFF([32] * 5, variant='paper')
    assert release.variant == 'release'
    for asff, upsampled in ((release, nn.Identity), (paper, ConvModule)):
        top = asff.fusions[0].resize  # target: the finest level; all others up-sample
        assert isinstance(top[0].conv, nn.Identity) and isinstance(top[0].pool, nn.Identity)
        for k in range(1, 5):
            assert top[k].upsample and isinstance(top[k].conv, upsampled)
            if upsampled is ConvModule:
                assert top[k].conv.conv.kernel_size == (1, 1)
    # Other widths always get the 1x1 conv (YOLOv3's 512 -> 256, as in the release).
    up = ASFF([16, 8], strides=[2, 1]).fusions[1].resize[0]
    assert up.upsample and up.conv.conv.kernel_size == (1, 1) and up.conv.conv.in_channels == 16
    with pytest.raises(ValueError, match="variant='paper'"):
        release.load_state_dict(paper.state_dict())
    with pytest.raises(ValueError, match='variant must be one of'):
        ASFF([32] * 2, variant='v1')
    asff = release
    bottom = asff.fusions[4].resize  # target: the coarsest level; all others down-sample
    assert isinstance(bottom[3].pool, nn.Identity)  # by 2: 3x3 stride-2 conv only
    for k, (kernel, stride, padding) in zip(range(3), [(9, 8, 4), (5, 4, 2), (3, 2, 1)]):
        pool = bottom[k].pool  # by 16, 8, 4: max-pool of stride ratio / 2 first
        assert isinstance(pool, nn.MaxPool2d)
        assert (pool.kernel_size, pool.stride, pool.padding) == (kernel, stride, padding)
    for k in range(4):
        conv = bottom[k].conv.conv
        assert conv.kernel_size == (3, 3) and conv.stride == (2, 2) and conv.padding == (1, 1)
    # YOLOv3 order (deepest first): target stride 32 takes stride 8 by pool + conv.
    yolo = ASFF([16, 8, 4], strides=YOLO_STRIDES).fusions[0].resize
    assert isinstance(yolo[2].pool, nn.MaxPool2d) and yolo[2].conv.conv.stride == (2, 2)
    assert isinstance(yolo[1].pool, nn.Identity) and yolo[1].conv.conv.in_channels == 8
    assert yolo[1].conv.conv.out_channels == 16


# -- the fusion equation -------------------------------------------------------------------

def _reference_level(fusion, inputs, size):
    """Eqs. 1-2 for one output level, written out from the submodules' layers."""
    resized = []
    for resize, x in zip(fusion.resize, inputs):
        y = resize.conv(resize.pool(x))
        if resize.upsample:
            y = F.interpolate(y, size=size, mode='nearest')
        else:  # strided paths: top-left aligned, crop / replicate-pad at the bottom-right
            y = y[..., :size[0], :size[1]]
            y = F.pad(y, (0, size[1] - y.shape[-1], 0, size[0] - y.shape[-2]), mode='replicate')
        resized.append(y)
    logits = fusion.weight_logits(torch.cat(
        [conv(y) for conv, y in zip(fusion.weight_compress, resized)], dim=1))
    alpha = torch.exp(logits) / torch.exp(logits).sum(dim=1, keepdim=True)  # Eq. 2
    fused = sum(alpha[:, k:k + 1] * y for k, y in enumerate(resized))  # Eq. 1
    return alpha, fused, fusion.expand(fused)


@pytest.mark.parametrize('channels, strides, sizes', [
    ([16, 8, 4], YOLO_STRIDES, _pyramid_sizes(300, 236, YOLO_STRIDES)),
    ([8] * 5, None, _pyramid_sizes(100, 76, FPN_STRIDES)),
    ([8] * 5, None, _pyramid_sizes(100, 76, FPN_STRIDES, math.floor)),
    # Finer level floor-rounded, coarser ceil-rounded: the strided path is one short (pad).
    ([8, 4], [4, 8], [(24, 23), (13, 12)]),
])
def test_fusion_matches_the_equations(channels, strides, sizes):
    asff = _randomized(ASFF(channels, out_channels=6, strides=strides)).eval()
    x = _levels(channels, sizes, batch=2)
    fused = {}
    for level, fusion in enumerate(asff.fusions):
        fusion.expand.register_forward_pre_hook(
            lambda m, args, level=level: fused.__setitem__(level, args[0]))
    with torch.no_grad():
        outs = asff(x)
        weights = asff.fusion_weights(x)
        for level, fusion in enumerate(asff.fusions):
            alpha, ref_fused, ref_out = _reference_level(fusion, x, sizes[level])
            assert fused[level].shape == (2, channels[level], *sizes[level])
            torch.testing.assert_close(fused[level], ref_fused, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(outs[level], ref_out, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(weights[level], alpha, rtol=1e-5, atol=1e-6)
            # Randomised: the weights really depend on the position and the level.
            assert alpha.std() > 1e-2


def test_fusion_weights_sum_to_one():
    asff = _randomized(ASFF([16, 8, 4], strides=YOLO_STRIDES))
    sizes = _pyramid_sizes(160, 96, YOLO_STRIDES)
    weights = asff.fusion_weights(_levels([16, 8, 4], sizes, batch=2))
    assert [tuple(w.shape) for w in weights] == [(2, 3, h, w) for h, w in sizes]
    for w in weights:
        assert w.dtype == torch.float32 and (w >= 0).all() and (w <= 1).all()
        torch.testing.assert_close(w.sum(dim=1), torch.ones_like(w[:, 0]))


# -- init ----------------------------------------------------------------------------------

def test_init_gives_uniform_fusion_weights():
    asff = ASFF([16] * 5)
    for fusion in asff.fusions:
        assert not fusion.weight_logits.weight.any()
        assert torch.equal(fusion.weight_logits.bias, torch.zeros(5))
    weights = asff.fusion_weights(_levels([16] * 5, _pyramid_sizes(64, 48, FPN_STRIDES), batch=2))
    for w in weights:
        torch.testing.assert_close(w, torch.full_like(w, 0.2))


# -- gradients and precision ---------------------------------------------------------------

def test_gradients_reach_every_parameter_and_input():
    asff = _randomized(ASFF([16, 8, 4], out_channels=[4, 5, 6], strides=YOLO_STRIDES))
    x = _levels([16, 8, 4], _pyramid_sizes(100, 76, YOLO_STRIDES), batch=2, requires_grad=True)
    assert_grads_reach_every_parameter(asff, x, loss_fn=_sum_of_squares)
    for level, xi in enumerate(x):
        assert xi.grad is not None and torch.isfinite(xi.grad).all(), level
        assert xi.grad.abs().sum() > 0, level


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
@pytest.mark.parametrize('scale', [1.0, 300.0])
def test_autocast_is_finite(dtype, scale):
    asff = _randomized(ASFF([16] * 5)).eval()
    x = _levels([16] * 5, _pyramid_sizes(100, 76, FPN_STRIDES), batch=2, scale=scale)
    with torch.no_grad():
        ref = asff(x)
        with torch.autocast(device_type='cpu', dtype=dtype):
            outs = asff(x)
            weights = asff.fusion_weights(x)
    for o, r in zip(outs, ref):
        assert o.dtype == dtype and torch.isfinite(o).all()
        err = (o.float() - r).abs().max() / r.abs().max()
        assert err < 0.05, err
    for w in weights:
        assert w.dtype == torch.float32 and torch.isfinite(w).all()
        torch.testing.assert_close(w.sum(dim=1), torch.ones_like(w[:, 0]))


def test_autocast_bf16_backward_is_finite():
    asff = _randomized(ASFF([16, 8, 4], strides=YOLO_STRIDES))
    x = _levels([16, 8, 4], _pyramid_sizes(96, 96, YOLO_STRIDES), batch=2)
    with torch.autocast(device_type='cpu', dtype=torch.bfloat16):
        loss = _sum_of_squares(asff(x))
    loss.backward()
    assert torch.isfinite(loss)
    for name, p in asff.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


# -- OpenMMLab integration -----------------------------------------------------------------

def test_after_fpn_in_mmdet_faster_rcnn_loss():
    cfg = tiny_faster_rcnn(neck_after_fpn=dict(type='ASFF'))
    cfg.data_preprocessor.pad_size_divisor = 1  # odd sizes reach the neck as they are
    model = build_model_in_scope(cfg, 'mmdet')
    model.init_weights()
    model.train()
    fpn, asff = model.neck
    assert type(fpn).__name__ == 'FPN' and isinstance(asff, ASFF)
    assert asff.in_channels == [16] * 5
    seen = []
    asff.register_forward_hook(lambda m, args, out: seen.append([tuple(o.shape) for o in out]))
    # Odd image size, no padding to a multiple of 32: FPN levels 25x19 ... 2x2.
    losses = model(**tiny_det_batch(model, [(100, 76)] * 2), mode='loss')
    assert seen == [[(2, 16, h, w) for h, w in _pyramid_sizes(100, 76, FPN_STRIDES)]]
    assert {'loss_rpn_cls', 'loss_rpn_bbox', 'loss_cls', 'loss_bbox'} <= set(losses)
    total = total_loss(losses)
    assert torch.isfinite(total)
    total.backward()
    for name, p in asff.named_parameters():
        if 'weight_compress' in name:
            continue  # zero logit conv at init: no gradient on the first step (documented)
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert asff.fusions[0].weight_logits.weight.grad.abs().sum() > 0


def test_docstring_examples():
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    tests = [t for t in finder.find(asff_module) if t.examples]
    assert tests
    for test in tests:
        runner.run(test)
    assert runner.summarize(verbose=False).failed == 0
