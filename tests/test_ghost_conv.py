"""GhostConv2d: drop-in nn.Conv2d contract, the paper's equations, OpenMMLab integration."""
import math

import pytest
import torch
import torch.nn.functional as F
from mmcv.cnn import ConvModule
from torch.nn.modules.utils import _pair

from mmplug.conv.ghost_conv import GhostConv2d

from _harness import (
    assert_grads_reach_every_parameter,
    mmdet_resnet,
    mmseg_resnet,
    randomize_,
)

_COMBOS = [  # kernel, stride, padding, dilation
    (1, 1, 0, 1), (1, 2, 0, 1), (3, 1, 1, 1), (3, 2, 1, 1), (3, 2, 0, 1), (3, 1, 2, 2),
    (3, 2, 2, 2), (5, 2, 2, 1), (7, 2, 3, 1), ((3, 1), (2, 1), (1, 0), 1), (3, 3, 1, 1),
    (2, 2, 0, 1),
]


@pytest.mark.parametrize('k, s, p, d', _COMBOS)
@pytest.mark.parametrize('shape', [(1, 8, 1, 1), (1, 8, 7, 9), (2, 8, 16, 15)])
def test_same_output_shape_as_conv2d(k, s, p, d, shape, device):
    plain = torch.nn.Conv2d(8, 12, k, s, p, d).to(device)
    ghost = GhostConv2d(8, 12, k, s, p, d).to(device)
    x = torch.randn(shape, device=device)
    if (shape[2] + 2 * _pair(p)[0] - _pair(d)[0] * (_pair(k)[0] - 1)) < 1:
        # input smaller than the (dilated) kernel: both refuse it
        for conv in (plain, ghost):
            with pytest.raises(RuntimeError):
                conv(x)
        return
    out = ghost(x)
    assert out.shape == plain(x).shape and torch.isfinite(out).all()


@pytest.mark.parametrize('out_channels, ratio, dw_size', [(16, 2, 3), (7, 2, 3), (12, 3, 5),
                                                          (10, 4, 1), (9, 2, 7)])
def test_matches_paper_equations(out_channels, ratio, dw_size, device):
    ghost = randomize_(GhostConv2d(6, out_channels, 3, stride=2, padding=1, ratio=ratio,
                                   dw_size=dw_size)).to(device)
    m = math.ceil(out_channels / ratio)
    assert ghost.init_channels == m and ghost.cheap_conv.out_channels == m * (ratio - 1)
    x = torch.randn(2, 6, 9, 8, device=device)
    p, c = ghost.primary_conv, ghost.cheap_conv
    intrinsic = F.conv2d(x, p.weight, p.bias, 2, 1)
    ghost_maps = F.conv2d(intrinsic, c.weight, c.bias, 1, dw_size // 2, groups=m)
    ref = torch.cat([intrinsic, ghost_maps], 1)[:, :out_channels]
    torch.testing.assert_close(ghost(x), ref)
    # each intrinsic map makes ratio - 1 ghost maps, from itself only (depthwise)
    assert c.weight.shape == (m * (ratio - 1), 1, dw_size, dw_size)


def test_about_half_the_parameters_of_the_plain_conv():
    plain = torch.nn.Conv2d(64, 128, 3, bias=False)
    ghost = GhostConv2d(64, 128, 3, bias=False)
    n_plain = sum(p.numel() for p in plain.parameters())
    n_ghost = sum(p.numel() for p in ghost.parameters())
    assert n_ghost == 64 * 64 * 9 + 64 * 9  # primary + depthwise
    assert 0.5 < n_ghost / n_plain < 0.51


def test_paper_module_with_internal_norm_and_act():
    ghost = GhostConv2d(8, 16, 1, norm_cfg=dict(type='BN'), act_cfg=dict(type='ReLU'))
    assert isinstance(ghost.primary_norm, torch.nn.BatchNorm2d)
    assert ghost.cheap_norm.num_features == 8
    out = ghost(torch.randn(2, 8, 5, 5))
    assert out.min() >= 0  # ReLU after each part
    # the default is linear, like the conv it replaces
    x = torch.randn(2, 8, 5, 5)
    nobias = randomize_(GhostConv2d(8, 16, 3, padding=1, bias=False))
    torch.testing.assert_close(nobias(2 * x), 2 * nobias(x))
    assert isinstance(nobias.primary_norm, torch.nn.Identity)


def test_gradients_reach_every_parameter(device):
    ghost = randomize_(GhostConv2d(8, 10, 3, stride=2, padding=1, norm_cfg=dict(type='BN'),
                                   act_cfg=dict(type='ReLU'))).to(device)
    x = torch.randn(2, 8, 9, 7, device=device, requires_grad=True)
    assert_grads_reach_every_parameter(ghost, x)


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_low_precision_autocast_is_finite(dtype, device):
    ghost = GhostConv2d(16, 32, 3, stride=2, padding=1).to(device)
    x = torch.randn(2, 16, 15, 14, device=device) * 30
    with torch.autocast(device_type=device.type, dtype=dtype):
        out = ghost(x)
    assert out.dtype == dtype and torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), ghost(x), rtol=5e-2, atol=5e-2 * 30)


