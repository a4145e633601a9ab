"""DCNv2UnitMask: the plain conv at init (mask 2*sigmoid), grads, mmdet ResNet dcn=.

mmcv's deformable ops run on CPU (slowly): the tensors here are small.
"""
import pytest
import torch
import torch.nn.functional as F
from _harness import HOST_INIT_CFG, assert_grads_reach_every_parameter, mmdet_resnet, mmseg_resnet
from _harness import randomize_
from mmcv.cnn import ConvModule, build_conv_layer
from mmcv.ops import ModulatedDeformConv2dPack
from mmengine.registry import DefaultScope

from mmplug.conv.dcn import DCNv2UnitMask


@pytest.mark.parametrize('kwargs, words', [
    (dict(in_channels=0, out_channels=8, kernel_size=3), ['in_channels', '0']),
    (dict(in_channels=8, out_channels=8, kernel_size=0), ['kernel_size', '0']),
    (dict(in_channels=8, out_channels=8, kernel_size=3, stride=0), ['stride', '0']),
    (dict(in_channels=8, out_channels=8, kernel_size=3, padding=-1), ['padding', '-1']),
    (dict(in_channels=8, out_channels=8, kernel_size=3, dilation=(1, 0)), ['dilation', '(1, 0)']),
    (dict(in_channels=8, out_channels=8, kernel_size=3, groups=3), ['groups', '3', '8']),
    (dict(in_channels=8, out_channels=8, kernel_size=3, deform_groups=3),
     ['deform_groups', '3', '8']),
    (dict(in_channels=8, out_channels=8, kernel_size=3, bias='auto'), ['bias', 'auto']),
])
def test_invalid_arguments(kwargs, words):
    with pytest.raises(ValueError) as err:
        DCNv2UnitMask(**kwargs)
    for word in words:
        assert word in str(err.value)


def _copy_plain(dcn, conv):
    with torch.no_grad():
        dcn.weight.copy_(conv.weight)
        if conv.bias is not None:
            dcn.bias.copy_(conv.bias)
    return dcn


@pytest.mark.parametrize('k, s, p, d, g, dg, bias', [
    (3, 1, 1, 1, 1, 1, True), (3, 2, 1, 1, 1, 2, False), (3, 1, 2, 2, 2, 1, True),
    (1, 1, 0, 1, 1, 1, False), ((3, 1), 2, (1, 0), 1, 1, 1, True),
])
@pytest.mark.parametrize('shape', [(1, 4, 1, 1), (1, 4, 7, 9), (2, 4, 10, 9)])
def test_equals_the_plain_conv_at_init(k, s, p, d, g, dg, bias, shape, device):
    conv = torch.nn.Conv2d(4, 6, k, s, p, d, groups=g, bias=bias)
    dcn = _copy_plain(DCNv2UnitMask(4, 6, k, s, p, d, groups=g, deform_groups=dg, bias=bias),
                      conv).to(device)
    conv.to(device)
    assert torch.count_nonzero(dcn.conv_offset.weight) == 0
    x = torch.randn(shape, device=device)
    try:
        ref = F.conv2d(x, conv.weight, conv.bias, s, p, d, g)
    except RuntimeError:  # input smaller than the kernel
        with pytest.raises((RuntimeError, ValueError)):
            dcn(x)
        return
    out = dcn(x)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_mmcv_dcnv2_halves_the_output_at_init():
    # The documented difference: mmcv's DCNv2 modulates by sigmoid(0) = 0.5.
    conv = torch.nn.Conv2d(4, 6, 3, padding=1, bias=False)
    ours = _copy_plain(DCNv2UnitMask(4, 6, 3, padding=1, bias=False), conv)
    mmcv_v2 = _copy_plain(ModulatedDeformConv2dPack(4, 6, 3, padding=1, bias=False), conv)
    x = torch.randn(2, 4, 7, 6)
    ref = conv(x)
    torch.testing.assert_close(ours(x), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mmcv_v2(x), 0.5 * ref, atol=1e-5, rtol=1e-5)
    # Same parameters and keys: mmcv DCNv2 checkpoints load.
    assert list(ours.state_dict()) == list(mmcv_v2.state_dict())
    ours.load_state_dict(mmcv_v2.state_dict())


def test_mask_is_two_sigmoid_of_the_logits():
    dcn = DCNv2UnitMask(2, 3, 3, padding=1, bias=False)
    n = 9  # kernel positions, deform_groups 1: channels [offsets y/x (18) | mask logits (9)]
    with torch.no_grad():
        dcn.conv_offset.bias[2 * n:] = 3.0  # every mask = 2 * sigmoid(3)
    x = torch.randn(1, 2, 5, 5)
    ref = F.conv2d(x, dcn.weight, None, 1, 1) * 2 * torch.sigmoid(torch.tensor(3.0))
    torch.testing.assert_close(dcn(x), ref, atol=1e-5, rtol=1e-5)


