"""PluggedBackbone: plugins after named submodules of real mmdet/mmseg backbones."""
import copy
import io
import re

import pytest
import torch
from mmengine.model import BaseModule
from mmengine.registry import DefaultScope
from torch import nn

from mmplug.backbones.plugged_backbone import PluggedBackbone
from mmplug.plugins import SGE
from mmplug.registry import MODELS

from _harness import HOST_INIT_CFG, randomize_

TEST_BN_PLUGIN = '_PluggedBackboneTestBNPlugin'
TEST_SHRINK_PLUGIN = '_PluggedBackboneTestShrinkPlugin'


@MODELS.register_module(name=TEST_BN_PLUGIN, force=True)
class _BNPlugin(BaseModule):
    """Test-only plugin with a BatchNorm, to watch train/eval and freezing."""

    _abbr_ = 'bn_plugin'

    def __init__(self, in_channels):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, in_channels, 1)
        self.bn = nn.BatchNorm2d(in_channels)

    def forward(self, x):
        return x + self.bn(self.conv(x))


@MODELS.register_module(name=TEST_SHRINK_PLUGIN, force=True)
class _ShrinkPlugin(BaseModule):
    """Test-only plugin that wrongly halves the channels."""

    _abbr_ = 'shrink'

    def __init__(self, in_channels):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, in_channels // 2, 1)

    def forward(self, x):
        return self.conv(x)


HRNET_EXTRA = dict(
    stage1=dict(num_modules=1, num_branches=1, block='BOTTLENECK', num_blocks=(1, ),
                num_channels=(8, )),
    stage2=dict(num_modules=1, num_branches=2, block='BASIC', num_blocks=(1, 1),
                num_channels=(8, 16)),
    stage3=dict(num_modules=1, num_branches=3, block='BASIC', num_blocks=(1, 1, 1),
                num_channels=(8, 16, 32)),
    stage4=dict(num_modules=1, num_branches=4, block='BASIC', num_blocks=(1, 1, 1, 1),
                num_channels=(8, 16, 32, 64)))

SGE8 = dict(type='SGE', groups=8)


@pytest.fixture(scope='module', autouse=True)
def _registered():
    from mmdet.utils import register_all_modules as mmdet_register
    from mmseg.utils import register_all_modules as mmseg_register
    mmdet_register(init_default_scope=False)
    mmseg_register(init_default_scope=False)


def _build(scope='mmdet', **cfg):
    from mmdet.registry import MODELS as MMDET_MODELS
    with DefaultScope.overwrite_default_scope(scope):
        return MMDET_MODELS.build(dict(type='PluggedBackbone', **cfg))


def _plain(scope, cfg):
    with DefaultScope.overwrite_default_scope(scope):
        return MODELS.build(cfg)


def _count_calls(model):
    calls = []
    for module in model.plugins.modules():
        if isinstance(module, (SGE, _BNPlugin)):
            module.register_forward_hook(lambda *args: calls.append(1))
    return calls


def _check_against_plain(scope, backbone_cfg, after, groups=8, size=64):
    """Plugged and plain backbone: same output shapes, same inner keys; plugins all run."""
    torch.manual_seed(0)
    plain = _plain(scope, backbone_cfg)
    model = _build(scope, backbone=backbone_cfg,
                   plugins=[dict(cfg=dict(type='SGE', groups=groups), after=after)])
    plain.eval()
    model.eval()
    x = torch.randn(1, 3, size, size)
    calls = _count_calls(model)
    outs, plain_outs = model(x), plain(x)
    assert type(outs) is type(plain_outs) and len(outs) == len(plain_outs)  # HRNet: a list
    assert [o.shape for o in outs] == [o.shape for o in plain_outs]
    assert len(calls) == len(model.plugin_sites) > 0
    assert list(model.backbone.state_dict()) == list(plain.state_dict())
    return model


# --- arguments and errors ------------------------------------------------------------------

RESNET18 = dict(type='ResNet', depth=18, out_indices=(0, 1, 2, 3))


