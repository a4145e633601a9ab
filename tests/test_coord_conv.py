"""CoordConv in both forms: the conv replacement CoordConv2d and the CoordConvPlugin."""
import pytest
import torch
import torch.nn.functional as F
from mmcv.cnn import ConvModule, build_conv_layer, fuse_conv_bn

from mmplug.conv.coord_conv import CoordConv2d
from mmplug.layers import coord_channels
from mmplug.plugins.coord_conv import CoordConvPlugin

from _harness import (
    assert_grads_reach_every_parameter,
    mmdet_resnet,
    mmseg_resnet,
    randomize_,
)


def _reference_coords(n, h, w, with_r=False):
    """The paper's coordinate channels: i and j scaled to [-1, 1] per axis (0 on a size-1 axis)."""
    def axis(size):
        return torch.linspace(-1, 1, size) if size > 1 else torch.zeros(1)
    xx = axis(w).view(1, 1, 1, w).expand(n, 1, h, w)
    yy = axis(h).view(1, 1, h, 1).expand(n, 1, h, w)
    chans = [xx, yy] + ([(xx ** 2 + yy ** 2).sqrt()] if with_r else [])
    return torch.cat(chans, dim=1)


def _reference_coord_conv(conv, x):
    """CoordConv per group: conv_g([x_g; coords]) with the group's slice of the weight."""
    g = conv.groups
    coords = _reference_coords(x.shape[0], x.shape[2], x.shape[3], conv.with_r).to(x)
    outs = []
    for xg, wg, bg in zip(x.chunk(g, 1), conv.weight.chunk(g, 0),
                          (conv.bias.chunk(g, 0) if conv.bias is not None else [None] * g)):
        outs.append(F.conv2d(torch.cat([xg, coords], 1), wg, bg, conv.stride, conv.padding,
                             conv.dilation))
    return torch.cat(outs, 1)


# --------------------------------------------------------------- the coordinate channels


def test_coordinate_channels_at_corners_of_a_non_square_map():
    c = coord_channels(torch.zeros(2, 4, 5, 7), with_r=True)
    assert c.shape == (2, 3, 5, 7)
    x, y, r = c[0]
    # x varies along W, y along H, each -1 .. 1 on its own axis (non-square: 5 x 7)
    assert x[0, 0] == -1 and x[0, -1] == 1 and x[-1, 0] == -1 and x[-1, -1] == 1
    assert y[0, 0] == -1 and y[-1, 0] == 1 and y[0, -1] == -1 and y[-1, -1] == 1
    assert x[2, 3] == 0 and y[2, 3] == 0 and r[2, 3] == 0  # centre
    torch.testing.assert_close(r[0, 0], torch.tensor(2.0).sqrt())
    torch.testing.assert_close(x[0], torch.linspace(-1, 1, 7))
    torch.testing.assert_close(y[:, 0], torch.linspace(-1, 1, 5))
    torch.testing.assert_close(c, _reference_coords(2, 5, 7, True))


@pytest.mark.parametrize('h, w', [(1, 1), (1, 6), (6, 1), (2, 2), (16, 15)])
def test_coordinate_channels_guard_size_one_axes(h, w):
    c = coord_channels(torch.zeros(1, 1, h, w), with_r=True)
    assert torch.isfinite(c).all() and c.abs().max() <= 2 ** 0.5
    torch.testing.assert_close(c, _reference_coords(1, h, w, True))
    if w == 1:
        assert torch.all(c[:, 0] == 0)
    if h == 1:
        assert torch.all(c[:, 1] == 0)


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_coordinate_channels_follow_input_dtype(dtype):
    c = coord_channels(torch.zeros(1, 1, 9, 300, dtype=dtype))
    assert c.dtype == dtype
    assert c[0, 0, 0, 0] == -1 and c[0, 0, 0, -1] == 1 and c[0, 1, -1, 0] == 1


# ------------------------------------------------------------------------ CoordConv2d


def test_conv_wrong_input_channels_named():
    with pytest.raises(ValueError, match='expected 8 input channels, got 4'):
        CoordConv2d(8, 8, 3)(torch.randn(1, 4, 5, 5))


