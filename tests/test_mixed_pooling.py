"""MPMBlock / MPM (SPNet's mixed pooling module): the paper's structure and equations, sizes
below the bin grids, the long-range path's reach, the neck contract, OpenMMLab integration."""
import doctest

import pytest
import torch
import torch.nn.functional as F
from mmengine.model import Sequential
from mmengine.registry import DefaultScope

from mmplug.necks import mixed_pooling
from mmplug.necks.mixed_pooling import MPM, MPMBlock

from _harness import (
    assert_grads_reach_every_parameter,
    randomize_,
)


def _randomize(m, seed=0):
    return randomize_(m, seed=seed, scale=0.3)


def _cbr(x, cm, act=True, conv=F.conv2d, weight=None, padding=0):
    """conv -> BN (eval) -> ReLU from an mmcv ConvModule's parameters."""
    y = conv(x, cm.conv.weight if weight is None else weight, cm.conv.bias, padding=padding)
    y = F.batch_norm(y, cm.norm.running_mean, cm.norm.running_var, cm.norm.weight, cm.norm.bias,
                     training=False, eps=cm.norm.eps)
    return F.relu(y) if act else y


def _reference_mpm(m, x):
    """Paper Sec. 3.3 / Fig. 3 in eval mode, from the module's parameters."""
    size = x.shape[2:]
    # Short range: 3x3 path + (pool k x k -> 3x3 -> bilinear up) paths, sum, 3x3.
    y = _cbr(x, m.reduce_short)
    s = _cbr(y, m.short_range.local, act=False, padding=1)
    for k, branch in zip(m.pool_sizes, m.short_range.pooled):
        p = _cbr(F.adaptive_avg_pool2d(y, k), branch[1], act=False, padding=1)
        s = s + F.interpolate(p, size=size, mode='bilinear', align_corners=m.align_corners)
    s = _cbr(F.relu(s), m.short_range.fuse, padding=1)
    # Long range: row means (H x 1) and column means (1 x W), 1-D convs of kernel 3,
    # expand, sum, 3x3.
    z = _cbr(x, m.reduce_long)
    lr = m.long_range
    z_h = _cbr(z.mean(dim=3), lr.conv_h, act=False, conv=F.conv1d,
               weight=lr.conv_h.conv.weight[..., 0], padding=1)  # [N, C', H]
    z_v = _cbr(z.mean(dim=2), lr.conv_w, act=False, conv=F.conv1d,
               weight=lr.conv_w.conv.weight[:, :, 0], padding=1)  # [N, C', W]
    lng = _cbr(F.relu(z_h[..., :, None] + z_v[..., None, :]), lr.fuse, padding=1)
    out = _cbr(torch.cat([s, lng], dim=1), m.expand, act=False)
    shortcut = x if isinstance(m.shortcut, torch.nn.Identity) else _cbr(x, m.shortcut, act=False)
    return F.relu(shortcut + out)


def test_block_old_mid_channels_and_positional_width_raise():
    # The width was renamed to the package vocabulary (rd_ratio / rd_channels); an old config
    # passing mid_channels fails loudly, and nothing after out_channels is positional.
    with pytest.raises(TypeError, match='mid_channels'):
        MPMBlock(16, mid_channels=4)
    with pytest.raises(TypeError, match='positional'):
        MPMBlock(16, 16, 4)