@pytest.mark.parametrize('kwargs, words', [
    (dict(backbone='ResNet'), ['backbone', "'ResNet'"]),
    (dict(plugins=[]), ['plugins', '[]']),
    (dict(plugins=[dict(cfg=SGE8)]), ['after', "'SGE'"]),
    (dict(plugins=[dict(cfg=SGE8, after='layer1.0', stages=(True, ))]), ['stages', 'by name']),
    (dict(plugins=[dict(cfg=dict(groups=8), after='layer1.0')]), ['type', "'groups'"]),
    (dict(plugins=[dict(cfg=dict(SGE8, in_channels=64), after='layer1.0')]),
     ['in_channels', 'measured']),
    (dict(plugins=[dict(cfg=SGE8, after=[])]), ['after', '[]']),
    (dict(plugins=[dict(cfg=SGE8, after=['layer1.0', 3])]), ['after', '3']),
    (dict(freeze_plugins='yes'), ['freeze_plugins', "'yes'"]),
    (dict(plugin_norm_eval=1), ['plugin_norm_eval', '1']),
    (dict(probe_shape=(64, 64)), ['probe_shape', '(64, 64)']),
    (dict(probe_shape=(3, 0, 64)), ['probe_shape', '(3, 0, 64)']),
])
def test_invalid_arguments(kwargs, words):
    cfg = dict(backbone=RESNET18, plugins=[dict(cfg=SGE8, after='layer1.0')])
    cfg.update(kwargs)
    with pytest.raises(ValueError) as err:
        _build(**cfg)
    for word in words:
        assert word in str(err.value)


@pytest.mark.parametrize('pattern, close', [('layer5.*', 'layer4.0'), ('layr2.1', 'layer2.1'),
                                            ('layer2.*.conv3', 'layer2.0.conv2')])
def test_pattern_matching_nothing_names_it_and_close_names(pattern, close):
    with pytest.raises(ValueError) as err:
        _build(backbone=RESNET18,
               plugins=[dict(cfg=SGE8, after=['layer2.*', pattern])])
    message = str(err.value)
    assert repr(pattern) in message and 'matches no submodule' in message
    assert repr(close) in message
    assert "'layer4'" in message  # the top-level names are listed


def test_star_stays_within_one_component():
    model = _build(backbone=RESNET18, plugins=[dict(cfg=SGE8, after='layer2.*')])
    assert model.plugin_sites == ('layer2.0', 'layer2.1')  # not layer2.0.conv1 etc.


def test_list_output_rejected_with_hint():
    with pytest.raises(ValueError) as err:
        _build(backbone=dict(type='HRNet', extra=HRNET_EXTRA),
               plugins=[dict(cfg=SGE8, after='stage2.0')])
    message = str(err.value)
    assert "'stage2.0'" in message and 'HRModule' in message and 'a list of 2 items' in message
    assert '[N, C, H, W]' in message and "'stage2.0.branches.*'" in message


def test_non_4d_output_rejected():
    backbone = nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.raises(ValueError, match=r"'2' \(Flatten\) returns a 2-D tensor of shape"):
        PluggedBackbone(backbone, plugins=[dict(cfg=SGE8, after='*')])


def test_module_called_twice_rejected():
    # BasicBlock calls its one ReLU twice.
    with pytest.raises(ValueError, match=r"'layer1.0.relu' \(ReLU\) is called 2 times"):
        _build(backbone=RESNET18, plugins=[dict(cfg=SGE8, after='layer1.0.relu')])


def test_module_never_called_rejected():
    class _Backbone(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3)
            self.unused = nn.Conv2d(8, 8, 1)

        def forward(self, x):
            return self.conv(x)

    backbone = _Backbone()
    with pytest.raises(ValueError, match="'unused' .* is not called"):
        PluggedBackbone(backbone, plugins=[dict(cfg=SGE8, after='unused')])


def test_shape_changing_plugin_rejected():
    with pytest.raises(ValueError, match="after 'layer1.0' turn .* keep the shape"):
        _build(backbone=RESNET18,
               plugins=[dict(cfg=dict(type=TEST_SHRINK_PLUGIN), after='layer1.0')])


def test_unregistered_types_named():
    with pytest.raises(ValueError, match="plugin type 'NoSuchPlugin' is not registered"):
        _build(backbone=RESNET18, plugins=[dict(cfg=dict(type='NoSuchPlugin'), after='layer1.0')])
    # mmengine's root scope has no ResNet: the message says how to pick a scope.
    with pytest.raises(ValueError, match="'ResNet' is not registered in scope 'mmengine'.*mmdet"):
        _build('mmengine', backbone=RESNET18, plugins=[dict(cfg=SGE8, after='layer1.0')])