@pytest.mark.parametrize('with_r', [False, True])
@pytest.mark.parametrize('k, s, p, d, g', [
    (1, 1, 0, 1, 1), (3, 1, 1, 1, 1), (3, 2, 1, 1, 1), (3, 1, 2, 2, 1), (3, 2, 1, 1, 2),
    (3, 1, 1, 1, 8),
])
@pytest.mark.parametrize('shape', [(1, 8, 1, 1), (1, 8, 7, 9), (2, 8, 16, 15)])
def test_conv_matches_paper_equation_and_conv2d_shape(with_r, k, s, p, d, g, shape, device):
    conv = randomize_(CoordConv2d(8, 16, k, s, p, d, groups=g, with_r=with_r)).to(device)
    plain = torch.nn.Conv2d(8, 16, k, s, p, d, groups=g).to(device)
    x = torch.randn(shape, device=device)
    out = conv(x)
    assert out.shape == plain(x).shape and torch.isfinite(out).all()
    assert conv.weight.shape == (16, 8 // g + (3 if with_r else 2), k, k)
    torch.testing.assert_close(out, _reference_coord_conv(conv, x), rtol=1e-5, atol=1e-5)


def test_conv_starts_with_zero_coordinate_weights_and_init_weights_restores_them():
    conv = CoordConv2d(8, 16, 3, padding=1, with_r=True)
    assert torch.all(conv.weight[:, 8:] == 0) and conv.weight[:, :8].abs().sum() > 0
    randomize_(conv)
    feature_weights = conv.weight[:, :8].clone()
    conv.init_weights()
    assert torch.all(conv.weight[:, 8:] == 0)
    assert torch.equal(conv.weight[:, :8], feature_weights)  # the host's init is kept


@pytest.mark.parametrize('groups, with_r', [(1, False), (1, True), (4, False)])
def test_conv_loads_a_plain_conv_checkpoint_and_equals_it(groups, with_r):
    plain = randomize_(torch.nn.Conv2d(8, 16, 3, stride=2, padding=1, groups=groups))
    conv = randomize_(CoordConv2d(8, 16, 3, stride=2, padding=1, groups=groups, with_r=with_r),
                      seed=1)
    conv.load_state_dict(plain.state_dict())  # strict: the coordinate weights are filled
    assert torch.all(conv.weight[:, 8 // groups:] == 0)
    x = torch.randn(2, 8, 13, 10)
    diff = (conv(x) - plain(x)).abs().max().item()
    assert diff < 1e-5, diff
    # A CoordConv checkpoint round-trips unchanged (no padding applied to it).
    randomize_(conv, seed=2)
    other = CoordConv2d(8, 16, 3, stride=2, padding=1, groups=groups, with_r=with_r)
    other.load_state_dict(conv.state_dict())
    assert torch.equal(other.weight, conv.weight)


def test_conv_gradients_reach_every_parameter(device):
    conv = randomize_(CoordConv2d(8, 6, 3, stride=2, padding=1, with_r=True)).to(device)
    x = torch.randn(2, 8, 9, 7, device=device, requires_grad=True)
    assert_grads_reach_every_parameter(conv, x)
    assert conv.weight.grad[:, 8:].abs().sum() > 0  # the coordinate weights learn


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_conv_low_precision_autocast_is_finite(dtype, device):
    conv = randomize_(CoordConv2d(16, 32, 3, stride=2, padding=1, with_r=True),
                      scale=0.1).to(device)
    x = torch.randn(2, 16, 15, 14, device=device) * 30
    with torch.autocast(device_type=device.type, dtype=dtype):
        out = conv(x)
        out_low_in = conv(x.to(dtype))  # a low-precision input from a previous layer
    assert out.dtype == out_low_in.dtype == dtype
    assert torch.isfinite(out).all() and torch.isfinite(out_low_in).all()
    torch.testing.assert_close(out.float(), conv(x), rtol=5e-2, atol=5e-2 * 30)


def test_conv_cfg_build_takes_bias_false_and_keeps_zero_coordinate_weights():
    conv = build_conv_layer(dict(type='CoordConv2d', with_r=True), 16, 24, 3, stride=2,
                            padding=1, dilation=1, bias=False)
    cm = ConvModule(16, 24, 3, padding=1, conv_cfg=dict(type='CoordConv2d'),
                    norm_cfg=dict(type='BN'))
    assert isinstance(conv, CoordConv2d) and conv.with_r and conv.bias is None
    assert conv(torch.randn(1, 16, 8, 8)).shape == (1, 24, 4, 4)
    assert isinstance(cm.conv, CoordConv2d) and cm.in_channels == 16 and cm.conv.bias is None
    assert torch.all(cm.conv.weight[:, 16:] == 0)  # ConvModule leaves the layer's init alone


def test_conv_bn_fusion_is_exact():
    # The coordinates go through the same weight, so both mmcv fusions stay exact.
    cm = ConvModule(8, 16, 3, padding=1, conv_cfg=dict(type='CoordConv2d'),
                    norm_cfg=dict(type='BN'), act_cfg=dict(type='ReLU'))
    randomize_(cm)
    cm.eval()
    x = torch.randn(2, 8, 9, 11)
    ref = cm(x)
    cm.turn_on_efficient_conv_bn_eval()
    torch.testing.assert_close(cm(x), ref, rtol=1e-5, atol=1e-5)
    cm.turn_on_efficient_conv_bn_eval(False)
    fused = fuse_conv_bn(cm)
    torch.testing.assert_close(fused(x), ref, rtol=1e-5, atol=1e-5)


def test_resnet_from_conv_cfg_loads_plain_weights_and_keeps_its_output():
    plain = randomize_(mmdet_resnet(depth=18), scale=0.1)
    coord = mmdet_resnet(depth=18, conv_cfg=dict(type='CoordConv2d'))
    convs = [n for n, m in coord.named_modules() if isinstance(m, CoordConv2d)]
    assert len(convs) == 1 + 8 * 2 + 3  # stem, 2 per BasicBlock, 3 downsample convs
    coord.load_state_dict(plain.state_dict())  # strict
    plain.eval()
    coord.eval()
    x = torch.randn(1, 3, 37, 45)
    for a, b in zip(coord(x), plain(x)):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_resnet_dcn_slot_and_mmseg_resnetv1c():
    model = mmdet_resnet(depth=50, dcn=dict(type='CoordConv2d', fallback_on_stride=False),
                         stage_with_dcn=(False, False, True, True))
    assert isinstance(model.layer3[0].conv2, CoordConv2d)
    assert not isinstance(model.layer2[0].conv2, CoordConv2d)
    model.eval()
    assert model(torch.randn(1, 3, 32, 32))[-1].shape == (1, 2048, 1, 1)
    seg = mmseg_resnet(depth=18, conv_cfg=dict(type='CoordConv2d'), out_indices=(3, ),
                       strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4))
    seg.eval()
    assert isinstance(seg.stem[0], CoordConv2d)
    assert seg(torch.randn(1, 3, 33, 31))[0].shape == (1, 512, 5, 4)


def test_mmdet_fpn_with_conv_cfg():
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    register_all_modules(init_default_scope=False)
    cfg = dict(type='FPN', in_channels=[8, 16, 32], out_channels=8, num_outs=4)
    plain = MODELS.build(cfg)
    coord = MODELS.build(dict(cfg, conv_cfg=dict(type='CoordConv2d')))
    plain.init_weights()
    coord.init_weights()
    assert sum(isinstance(m, CoordConv2d) for m in coord.modules()) == 6  # 3 lateral + 3 fpn
    feats = [torch.randn(2, c, s, s + 1) for c, s in zip([8, 16, 32], [16, 8, 4])]
    coord.load_state_dict(plain.state_dict())  # strict, from the plain FPN
    outs, ref = coord(feats), plain(feats)
    assert [o.shape for o in outs] == [o.shape for o in ref]
    for a, b in zip(outs, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    for m in coord.modules():  # once the coordinate weights move, the output depends on them
        if isinstance(m, CoordConv2d):
            torch.nn.init.normal_(m.weight[:, m.in_channels:].data)
    assert (coord(feats)[0] - ref[0]).abs().max() > 1e-2


# --------------------------------------------------------------------- CoordConvPlugin


@pytest.mark.parametrize('kernel_size, with_r', [(1, False), (3, True)])
@pytest.mark.parametrize('shape', [(1, 16, 1, 1), (1, 16, 7, 9), (2, 16, 16, 15), (3, 16, 5, 1)])
def test_plugin_identity_at_init_and_matches_equation(kernel_size, with_r, shape, device):
    plugin = CoordConvPlugin(16, kernel_size, with_r).to(device)
    x = torch.randn(shape, device=device)
    assert torch.equal(plugin(x), x)  # zero-initialised projection
    randomize_(plugin)
    out = plugin(x)
    coords = _reference_coords(shape[0], shape[2], shape[3], with_r).to(device)
    ref = x + F.conv2d(torch.cat([x, coords], 1), plugin.proj.weight, plugin.proj.bias,
                       padding=kernel_size // 2)
    assert out.shape == x.shape
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_plugin_gradients_reach_every_parameter(device):
    plugin = randomize_(CoordConvPlugin(16, kernel_size=3, with_r=True)).to(device)
    x = torch.randn(2, 16, 9, 7, device=device, requires_grad=True)
    assert_grads_reach_every_parameter(plugin, x)


def test_plugin_zero_init_still_learns():
    # At init only the projection gets a gradient, and it does.
    plugin = CoordConvPlugin(16)
    plugin(torch.randn(2, 16, 6, 5)).square().sum().backward()
    assert plugin.proj.weight.grad.abs().sum() > 0 and plugin.proj.bias.grad.abs().sum() > 0


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_plugin_low_precision_autocast_is_finite(dtype, device):
    plugin = randomize_(CoordConvPlugin(32, kernel_size=3, with_r=True), scale=0.1).to(device)
    conv = torch.nn.Conv2d(32, 32, 1).to(device)
    x = torch.randn(2, 32, 14, 13, device=device) * 10
    with torch.autocast(device_type=device.type, dtype=dtype):
        y = conv(x)
        out = plugin(y)
    assert out.dtype == dtype and torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), plugin(y.float()), rtol=5e-2, atol=0.5)
