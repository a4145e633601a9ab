"""DCNv2UnitMask: the plain conv at init (mask 2*sigmoid), grads, mmdet ResNet dcn=;
the plain-PyTorch modulated deformable conv against mmcv's compiled op.

mmcv's deformable ops run on CPU (slowly): the tensors here are small.
"""
import pytest
import torch
import torch.nn.functional as F
from mmcv.cnn import ConvModule, build_conv_layer
from mmcv.ops import ModulatedDeformConv2dPack
from mmcv.ops import modulated_deform_conv2d as mmcv_modulated_deform_conv2d
from torch.nn.modules.utils import _pair

from mmplug.conv.dcn import DCNv2UnitMask
from mmplug.conv.modulated_deform_conv import modulated_deform_conv2d

from _harness import (
    HOST_INIT_CFG,
    assert_grads_reach_every_parameter,
    mmdet_resnet,
    mmseg_resnet,
    randomize_,
)


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


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_cpu_autocast_on_the_torch_path(dtype):
    # mmcv casts input, weight and mask to the offset's dtype (autocast makes the offset
    # conv's output low precision); the torch path returns that dtype too, but samples in
    # float32, and takes bfloat16, which mmcv 2.1.0's CPU kernel refuses.
    dcn = DCNv2UnitMask(8, 8, 3, padding=1)
    torch.nn.init.normal_(dcn.conv_offset.weight, std=0.1)
    x = torch.randn(2, 8, 7, 6) * 10
    ref = dcn(x)
    tol = 2e-2 if dtype == torch.float16 else 5e-2
    with torch.autocast(device_type='cpu', dtype=dtype):
        out = dcn(x)
    assert out.dtype == dtype and torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), ref, rtol=tol, atol=tol * 10)
    dcn.impl = 'mmcv'
    if dtype == torch.bfloat16:
        # NotImplementedError (mmcv built against torch 2.13) or RuntimeError (torch 2.1)
        with torch.autocast(device_type='cpu', dtype=dtype), \
                pytest.raises((NotImplementedError, RuntimeError), match='BFloat16'):
            dcn(x)
        return
    with torch.autocast(device_type='cpu', dtype=dtype):
        out = dcn(x)
    assert out.dtype == dtype and torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), ref, rtol=tol, atol=tol * 10)


def test_cuda_fp16_autocast_is_finite(device):
    if device.type != 'cuda':
        pytest.skip('CUDA only: set MMPLUG_TEST_DEVICE=cuda (mmcv built with CUDA)')
    dcn = DCNv2UnitMask(8, 8, 3, padding=1).cuda()
    x = torch.randn(2, 8, 9, 9, device='cuda')
    with torch.autocast(device_type='cuda', dtype=torch.float16):
        out = dcn(x)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), dcn(x), rtol=2e-2, atol=2e-2)


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
    for m in model.modules():
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


# ---- the plain-PyTorch op against mmcv's compiled op ----

def _op_inputs(n, c, c_out, size, k, stride, padding, dilation, groups, dg, offsets, device,
               dtype=torch.float32, seed=0):
    """Random input/offset/mask/weight/bias for one modulated deformable conv.

    ``offsets``: a float scale for normal offsets, or ``'int'`` for integer offsets
    in [-3, 3] (sampling points on the pixel grid and on the -1 / H / W lines).
    """
    gen = torch.Generator().manual_seed(seed)
    (h, w), (kh, kw) = size, _pair(k)
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    ho, wo = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    if offsets == 'int':
        offset = torch.randint(-3, 4, (n, 2 * dg * kh * kw, ho, wo), generator=gen).to(dtype)
    else:
        offset = torch.randn(n, 2 * dg * kh * kw, ho, wo, generator=gen, dtype=dtype) * offsets
    tensors = [torch.randn(n, c, h, w, generator=gen, dtype=dtype), offset,
               torch.rand(n, dg * kh * kw, ho, wo, generator=gen, dtype=dtype),
               torch.randn(c_out, c // groups, kh, kw, generator=gen, dtype=dtype) * 0.3,
               torch.randn(c_out, generator=gen, dtype=dtype)]
    tensors = [t.to(device).requires_grad_() for t in tensors]
    return tensors, (_pair(stride), _pair(padding), _pair(dilation), groups, dg)


def _forward_backward(op, tensors, args, seed=1):
    out = op(*tensors, *args)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed))
    grads = torch.autograd.grad(out, tensors, grad_out.to(out.device))
    return out, grads


