"""BlurPool2d / BlurConv2d: the authors' filter and padding, drop-in strided conv, OpenMMLab."""
import math

import pytest
import torch
import torch.nn.functional as F
from mmcv.cnn import ConvModule

from mmplug import BlurConv2d, BlurPool2d
from mmplug.layers import Blur, binomial_filter

from _harness import (
    HOST_INIT_CFG,
    assert_grads_reach_every_parameter,
    mmdet_resnet,
    mmseg_resnet,
    randomize_,
)

PAD_MODES = ['reflect', 'replicate', 'zero', 'constant', 'circular']


def test_wrong_input_channels_and_too_small_reflect_named():
    with pytest.raises(ValueError, match='expected 8 input channels, got 4'):
        BlurPool2d(8)(torch.randn(1, 4, 8, 8))
    with pytest.raises(ValueError, match="reflect.*needs H and W > 1, got 1x5"):
        BlurPool2d(4)(torch.randn(1, 4, 1, 5))


def test_binomial_filters_are_pascal_rows_normalised():
    torch.testing.assert_close(binomial_filter(1), torch.ones(1, 1))
    row = torch.tensor([1., 2., 1.])
    torch.testing.assert_close(binomial_filter(3), row[:, None] * row[None, :] / 16)
    row = torch.tensor([1., 6., 15., 20., 15., 6., 1.])
    torch.testing.assert_close(binomial_filter(7), row[:, None] * row[None, :] / 64 ** 2)
    for f in range(1, 8):
        filt = binomial_filter(f)
        assert filt.shape == (f, f) and math.isclose(filt.sum().item(), 1.0, rel_tol=1e-6)
        assert torch.equal(filt, filt.t()) and torch.equal(filt, filt.flip(0))


def _reference_blur_pool(x, f, s, mode):
    """The authors' definition, written as explicit sums: pad (f-1)//2 before, f//2 after."""
    before = (f - 1) // 2
    xp = F.pad(x, (before, f - 1 - before, before, f - 1 - before), mode=mode)
    k = binomial_filter(f)
    h, w = math.ceil(x.shape[2] / s), math.ceil(x.shape[3] / s)
    out = torch.zeros(*x.shape[:2], h, w)
    for i in range(h):
        for j in range(w):
            out[:, :, i, j] = (xp[:, :, s * i:s * i + f, s * j:s * j + f] * k).sum(dim=(2, 3))
    return out


@pytest.mark.parametrize('filt_size', range(1, 8))
@pytest.mark.parametrize('stride', [1, 2, 3])
@pytest.mark.parametrize('pad_mode', PAD_MODES)
def test_output_ceil_h_over_stride_and_matches_definition(filt_size, stride, pad_mode):
    pool = BlurPool2d(3, filt_size, stride, pad_mode)
    x = torch.randn(2, 3, 9, 8)
    out = pool(x)
    assert out.shape == (2, 3, math.ceil(9 / stride), math.ceil(8 / stride))
    mode = {'zero': 'constant'}.get(pad_mode, pad_mode)
    torch.testing.assert_close(out, _reference_blur_pool(x, filt_size, stride, mode))


@pytest.mark.parametrize('shape', [(1, 4, 1, 1), (1, 4, 7, 9), (2, 4, 16, 15), (3, 4, 2, 3)])
@pytest.mark.parametrize('pad_mode', PAD_MODES)
def test_shapes_including_tiny_maps(shape, pad_mode, device):
    pool = BlurPool2d(4, pad_mode=pad_mode).to(device)
    x = torch.randn(shape, device=device)
    if pad_mode == 'reflect' and min(shape[2:]) == 1:
        with pytest.raises(ValueError, match='reflect'):
            pool(x)
        return
    out = pool(x)
    assert out.shape == (shape[0], 4, math.ceil(shape[2] / 2), math.ceil(shape[3] / 2))
    assert torch.isfinite(out).all()


def test_filter_size_one_is_plain_subsampling_and_constants_stay():
    x = torch.randn(2, 3, 9, 7)
    torch.testing.assert_close(BlurPool2d(3, filt_size=1)(x), x[:, :, ::2, ::2])
    for mode in ['reflect', 'replicate', 'circular']:
        out = BlurPool2d(3, filt_size=5, pad_mode=mode)(torch.full((1, 3, 8, 8), 2.5))
        torch.testing.assert_close(out, torch.full_like(out, 2.5))