def test_probe_failure_says_probe_shape():
    with pytest.raises(RuntimeError, match=r'dry forward of ResNet on a \(1, 5, 32, 32\).*'
                                           'probe_shape'):
        _build(backbone=RESNET18, plugins=[dict(cfg=SGE8, after='layer1.0')],
               probe_shape=(5, 32, 32))


def test_same_plugin_twice_at_one_site_needs_postfix():
    with pytest.raises(ValueError, match="two plugins named 'sge' after 'layer2.0'.*postfix"):
        _build(backbone=RESNET18, plugins=[dict(cfg=SGE8, after='layer2.*'),
                                           dict(cfg=SGE8, after='layer2.0')])


# --- real backbones ------------------------------------------------------------------------


def test_mmdet_resnet18_sge_after_every_block_of_stages_2_to_4():
    model = _check_against_plain('mmdet', RESNET18, 'layer[234].*')
    assert model.plugin_sites == ('layer2.0', 'layer2.1', 'layer3.0', 'layer3.1', 'layer4.0',
                                  'layer4.1')
    assert [m.in_channels for m in model.plugins.modules() if isinstance(m, SGE)] == \
        [128, 128, 256, 256, 512, 512]
    assert type(model.backbone).__module__ == 'mmdet.models.backbones.resnet'


def test_mmdet_darknet53_sge_after_residual_blocks():
    model = _check_against_plain('mmdet', dict(type='Darknet', depth=53),
                                 ['conv_res_block3.res[0-3]', 'conv_res_block5.res3'], size=32)
    assert model.plugin_sites == ('conv_res_block3.res0', 'conv_res_block3.res1',
                                  'conv_res_block3.res2', 'conv_res_block3.res3',
                                  'conv_res_block5.res3')
    assert [m.in_channels for m in model.plugins.modules() if isinstance(m, SGE)] == \
        [256] * 4 + [1024]


def test_mmdet_cspdarknet_sge_after_csp_layers_and_bottlenecks():
    cfg = dict(type='CSPDarknet', deepen_factor=0.33, widen_factor=0.25)
    model = _check_against_plain('mmdet', cfg, ['stage[123].1', 'stage4.2', 'stage2.1.blocks.*'])
    assert model.plugin_sites == ('stage1.1', 'stage2.1', 'stage2.1.blocks.0',
                                  'stage2.1.blocks.1', 'stage2.1.blocks.2', 'stage3.1', 'stage4.2')
    assert [m.in_channels for m in model.plugins.modules() if isinstance(m, SGE)] == \
        [32, 64, 32, 32, 32, 128, 256]  # the bottlenecks run at half width


@pytest.mark.parametrize('scope', ['mmdet', 'mmseg'])
def test_hrnet_sge_after_branches(scope):
    model = _check_against_plain(scope, dict(type='HRNet', extra=HRNET_EXTRA),
                                 ['stage[234].*.branches.*', 'layer1.0'])
    assert len(model.plugin_sites) == 1 + 2 + 3 + 4
    assert [m.in_channels for m in model.plugins.modules() if isinstance(m, SGE)] == \
        [32, 8, 16, 8, 16, 32, 8, 16, 32, 64]
    assert type(model.backbone).__module__ == f'{scope}.models.backbones.hrnet'


@pytest.mark.parametrize('scope', ['mmdet', 'mmseg'])
def test_registry_build_from_downstream_scope(scope):
    from mmdet.registry import MODELS as MMDET_MODELS
    from mmseg.registry import MODELS as MMSEG_MODELS
    registry = dict(mmdet=MMDET_MODELS, mmseg=MMSEG_MODELS)[scope]
    with DefaultScope.overwrite_default_scope(scope):
        model = registry.build(dict(type='PluggedBackbone', backbone=dict(type='ResNet', depth=18),
                                    plugins=[dict(cfg=SGE8, after=['layer2.*', 'layer3.1'])]))
    assert isinstance(model, PluggedBackbone)
    assert type(model.backbone).__module__ == f'{scope}.models.backbones.resnet'
    assert model.plugin_sites == ('layer2.0', 'layer2.1', 'layer3.1')