def _rel_err(ours, ref):
    """Max abs difference over the reference's max abs value (at least 1)."""
    return ((ours - ref).abs().max() / ref.abs().max().clamp_min(1)).item()


#: (N, C, C_out, (H, W), kernel, stride, padding, dilation, groups, deform_groups, offsets)
OP_CASES = [
    (2, 4, 6, (7, 9), 3, 1, 1, 1, 1, 1, 1.5),
    (1, 4, 6, (9, 7), 3, 2, 1, 1, 1, 2, 3.0),
    (2, 8, 4, (10, 11), 3, 1, 2, 2, 2, 1, 2.0),
    (1, 8, 8, (5, 6), 3, 2, 2, 2, 2, 2, 8.0),  # large offsets: many points outside
    (2, 4, 4, (16, 8), (1, 3), (2, 1), (0, 1), 1, 1, 1, 1.0),  # power-of-two sizes
    (1, 4, 2, (1, 1), 3, 1, 1, 1, 1, 1, 0.7),  # 1x1 map
    (2, 4, 6, (7, 9), 3, 1, 1, 1, 1, 2, 'int'),  # integer points: the bilinear kinks
    (1, 4, 4, (6, 5), 3, 2, 1, 2, 2, 2, 'int'),
    (2, 4, 6, (7, 9), 3, 1, 1, 1, 1, 1, 0.0),  # zero offsets (DCNv2UnitMask at init)
]


@pytest.mark.parametrize('case', OP_CASES)
def test_torch_op_matches_mmcv_forward_and_gradients(case, device):
    tensors, args = _op_inputs(*case, device=device)
    out, grads = _forward_backward(modulated_deform_conv2d, tensors, args)
    ref, ref_grads = _forward_backward(mmcv_modulated_deform_conv2d, tensors, args)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    assert _rel_err(out, ref) < 1e-5
    for name, grad, ref_grad in zip(['input', 'offset', 'mask', 'weight', 'bias'], grads,
                                    ref_grads):
        assert _rel_err(grad, ref_grad) < 1e-5, name


def test_torch_op_far_outside_samples_zero_with_no_offset_gradient():
    tensors, args = _op_inputs(1, 4, 3, (6, 7), 3, 1, 1, 1, 1, 1, 1.0, device='cpu')
    with torch.no_grad():
        tensors[1].copy_(torch.where(torch.rand(tensors[1].shape) < 0.5, -1e4, 1e6))
    out, grads = _forward_backward(modulated_deform_conv2d, tensors, args)
    ref, ref_grads = _forward_backward(mmcv_modulated_deform_conv2d, tensors, args)
    bias = tensors[4].detach().view(1, -1, 1, 1).expand_as(out)
    assert torch.equal(out, bias) and torch.equal(ref, bias)
    for grad, ref_grad in zip(grads[:3], ref_grads[:3]):  # input, offset, mask
        assert torch.count_nonzero(grad) == 0 and torch.count_nonzero(ref_grad) == 0


def test_torch_op_gradcheck_float64():
    tensors, args = _op_inputs(1, 4, 2, (4, 5), 3, 1, 1, 1, 2, 2, 1.3, device='cpu',
                               dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda *t: modulated_deform_conv2d(*t, *args), tensors)