def test_even_filter_padding_differs_from_symmetric_layout():
    # The authors pad (f-1)//2 before and ceil((f-1)/2) after: output ceil(H/s).
    # timm's symmetric ((s-1)+(f-1))//2 each side gives H/2 + 1 for f = 4 at even H.
    x = torch.randn(1, 1, 8, 8)
    ours = BlurPool2d(1, filt_size=4, pad_mode='zero')(x)
    symmetric = F.conv2d(x, binomial_filter(4).view(1, 1, 4, 4), stride=2, padding=2)
    assert ours.shape[-1] == 4 and symmetric.shape[-1] == 5
    # ... and for odd filters the two layouts agree.
    ours3 = BlurPool2d(1, filt_size=3, pad_mode='zero')(x)
    torch.testing.assert_close(ours3, F.conv2d(x, binomial_filter(3).view(1, 1, 3, 3),
                                               stride=2, padding=1))


def test_blur_reduces_the_effect_of_a_one_pixel_shift():
    x = torch.randn(4, 8, 64, 64)
    shifted = torch.roll(x, 1, dims=3)
    def change(pool):
        return ((pool(x) - pool(shifted)).norm() / pool(x).norm()).item()
    plain, blur = change(BlurPool2d(8, filt_size=1)), change(BlurPool2d(8, filt_size=5))
    assert blur < 0.5 * plain, (blur, plain)
    # a shift by the stride moves the circularly padded output by exactly one
    pool = BlurPool2d(8, filt_size=3, pad_mode='circular')
    torch.testing.assert_close(pool(torch.roll(x, 2, dims=2)), torch.roll(pool(x), 1, dims=2))


def test_gradients(device):
    pool = BlurPool2d(4).to(device)
    x = torch.randn(2, 4, 9, 7, device=device, requires_grad=True)
    assert_grads_reach_every_parameter(pool, x)
    conv = randomize_(BlurConv2d(4, 6, 3, stride=2, padding=1)).to(device)
    x = torch.randn(2, 4, 9, 7, device=device, requires_grad=True)
    assert_grads_reach_every_parameter(conv, x)


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
@pytest.mark.parametrize('pad_mode', ['reflect', 'zero'])
def test_low_precision_autocast_is_finite(dtype, pad_mode, device):
    conv = BlurConv2d(8, 16, 3, stride=2, padding=1, pad_mode=pad_mode).to(device)
    x = torch.randn(2, 8, 15, 14, device=device) * 30
    with torch.autocast(device_type=device.type, dtype=dtype):
        out = conv(x)
    assert out.dtype == dtype and torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), conv(x), rtol=5e-2, atol=5e-2 * 30)
    pool = BlurPool2d(8, pad_mode=pad_mode).to(device)
    half = pool(x.to(dtype))  # low-precision input without autocast
    assert half.dtype == dtype and torch.isfinite(half).all()


_COMBOS = [  # kernel, stride, padding, dilation
    (1, 1, 0, 1), (1, 2, 0, 1), (3, 1, 1, 1), (3, 2, 1, 1), (3, 2, 0, 1), (3, 2, 2, 2),
    (5, 2, 2, 1), (7, 2, 3, 1), ((3, 1), 2, (1, 0), 1), (3, 3, 1, 1), (2, 2, 0, 1), (4, 4, 0, 1),
]


@pytest.mark.parametrize('k, s, p, d', _COMBOS)
@pytest.mark.parametrize('blur_first', [False, True])
@pytest.mark.parametrize('pad_mode', ['zero', 'replicate'])
@pytest.mark.parametrize('shape', [(1, 4, 1, 1), (1, 4, 7, 9), (2, 4, 16, 15)])
def test_blur_conv_same_output_shape_as_conv2d(k, s, p, d, blur_first, pad_mode, shape, device):
    plain = torch.nn.Conv2d(4, 6, k, s, p, d).to(device)
    conv = BlurConv2d(4, 6, k, s, p, d, blur_first=blur_first, pad_mode=pad_mode).to(device)
    x = torch.randn(shape, device=device)
    try:
        expected = plain(x).shape
    except RuntimeError:  # input smaller than the kernel: both refuse it
        with pytest.raises(RuntimeError):
            conv(x)
        return
    out = conv(x)
    assert out.shape == expected and torch.isfinite(out).all()