def test_inside_conv_module_with_host_norm_act():
    cm = ConvModule(8, 16, 3, stride=2, padding=1, conv_cfg=dict(type='GhostConv2d'),
                    norm_cfg=dict(type='BN'), act_cfg=dict(type='ReLU'))
    assert isinstance(cm.conv, GhostConv2d) and cm.conv.primary_conv.bias is None  # bias='auto'
    assert cm.stride == (2, 2) and cm.out_channels == 16
    cm.init_weights()
    assert cm(torch.randn(2, 8, 9, 9)).shape == (2, 16, 5, 5)


def _n_params(model):
    return sum(p.numel() for p in model.parameters())


def test_ghost_resnet50_from_conv_cfg():
    plain = mmdet_resnet(depth=50, out_indices=(0, 1, 2, 3))
    ghost = mmdet_resnet(depth=50, out_indices=(0, 1, 2, 3), conv_cfg=dict(type='GhostConv2d'))
    convs = {n for n, m in ghost.named_modules() if isinstance(m, GhostConv2d)}
    # stem + 3 convs in each of 16 bottlenecks + 4 downsample convs: every conv of ResNet-50
    assert len(convs) == 1 + 16 * 3 + 4
    assert {'conv1', 'layer1.0.downsample.0', 'layer4.2.conv3'} <= convs
    ratio = _n_params(ghost) / _n_params(plain)
    assert 0.45 < ratio < 0.56, ratio  # the paper: about half
    plain.eval()
    ghost.eval()
    for size in [(64, 64), (67, 61)]:
        x = torch.randn(1, 3, *size)
        assert [o.shape for o in ghost(x)] == [o.shape for o in plain(x)]


def test_ghost_resnet18_resnext50_and_mmseg_resnetv1c():
    model = mmdet_resnet(depth=18, conv_cfg=dict(type='GhostConv2d'))
    model.eval()
    assert model(torch.randn(1, 3, 32, 32))[-1].shape == (1, 512, 1, 1)
    from mmdet.registry import MODELS
    resnext = MODELS.build(dict(type='ResNeXt', depth=50, groups=32, base_width=4,
                                out_indices=(3, ), conv_cfg=dict(type='GhostConv2d')))
    resnext.eval()
    conv2 = resnext.layer1[0].conv2  # grouped 3x3: the primary conv keeps the groups
    assert conv2.groups == conv2.primary_conv.groups == 32 and conv2.init_channels == 64
    assert resnext(torch.randn(1, 3, 32, 32))[0].shape == (1, 2048, 1, 1)
    seg = mmseg_resnet(depth=18, conv_cfg=dict(type='GhostConv2d'), out_indices=(3, ),
                       strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4))
    seg.eval()
    assert isinstance(seg.stem[0], GhostConv2d)
    assert seg(torch.randn(1, 3, 33, 31))[0].shape == (1, 512, 5, 4)