def test_torch_op_without_bias_and_shape_errors():
    tensors, args = _op_inputs(1, 4, 6, (7, 9), 3, 1, 1, 1, 1, 1, 1.0, device='cpu')
    x, offset, mask, weight, bias = tensors
    no_bias = modulated_deform_conv2d(x, offset, mask, weight, None, *args)
    torch.testing.assert_close(no_bias + bias.view(1, -1, 1, 1),
                               modulated_deform_conv2d(x, offset, mask, weight, bias, *args))
    with pytest.raises(ValueError, match='offset'):
        modulated_deform_conv2d(x, offset[:, :-2], mask, weight, bias, *args)
    with pytest.raises(ValueError, match='too small'):
        modulated_deform_conv2d(x[..., :1, :1], offset, mask, weight, bias, 1, 0)
    with pytest.raises(ValueError, match='groups'):
        modulated_deform_conv2d(x, offset, mask, weight[:, :3], bias, *args)


def test_torch_op_takes_channels_last_and_non_contiguous_tensors():
    tensors, args = _op_inputs(2, 4, 6, (9, 17), 3, 1, 1, 1, 1, 2, 1.5, device='cpu')
    ref = modulated_deform_conv2d(*tensors, *args)
    x, offset, mask, weight, bias = (t.detach() for t in tensors)
    out = modulated_deform_conv2d(x.to(memory_format=torch.channels_last),
                                  offset.transpose(2, 3).contiguous().transpose(2, 3),
                                  mask.to(memory_format=torch.channels_last),
                                  weight.to(memory_format=torch.channels_last), bias, *args)
    torch.testing.assert_close(out, ref)


def test_module_backends_agree():
    torch_dcn = randomize_(DCNv2UnitMask(4, 6, 3, stride=2, padding=1, deform_groups=2,
                                         impl='torch'), scale=0.3)
    mmcv_dcn = DCNv2UnitMask(4, 6, 3, stride=2, padding=1, deform_groups=2, impl='mmcv')
    mmcv_dcn.load_state_dict(torch_dcn.state_dict())
    x = torch.randn(2, 4, 9, 8, requires_grad=True)
    outs = []
    for dcn in (torch_dcn, mmcv_dcn):
        x.grad = None
        out = dcn(x)
        out.square().sum().backward()
        outs.append((out, x.grad, {n: p.grad for n, p in dcn.named_parameters()}))
    (out, grad, grads), (ref, ref_grad, ref_grads) = outs
    assert _rel_err(out, ref) < 1e-5 and _rel_err(grad, ref_grad) < 1e-5
    assert list(grads) == list(ref_grads) == ['weight', 'bias', 'conv_offset.weight',
                                              'conv_offset.bias']
    for name in grads:
        assert _rel_err(grads[name], ref_grads[name]) < 1e-5, name


def test_auto_uses_torch_on_cpu_and_mmcv_elsewhere():
    dcn = DCNv2UnitMask(4, 4, 3, padding=1)
    assert dcn.impl == 'auto'
    assert not dcn._use_mmcv(torch.zeros(1))
    assert dcn._use_mmcv(torch.zeros(1, device='meta'))
    dcn.impl = 'mmcv'
    assert dcn._use_mmcv(torch.zeros(1))
    dcn.impl = 'torch'
    assert not dcn._use_mmcv(torch.zeros(1, device='meta'))
    built = build_conv_layer(dict(type='DCNv2UnitMask', impl='mmcv'), 4, 4, 3, padding=1)
    assert built.impl == 'mmcv'


def test_torch_path_exports_with_torch_export():
    dcn = randomize_(DCNv2UnitMask(4, 6, 3, padding=1, impl='torch'), scale=0.3).eval()
    x = torch.randn(2, 4, 7, 9)
    exported = torch.export.export(dcn, (x, ))
    x = torch.randn(2, 4, 7, 9)
    torch.testing.assert_close(exported.module()(x), dcn(x))