def test_scoped_backbone_type_and_built_module():
    model = _build('mmseg', backbone=dict(type='mmdet.Darknet', depth=53, out_indices=(5, )),
                   plugins=[dict(cfg=SGE8, after='conv_res_block1.res0')], probe_shape=(3, 32, 32))
    assert type(model.backbone).__name__ == 'Darknet'
    backbone = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3))
    model = PluggedBackbone(backbone, plugins=[dict(cfg=SGE8, after=['0', '2'])])
    assert model.backbone is backbone and model(torch.randn(2, 3, 9, 7)).shape == (2, 16, 7, 5)


# --- checkpoints -------------------------------------------------------------------------


def test_plain_checkpoint_loads_with_only_plugin_keys_missing():
    torch.manual_seed(1)
    plain = _plain('mmdet', RESNET18)
    torch.manual_seed(2)  # different weights, until the plain ones are loaded
    model = _build(backbone=RESNET18, plugins=[dict(cfg=SGE8, after='layer[234].*')])
    plugin_keys = [k for k in model.state_dict() if k.startswith('plugins.')]
    assert len(plugin_keys) == 12
    # The inner backbone takes the plain state dict as it is ...
    assert list(model.backbone.state_dict()) == list(plain.state_dict())
    result = model.backbone.load_state_dict(plain.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    # ... and the wrapper with the 'backbone.' prefix added: only the plugins are missing.
    state = {f'backbone.{k}': v for k, v in plain.state_dict().items()}
    result = model.load_state_dict(state, strict=False)
    assert sorted(result.missing_keys) == sorted(plugin_keys)
    assert not result.unexpected_keys
    x = torch.randn(1, 3, 32, 32)
    plain.eval()
    model.eval()
    with torch.no_grad():
        for module in model.plugins.modules():
            if isinstance(module, SGE):  # a gate of exactly 1: the plain backbone's function
                module.weight.zero_()
                module.bias.fill_(1e4)
        for ours, ref in zip(model(x), plain(x)):
            torch.testing.assert_close(ours, ref)


def test_inner_pretrained_init_cfg_takes_a_detector_checkpoint(tmp_path):
    torch.manual_seed(3)
    plain = _plain('mmdet', RESNET18)
    path = str(tmp_path / 'detector.pth')
    torch.save({'state_dict': {f'backbone.{k}': v for k, v in plain.state_dict().items()}}, path)
    inner = dict(RESNET18, init_cfg=dict(type='Pretrained', checkpoint=path, prefix='backbone.'))
    model = _build(backbone=inner, plugins=[dict(cfg=SGE8, after='layer[234].*')])
    randomize_(model.plugins)
    model.init_weights()
    for key, value in plain.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[key], value), key
    assert all(torch.all(m.bias == 1) for m in model.plugins.modules() if isinstance(m, SGE))


# --- freezing and norm_eval ----------------------------------------------------------------


def _bn_plugged(**kwargs):
    backbone = dict(RESNET18, frozen_stages=2, norm_eval=True)
    return _build(backbone=backbone, plugins=[dict(cfg=dict(type=TEST_BN_PLUGIN),
                                                   after=['layer1.*', 'layer3.0'])], **kwargs)


def _plugin_params(model, site):
    return list(model.plugins[site].parameters())


def _plugin_bns(model, site):
    return [m for m in model.plugins[site].modules() if isinstance(m, nn.BatchNorm2d)]


def test_plugins_after_frozen_stages_train_by_default():
    model = _bn_plugged()
    model.train()
    inner = model.backbone
    assert not any(p.requires_grad for p in inner.layer1.parameters())  # frozen_stages=2
    assert not inner.layer2.training and all(p.requires_grad for p in inner.layer3.parameters())
    assert not any(m.training for m in inner.modules() if isinstance(m, nn.BatchNorm2d))
    for site in ('layer1_0', 'layer1_1', 'layer3_0'):
        assert all(p.requires_grad for p in _plugin_params(model, site))
        assert all(bn.training for bn in _plugin_bns(model, site))
    # Gradients reach the plugins after the frozen stage, and its BN statistics move.
    bn = _plugin_bns(model, 'layer1_0')[0]
    before = bn.running_mean.clone()
    sum(o.square().sum() for o in model(torch.randn(2, 3, 32, 32))).backward()
    assert torch.all(_plugin_params(model, 'layer1_0')[0].grad != 0)
    assert not torch.equal(bn.running_mean, before)
    assert all(p.grad is None for p in inner.layer1.parameters())
    model.eval()
    assert not any(m.training for m in model.modules())