def test_gradients_reach_every_parameter(device):
    dcn = randomize_(DCNv2UnitMask(4, 4, 3, padding=1, deform_groups=2), scale=0.3).to(device)
    x = torch.randn(1, 4, 6, 5, device=device, requires_grad=True)
    assert_grads_reach_every_parameter(dcn, x)
    # at init (zero offset conv) the offset conv still gets gradients, so it can learn
    fresh = DCNv2UnitMask(4, 4, 3, padding=1)
    fresh(torch.randn(1, 4, 6, 5)).square().sum().backward()
    assert fresh.conv_offset.weight.grad.abs().sum() > 0
    assert torch.isfinite(fresh.conv_offset.weight.grad).all()


def test_cpu_autocast_fp16_finite_bf16_refused_by_mmcv_kernel():
    # mmcv casts input, weight and mask to the offset's dtype (autocast makes the offset
    # conv's output low precision). Its CPU kernel (mmcv 2.1.0) dispatches float16 but
    # not bfloat16: documented, not worked around.
    dcn = DCNv2UnitMask(8, 8, 3, padding=1)
    torch.nn.init.normal_(dcn.conv_offset.weight, std=0.1)
    x = torch.randn(2, 8, 7, 6) * 10
    ref = dcn(x)
    with torch.autocast(device_type='cpu', dtype=torch.float16):
        out = dcn(x)
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2 * 10)
    with torch.autocast(device_type='cpu', dtype=torch.bfloat16), \
            pytest.raises(NotImplementedError, match='BFloat16'):
        dcn(x)


def test_cuda_fp16_autocast_is_finite(device):
    if device.type != 'cuda':
        pytest.skip('CUDA only: set MMPLUG_TEST_DEVICE=cuda (mmcv built with CUDA)')
    dcn = DCNv2UnitMask(8, 8, 3, padding=1).cuda()
    x = torch.randn(2, 8, 9, 9, device='cuda')
    with torch.autocast(device_type='cuda', dtype=torch.float16):
        out = dcn(x)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), dcn(x), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize('scope', ['mmdet', 'mmseg'])
def test_registry_build_from_downstream_scope(scope):
    import mmdet.models  # noqa: F401
    import mmseg.models  # noqa: F401
    with DefaultScope.overwrite_default_scope(scope):
        dcn = build_conv_layer(dict(type='DCNv2UnitMask', deform_groups=2), 4, 8, 3, stride=2,
                               padding=1, dilation=1, bias=False)
    assert isinstance(dcn, DCNv2UnitMask) and dcn.deform_groups == 2 and dcn.bias is None
    assert dcn(torch.randn(1, 4, 6, 6)).shape == (1, 8, 3, 3)


def test_inside_conv_module():
    cm = ConvModule(4, 8, 3, padding=1, conv_cfg=dict(type='DCNv2UnitMask'),
                    norm_cfg=dict(type='BN'))
    assert isinstance(cm.conv, DCNv2UnitMask) and cm.conv.bias is None
    cm.init_weights()
    assert cm(torch.randn(2, 4, 5, 5)).shape == (2, 8, 5, 5)


_DCN = dict(type='DCNv2UnitMask', deform_groups=1, fallback_on_stride=False)


def test_mmdet_resnet50_dcn_equals_plain_resnet_at_init():
    plain = mmdet_resnet(depth=50, out_indices=(0, 1, 2, 3))
    model = mmdet_resnet(depth=50, out_indices=(0, 1, 2, 3), dcn=dict(_DCN),
                         stage_with_dcn=(False, True, True, True), init_cfg=HOST_INIT_CFG)
    dcns = {n for n, m in model.named_modules() if isinstance(m, DCNv2UnitMask)}
    assert len(dcns) == 4 + 6 + 3 and 'layer2.0.conv2' in dcns and 'layer4.2.conv2' in dcns
    assert not any(n.startswith('layer1') for n in dcns)
    for n, m in model.named_modules():
        if isinstance(m, DCNv2UnitMask):
            randomize_(m.conv_offset)
    model.init_weights()  # the host's Kaiming hits conv_offset (an nn.Conv2d) first ...
    for n, m in model.named_modules():
        if isinstance(m, DCNv2UnitMask):  # ... and the DCN's own init zeroes it again
            assert torch.count_nonzero(m.conv_offset.weight) == 0, n
    assert torch.all(model.bn1.weight == 0.5)
    # Pretrained plain weights: the DCN backbone computes the plain backbone's function.
    missing, unexpected = model.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and all('conv_offset' in k for k in missing) and len(missing) == 26
    plain.eval()
    model.eval()
    x = torch.randn(1, 3, 48, 40)
    for ours, ref in zip(model(x), plain(x)):
        torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)


def test_mmseg_resnetv1c_dilated_dcn_stages():
    model = mmseg_resnet(depth=50, out_indices=(3, ), strides=(1, 2, 1, 1),
                         dilations=(1, 1, 2, 4), dcn=dict(_DCN),
                         stage_with_dcn=(False, False, False, True))
    model.eval()
    dcn = model.layer4[0].conv2
    assert isinstance(dcn, DCNv2UnitMask) and dcn.dilation == (4, 4) and dcn.padding == (4, 4)
    assert model(torch.randn(1, 3, 33, 31))[0].shape == (1, 2048, 5, 4)