def test_reduced_width_vocabulary():
    # rd_ratio=1/4 is the paper's C / 4, rounded down and at least 1 (as the old default).
    for c in list(range(1, 70)) + [255, 2048, 2049]:
        assert MPMBlock(c, norm_cfg=None).rd_channels == max(c // 4, 1), c
    assert MPMBlock(3).rd_channels == 1 and MPMBlock(3).expand.conv.in_channels == 2
    assert MPMBlock(64, rd_ratio=1 / 8).rd_channels == 8
    assert MPMBlock(64, rd_ratio=1.0).rd_channels == 64
    m = MPMBlock(64, rd_ratio=0.5, rd_channels=6)  # rd_channels overrides the ratio
    assert m.rd_channels == 6 and m.reduce_long.conv.out_channels == 6
    assert MPMBlock(52, rd_divisor=8).rd_channels == 16  # 13 to the nearest multiple of 8
    assert not hasattr(MPMBlock(16), 'mid_channels')
    assert MPMBlock(3)(torch.randn(2, 3, 5, 4)).shape == (2, 3, 5, 4)
    neck = MPM([8, 64], levels=[1], num_blocks=2, rd_ratio=1 / 8, rd_divisor=1)
    assert [b.rd_channels for b in neck.blocks['1']] == [8, 8]
    assert MPM([8, 64], out_channels=32, levels=[1], num_blocks=2).blocks['1'][1].rd_channels == 8


@pytest.mark.parametrize('out_channels', [None, 24, 8])
@pytest.mark.parametrize('shape', [(1, 16, 1, 1), (1, 16, 7, 9), (2, 16, 16, 15), (3, 16, 5, 1),
                                   (1, 16, 33, 21)])
def test_shapes_and_paper_equations_eval(out_channels, shape, device):
    # Every shape here is smaller than the 20x20 bins in at least one dim (adaptive pooling
    # repeats pixels); batch 1 on a 1x1 map runs in eval mode.
    m = _randomize(MPMBlock(16, out_channels)).to(device)
    m.eval()
    x = torch.randn(shape, device=device)
    out = m(x)
    c = out_channels or 16
    assert out.shape == (shape[0], c, *shape[2:]) and torch.isfinite(out).all()
    torch.testing.assert_close(out, _reference_mpm(m, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('kwargs', [dict(pool_sizes=(3, (2, 5))), dict(align_corners=True),
                                    dict(rd_channels=6, out_channels=12),
                                    dict(rd_ratio=1 / 8, out_channels=12)])
def test_options_match_reference(kwargs):
    m = _randomize(MPMBlock(16, **kwargs)).eval()
    x = torch.randn(2, 16, 11, 14)
    torch.testing.assert_close(m(x), _reference_mpm(m, x), rtol=1e-5, atol=1e-5)
    assert m.pool_sizes == tuple((s, s) if isinstance(s, int) else s
                                 for s in kwargs.get('pool_sizes', (20, 12)))


def test_structure_and_parameter_count_at_2048():
    m = MPMBlock(2048)
    assert m.rd_channels == 512 and m.pool_sizes == ((20, 20), (12, 12))
    assert isinstance(m.shortcut, torch.nn.Identity) and m.expand.conv.in_channels == 1024
    assert [b[0].output_size for b in m.short_range.pooled] == [(20, 20), (12, 12)]
    assert m.long_range.conv_h.conv.kernel_size == (3, 1)
    assert m.long_range.conv_w.conv.kernel_size == (1, 3)
    for conv in [m.short_range.local, m.short_range.fuse, m.long_range.fuse,
                 *[b[1] for b in m.short_range.pooled]]:
        assert conv.conv.kernel_size == (3, 3)  # the paper: all but reduce/expand are 3x3 or 3
    for conv in [m.reduce_short, m.reduce_long, m.expand]:
        assert conv.conv.kernel_size == (1, 1)
    assert not m.expand.with_activation and m.reduce_short.with_activation
    c, r = 2048, 512
    bn = 2 * r
    expected = (2 * (c * r + bn)  # two 1x1 reductions
                + 4 * (9 * r * r + bn)  # local, two pooled, fuse (short range)
                + 2 * (3 * r * r + bn) + (9 * r * r + bn)  # 3x1, 1x3, fuse (long range)
                + (2 * r * c + 2 * c))  # 1x1 expansion
    assert sum(p.numel() for p in m.parameters()) == expected == 17_576_960
    proj = MPMBlock(64, out_channels=32)
    assert proj.rd_channels == 16 and proj.shortcut.conv.kernel_size == (1, 1)
    assert proj.shortcut.conv.out_channels == 32 and proj.shortcut.with_norm
    assert MPMBlock(3).rd_channels == 1


def test_training_mode_sizes():
    m = _randomize(MPMBlock(16))
    for shape in [(2, 16, 1, 1), (1, 16, 2, 3), (2, 16, 16, 15), (2, 16, 40, 24)]:
        assert m(torch.randn(shape)).shape == shape
    # BN in training mode needs more than one value per channel (documented).
    with pytest.raises(ValueError, match='more than 1 value per channel'):
        m(torch.randn(1, 16, 1, 1))
    m = _randomize(MPMBlock(16, norm_cfg=None))
    assert m(torch.randn(1, 16, 1, 1)).shape == (1, 16, 1, 1)


def test_spnet_setting_c5_64x128():
    # mmseg R50-D8 at 512x1024 crops: c5 is 64x128. Small channels keep it fast.
    m = _randomize(MPMBlock(32)).eval()
    seen = []
    for branch in m.short_range.pooled:
        branch.register_forward_hook(lambda mod, i, o: seen.append(tuple(o.shape)))
    x = torch.randn(1, 32, 64, 128)
    out = m(x)
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert seen == [(1, 8, 20, 20), (1, 8, 12, 12)]
    torch.testing.assert_close(out, _reference_mpm(m, x), rtol=1e-5, atol=1e-5)


def _pixel_influence(m, x, row, col):
    y = x.clone()
    y[:, :, row, col] += 50.0
    with torch.no_grad():
        return (m(y) - m(x)).abs().sum(dim=(0, 1))  # [H, W]


def test_long_range_path_reaches_whole_row_and_column():
    # LeakyReLU so that no unit is dead: the check is about reach, not about ReLU zeros.
    m = _randomize(MPMBlock(16, act_cfg=dict(type='LeakyReLU', negative_slope=0.1))).eval()
    x = torch.randn(1, 16, 40, 40)
    row, col = 5, 7
    diff = _pixel_influence(m, x, row, col)
    # A row mean moves by 50 / 40: small but clearly non-zero along the whole row and column,
    # up to 30+ pixels away; off the row/column band and far away nothing moves at all.
    assert diff[row].min() > 1e-5 and diff[:, col].min() > 1e-5
    assert diff[20:, 20:].max() < 1e-7
    # The same block with the strip path cut (its fusion outputs a constant 0): the change
    # stays near the pixel, so the reach above comes from strip pooling.
    torch.nn.init.zeros_(m.long_range.fuse.bn.weight)
    torch.nn.init.zeros_(m.long_range.fuse.bn.bias)
    local = _pixel_influence(m, x, row, col)
    assert local[row, col] > 1 and local[row, 4:11].min() > 1e-5  # the pyramid path's reach
    assert local[row, 20:].max() < 1e-7 and local[20:, col].max() < 1e-7


@pytest.mark.parametrize('out_channels', [None, 12])
def test_gradients_reach_every_parameter(out_channels, device):
    m = _randomize(MPMBlock(16, out_channels)).to(device)
    x = torch.randn(2, 16, 9, 7, device=device, requires_grad=True)
    assert_grads_reach_every_parameter(m, x)


class _OneLevel(torch.nn.Module):
    """The neck's output at ``level`` as a function of that level's input."""

    def __init__(self, neck, feats, level):
        super().__init__()
        self.neck, self.feats, self.level = neck, feats, level

    def forward(self, x):
        feats = list(self.feats)
        feats[self.level] = x
        return self.neck(tuple(feats))[self.level]


def test_neck_gradients_reach_every_parameter():
    neck = _randomize(MPM([8, 16], out_channels=12, levels=[1], num_blocks=2))
    x = torch.randn(2, 16, 6, 5, requires_grad=True)
    out = assert_grads_reach_every_parameter(_OneLevel(neck, [torch.randn(2, 8, 12, 10), x], 1),
                                             x)
    assert out.shape == (2, 12, 6, 5)


def test_bf16_autocast_is_finite(device):
    m = _randomize(MPMBlock(32)).to(device).eval()
    conv = torch.nn.Conv2d(32, 32, 1).to(device)
    x = torch.randn(2, 32, 14, 13, device=device) * 10
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
        y = conv(x)
        out = m(y)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    ref = m(y.float())
    diff = (out.float() - ref).abs().max().item()
    assert diff < 0.05 * ref.abs().max().item(), diff


def test_zero_init_residual_starts_as_act_of_input():
    m = MPMBlock(16, zero_init_residual=True)
    assert torch.all(m.expand.norm.weight == 0)
    x = torch.randn(2, 16, 9, 7)
    assert torch.equal(m(x), F.relu(x))
    x = x.relu()  # the output of a ReLU backbone: exactly unchanged
    assert torch.equal(m.eval()(x), x)
    plain = MPMBlock(16, norm_cfg=None, zero_init_residual=True)
    assert torch.all(plain.expand.conv.weight == 0) and torch.all(plain.expand.conv.bias == 0)


def test_pretrained_init_cfg_is_not_overwritten(tmp_path):
    src = _randomize(MPM([8, 16], levels=[1]))
    path = str(tmp_path / 'mpm.pth')
    torch.save(src.state_dict(), path)
    neck = MPM([8, 16], levels=[1], init_cfg=dict(type='Pretrained', checkpoint=path))
    neck.init_weights()
    for (name, a), b in zip(src.state_dict().items(), neck.state_dict().values()):
        assert torch.equal(a, b), name
    block = MPMBlock(16, init_cfg=dict(type='Pretrained', checkpoint=path,
                                       prefix='blocks.1.0.'))
    block.init_weights()
    torch.testing.assert_close(block.expand.conv.weight, src.blocks['1'][0].expand.conv.weight,
                               rtol=0, atol=0)


def test_neck_levels_subset_pass_through_and_structure():
    neck = _randomize(MPM([8, 16, 32, 64], out_channels=24, levels=[1, 3], num_blocks=2)).eval()
    assert neck.out_channels == [8, 24, 32, 24] and sorted(neck.blocks.keys()) == ['1', '3']
    for key, c in (('1', 16), ('3', 64)):
        stack = neck.blocks[key]
        assert isinstance(stack, Sequential) and len(stack) == 2
        assert [(b.in_channels, b.out_channels) for b in stack] == [(c, 24), (24, 24)]
        assert not isinstance(stack[0].shortcut, torch.nn.Identity)
        assert isinstance(stack[1].shortcut, torch.nn.Identity)
    ids = {id(p) for p in neck.blocks['1'].parameters()}
    assert not ids & {id(p) for p in neck.blocks['3'].parameters()}  # nothing shared
    feats = tuple(torch.randn(1, c, s, s) for c, s in zip([8, 16, 32, 64], [24, 12, 7, 3]))
    out = neck(feats)
    assert out[0] is feats[0] and out[2] is feats[2]
    assert [tuple(o.shape) for o in out] == [(1, 8, 24, 24), (1, 24, 12, 12), (1, 32, 7, 7),
                                             (1, 24, 3, 3)]
    torch.testing.assert_close(out[3], neck.blocks['3'][1](neck.blocks['3'][0](feats[3])))
    assert MPM([8, 16], levels=[0]).blocks['0'][0].pool_sizes == ((20, 20), (12, 12))
    one = MPM([8, 16], pool_sizes=(4, ), rd_channels=3)
    assert len(one.blocks['0']) == 1 and one.blocks['1'][0].rd_channels == 3
    assert one.blocks['1'][0].pool_sizes == ((4, 4), )


def test_neck_input_errors_name_level_and_expected():
    neck = MPM([16, 32, 64, 128], levels=[3])
    feats = [torch.randn(1, c, 4, 4) for c in (16, 32, 64, 128)]
    with pytest.raises(ValueError, match=r'built for 4 levels .*got 3 feature maps'):
        neck(feats[:3])
    bad = feats[:2] + [torch.randn(1, 48, 4, 4)] + feats[3:]
    with pytest.raises(ValueError, match=r'level 2 must be \[N, 64, H, W\].*got \[1, 48, 4, 4\]'):
        neck(bad)
    with pytest.raises(TypeError, match='tuple of 4 feature maps'):
        neck(feats[3])


def test_mmseg_encoder_decoder_spnet_loss():
    from mmengine.structures import PixelData
    from mmseg.registry import MODELS
    from mmseg.structures import SegDataSample
    from mmseg.utils import register_all_modules

    from mmplug.plugins.strip_pooling import StripPooling  # registers it
    register_all_modules(init_default_scope=False)
    cfg = dict(
        type='EncoderDecoder',
        backbone=dict(
            type='ResNetV1c', depth=50, stem_channels=8, base_channels=8,
            strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4),
            plugins=[dict(cfg=dict(type='StripPooling', identity_init=True),
                          stages=(False, False, False, True), position='after_conv2')]),
        neck=dict(type='MPM', in_channels=[32, 64, 128, 256], levels=[3], num_blocks=2),
        decode_head=dict(type='FCNHead', in_channels=256, in_index=3, channels=16, num_convs=1,
                         concat_input=False, num_classes=3,
                         loss_decode=dict(type='CrossEntropyLoss', loss_weight=1.0)),
        train_cfg=dict(), test_cfg=dict(mode='whole'))
    with DefaultScope.overwrite_default_scope('mmseg'):
        model = MODELS.build(cfg)
    model.init_weights()
    assert sum(isinstance(m, StripPooling) for m in model.modules()) == 3
    assert sum(isinstance(m, MPMBlock) for m in model.modules()) == 2
    calls = []
    for m in model.neck.blocks['3']:
        m.register_forward_hook(lambda mod, i, o: calls.append(tuple(o.shape)))
    inputs = torch.randn(2, 3, 64, 64)
    samples = []
    for _ in range(2):
        sample = SegDataSample(metainfo=dict(img_shape=(64, 64), pad_shape=(64, 64)))
        sample.gt_sem_seg = PixelData(data=torch.randint(0, 3, (1, 64, 64)))
        samples.append(sample)
    losses = model.loss(inputs, samples)
    loss = losses['decode.loss_ce']
    assert torch.isfinite(loss) and loss > 0
    assert calls == [(2, 256, 8, 8)] * 2  # c5 8x8: smaller than the 20x20 / 12x12 bins
    loss.backward()
    block = model.neck.blocks['3'][0]
    assert block.long_range.conv_h.conv.weight.grad.abs().sum() > 0
    assert block.short_range.pooled[0][1].conv.weight.grad.abs().sum() > 0


def test_docstring_examples():
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    tests = [t for t in finder.find(mixed_pooling) if t.examples]
    assert len(tests) == 2  # MPMBlock's and MPM's
    for test in tests:
        runner.run(test)
    assert runner.summarize(verbose=False).failed == 0