def test_freeze_plugins_follow_freezes_only_after_frozen_hosts():
    model = _bn_plugged(freeze_plugins='follow')
    for _ in range(2):  # at construction and after train()
        for site in ('layer1_0', 'layer1_1'):
            assert not any(p.requires_grad for p in _plugin_params(model, site))
            assert not any(bn.training for bn in _plugin_bns(model, site))
        assert all(p.requires_grad for p in _plugin_params(model, 'layer3_0'))
        assert all(bn.training for bn in _plugin_bns(model, 'layer3_0'))
        model.train()


def test_freeze_plugins_true_and_plugin_norm_eval():
    model = _bn_plugged(freeze_plugins=True)
    model.train()
    assert not any(p.requires_grad for p in model.plugins.parameters())
    assert not any(m.training for site in model.plugins.values() for m in site.modules())
    model = _bn_plugged(plugin_norm_eval=True)
    model.train()
    assert all(p.requires_grad for p in model.plugins.parameters())
    assert not any(bn.training for bn in _plugin_bns(model, 'layer3_0'))
    assert model.plugins['layer3_0'].bn_plugin.conv.training  # only the norms


def test_train_returns_self_and_keeps_the_inner_modes():
    model = _bn_plugged()
    assert model.train() is model and model.eval() is model


# --- init, gradients, hooks ------------------------------------------------------------


def test_init_weights_inner_init_cfg_and_plugin_init():
    model = _build(backbone=dict(RESNET18, init_cfg=HOST_INIT_CFG),
                   plugins=[dict(cfg=dict(type='SGE', groups=16), after='layer[234].*')],
                   init_cfg=HOST_INIT_CFG)
    sges = [m for m in model.modules() if isinstance(m, SGE)]
    assert len(sges) == 6
    for m in sges:
        randomize_(m)
    model.init_weights()
    for m in sges:
        assert torch.equal(m.weight, torch.zeros_like(m.weight))
        assert torch.equal(m.bias, torch.ones_like(m.bias))
    assert torch.all(model.backbone.bn1.weight == 0.5)  # the inner init_cfg did run


def test_gradients_reach_every_plugin_parameter():
    model = _build(backbone=RESNET18, plugins=[
        dict(cfg=SGE8, after='layer[234].*'),
        dict(cfg=dict(type=TEST_BN_PLUGIN), after=['bn1', 'layer4.1'])])
    randomize_(model.plugins, seed=2)
    model.train()
    x = torch.randn(2, 3, 64, 64, requires_grad=True)  # layer4 at 2x2: SGE's gamma acts
    sum(o.square().sum() for o in model(x)).backward()
    named = list(model.plugins.named_parameters())
    assert len(named) == 12 + 2 * 4
    for name, p in named:
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_plugins_at_one_site_run_in_listed_order():
    model = _build(backbone=RESNET18, plugins=[
        dict(cfg=dict(type='SGE', groups=8, postfix='_a'), after='layer2.1'),
        dict(cfg=dict(type='SGE', groups=16, postfix='_b'), after=['layer2.1', 'layer3.0'])])
    site = model.plugins['layer2_1']
    assert list(site._modules) == ['sge_a', 'sge_b']
    calls = []
    site.sge_a.register_forward_hook(lambda *a: calls.append('a'))
    site.sge_b.register_forward_hook(lambda *a: calls.append('b'))
    model.eval()
    model(torch.randn(1, 3, 32, 32))
    assert calls == ['a', 'b']


def test_deepcopy_runs_the_copys_plugins():
    # EMA hooks deep-copy the model: the copy must not call the original's plugins.
    model = _build(backbone=RESNET18, plugins=[dict(cfg=SGE8, after='layer[23].*')])
    ema = copy.deepcopy(model)
    original_calls, copy_calls = _count_calls(model), _count_calls(ema)
    ema.eval()
    ema(torch.randn(1, 3, 32, 32))
    assert len(copy_calls) == 4 and not original_calls