def test_blur_conv_function():
    x = torch.randn(2, 4, 12, 11)
    plain = torch.nn.Conv2d(4, 6, 3, 2, 1)
    conv = BlurConv2d(4, 6, 3, 2, 1)
    assert list(conv.state_dict()) == list(plain.state_dict()) == ['weight', 'bias']
    conv.load_state_dict(plain.state_dict())
    stride1 = F.conv2d(x, plain.weight, plain.bias, 1, 1)
    torch.testing.assert_close(conv(x), BlurPool2d(6)(stride1))  # conv, then blur-subsample
    assert not torch.allclose(conv(x), plain(x), atol=1e-3)
    # blur_first: the same function away from the borders
    first = BlurConv2d(4, 6, 3, 2, 1, blur_first=True)
    first.load_state_dict(plain.state_dict())
    torch.testing.assert_close(first(x)[:, :, 1:-1, 1:-1], conv(x)[:, :, 1:-1, 1:-1])
    assert first._conv_stride == 2 and isinstance(first.post_blur, torch.nn.Identity)
    # stride 1: exactly the plain conv, no blur
    one = BlurConv2d(4, 6, 3, 1, 1)
    plain1 = torch.nn.Conv2d(4, 6, 3, 1, 1)
    one.load_state_dict(plain1.state_dict())
    assert isinstance(one.pre_blur, torch.nn.Identity) and isinstance(one.post_blur,
                                                                      torch.nn.Identity)
    torch.testing.assert_close(one(x), plain1(x))


def test_inside_conv_module():
    cm = ConvModule(4, 8, 3, stride=2, padding=1, conv_cfg=dict(type='BlurConv2d'),
                    norm_cfg=dict(type='BN'))
    assert isinstance(cm.conv, BlurConv2d) and cm.stride == (2, 2)
    cm.init_weights()
    assert cm(torch.randn(2, 4, 9, 9)).shape == (2, 8, 5, 5)


def test_mmdet_resnet50_blurs_exactly_the_strided_convs():
    plain = mmdet_resnet(depth=50, out_indices=(0, 1, 2, 3))
    blur = mmdet_resnet(depth=50, out_indices=(0, 1, 2, 3), conv_cfg=dict(type='BlurConv2d'),
                        init_cfg=HOST_INIT_CFG)
    convs = {n: m for n, m in blur.named_modules() if isinstance(m, BlurConv2d)}
    assert len(convs) == 1 + 16 * 3 + 4  # conv_cfg reaches every conv
    blurred = {n for n, m in convs.items() if isinstance(m.post_blur, Blur)}
    assert blurred == {'conv1', 'layer2.0.conv2', 'layer3.0.conv2', 'layer4.0.conv2',
                       'layer2.0.downsample.0', 'layer3.0.downsample.0', 'layer4.0.downsample.0'}
    blur.init_weights()  # the host's Kaiming reaches BlurConv2d (an nn.Conv2d)
    assert torch.all(blur.bn1.weight == 0.5)
    blur.load_state_dict(plain.state_dict())  # strict: a plain checkpoint loads unchanged
    plain.eval()
    blur.eval()
    for size in [(64, 64), (67, 61)]:
        x = torch.randn(1, 3, *size)
        outs = blur(x)
        assert [o.shape for o in outs] == [o.shape for o in plain(x)]
        assert all(torch.isfinite(o).all() for o in outs)


def test_mmseg_resnetv1c_stem_and_dilated_stages():
    seg = mmseg_resnet(depth=18, conv_cfg=dict(type='BlurConv2d'), out_indices=(3, ),
                       strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4))
    seg.eval()
    assert isinstance(seg.stem[0].post_blur, Blur)  # the stride-2 first stem conv
    assert seg(torch.randn(1, 3, 33, 31))[0].shape == (1, 512, 5, 4)