def test_replaced_submodule_is_hooked_again():
    # e.g. a selected norm layer converted to SyncBN after construction.
    model = _build(backbone=RESNET18, plugins=[dict(cfg=SGE8, after='bn1')])
    model.backbone.bn1 = copy.deepcopy(model.backbone.bn1)
    model.backbone.bn1._forward_hooks.clear()
    calls = _count_calls(model)
    model.eval()
    model(torch.randn(1, 3, 32, 32))
    model(torch.randn(1, 3, 32, 32))
    assert len(calls) == 2  # once per forward, not lost and not doubled


def test_probe_leaves_modes_and_running_stats_alone():
    from mmdet.registry import MODELS as MMDET_MODELS
    with DefaultScope.overwrite_default_scope('mmdet'):
        inner = MMDET_MODELS.build(dict(RESNET18, frozen_stages=1))
    inner.train()
    modes = [m.training for m in inner.modules()]
    stats = copy.deepcopy({k: v for k, v in inner.state_dict().items() if 'running' in k})
    PluggedBackbone(inner, plugins=[dict(cfg=SGE8, after='layer*.*')])
    assert [m.training for m in inner.modules()] == modes
    assert all(torch.equal(inner.state_dict()[k], v) for k, v in stats.items())


def test_pickle_and_export_keep_the_plugins():
    model = _build(backbone=RESNET18, plugins=[dict(cfg=SGE8, after='layer[234].*')])
    randomize_(model.plugins, seed=4)
    model.eval()
    x = torch.randn(1, 3, 64, 64)
    ref = model(x)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    exported = torch.export.export(model, (x, )).module()
    for out in (loaded(x), exported(x)):
        for ours, expected in zip(out, ref):
            torch.testing.assert_close(ours, expected)
    model.plugins.layer4_1.sge.bias.data.fill_(-30.0)  # the exported graph did include them
    assert not torch.allclose(model(x)[3], ref[3])


def test_bf16_autocast_is_finite():
    model = _build(backbone=RESNET18, plugins=[dict(cfg=SGE8, after='layer[234].*')])
    model.eval()
    with torch.autocast(device_type='cpu', dtype=torch.bfloat16):
        outs = model(torch.randn(1, 3, 64, 64) * 100)
    assert all(torch.isfinite(o).all() for o in outs)


# --- inside a detector -------------------------------------------------------------------


def test_as_backbone_of_mmdet_retinanet():
    from mmdet.registry import MODELS as MMDET_MODELS
    from mmengine.hub import get_config
    cfg = get_config('mmdet::retinanet/retinanet_r18_fpn_1x_coco.py').model
    cfg.backbone.init_cfg = None  # no download; only the structure is tested
    plain_cfg = copy.deepcopy(cfg)
    cfg.backbone = dict(type='PluggedBackbone', backbone=cfg.backbone,
                        plugins=[dict(cfg=SGE8, after='layer[234].*')])
    assert cfg.neck.in_channels == [64, 128, 256, 512]
    with DefaultScope.overwrite_default_scope('mmdet'):
        model, plain = MMDET_MODELS.build(cfg), MMDET_MODELS.build(plain_cfg)
    assert isinstance(model.backbone, PluggedBackbone)
    calls = _count_calls(model.backbone)
    model.eval()
    feats = model.extract_feat(torch.randn(1, 3, 64, 64))
    assert [tuple(f.shape) for f in feats] == [(1, 256, 8, 8), (1, 256, 4, 4), (1, 256, 2, 2),
                                               (1, 256, 1, 1), (1, 256, 1, 1)]
    assert len(calls) == 6
    # A plain RetinaNet checkpoint, keys revised as load_checkpoint(revise_keys=...) would.
    state = {re.sub(r'^backbone\.', 'backbone.backbone.', k): v
             for k, v in plain.state_dict().items()}
    result = model.load_state_dict(state, strict=False)
    assert not result.unexpected_keys
    assert result.missing_keys and all(k.startswith('backbone.plugins.')
                                       for k in result.missing_keys)
    assert len(result.missing_keys) == 12
