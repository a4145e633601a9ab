"""Plugins that carry a BatchNorm inside a host with ``norm_eval=True`` (mmdet's detection
default): their BNs take the plugin's own mode, so they normalise and learn their
statistics while the host trains; in ``frozen_stages`` they stay at their init."""
import pytest
import torch
from torch.nn.modules.batchnorm import _BatchNorm

from mmplug import CBAM, SK

from _harness import mmdet_resnet


def _resnet50(plugin, position, **kwargs):
    plugins = [dict(cfg=dict(type=plugin), stages=(False, True, True, True), position=position)]
    model = mmdet_resnet(plugins, norm_eval=True, frozen_stages=1, **kwargs)
    model.init_weights()
    return model


def _io_std(model, plugin_cls, x):
    """``std(out) / std(in)`` of every instance of ``plugin_cls`` in one forward."""
    ratios = []
    hooks = [m.register_forward_hook(
        lambda mod, inp, out: ratios.append((out.std() / inp[0].std()).item()))
        for m in model.modules() if isinstance(m, plugin_cls)]
    model(x)
    for h in hooks:
        h.remove()
    return ratios


def test_sk_keeps_its_scale_and_learns_statistics_under_norm_eval():
    torch.manual_seed(0)
    model = _resnet50('SK', 'after_conv2')
    model.train()  # norm_eval=True: the host's BNs go to eval mode
    assert not model.layer2[0].bn2.training  # the host's BN
    sks = [m for m in model.modules() if isinstance(m, SK)]
    before = [m.paths[0].bn.running_mean.clone() for m in sks]
    x = torch.randn(2, 3, 64, 64)
    ratios = _io_std(model, SK, x)
    # Fresh BNs in eval mode never normalise: SK's output started at 0.10-0.13x its input.
    assert min(ratios) >= 0.5, ratios
    for m, mean in zip(sks, before):
        assert all(bn.training for bn in m.modules() if isinstance(bn, _BatchNorm))
        assert not torch.equal(m.paths[0].bn.running_mean, mean)  # statistics learned
    model.eval()  # evaluation: the plugin's BNs use what they learned
    model(x)
    assert not any(bn.training for m in sks for bn in m.modules() if isinstance(bn, _BatchNorm))


def test_cbam_spatial_bn_learns_statistics_under_norm_eval():
    torch.manual_seed(0)
    # The host's last BN of each block non-zero, as in a pretrained backbone (at mmdet's
    # zero_init_residual the plugin at after_conv3 sees zeros).
    model = _resnet50('CBAM', 'after_conv3', zero_init_residual=False)
    model.train()
    cbams = [m for m in model.modules() if isinstance(m, CBAM)]
    before = [m.spatial_norm.running_mean.clone() for m in cbams]
    model(torch.randn(2, 3, 64, 64))
    for m, mean in zip(cbams, before):
        assert m.spatial_norm.training
        assert not torch.equal(m.spatial_norm.running_mean, mean)


@pytest.mark.parametrize('plugin, position', [('SK', 'after_conv2'), ('CBAM', 'after_conv3')])
def test_plugins_in_a_frozen_stage_stay_frozen(plugin, position):
    plugins = [dict(cfg=dict(type=plugin), stages=(True, False, False, False),
                    position=position)]
    model = mmdet_resnet(plugins, norm_eval=True, frozen_stages=1)
    model.init_weights()
    model.train()
    cls = SK if plugin == 'SK' else CBAM
    frozen = [m for m in model.layer1.modules() if isinstance(m, cls)]
    assert frozen and not any(m.training for m in frozen)
    assert not any(p.requires_grad for m in frozen for p in m.parameters())
    model(torch.randn(2, 3, 32, 32))
    assert not any(bn.training for m in frozen for bn in m.modules()
                   if isinstance(bn, _BatchNorm))


def test_plugged_backbone_plugin_norm_eval_holds_for_our_plugins():
    from mmplug import PluggedBackbone
    model = PluggedBackbone(
        backbone=dict(type='mmdet.ResNet', depth=18, norm_eval=False, frozen_stages=-1),
        plugins=[dict(cfg=dict(type='CBAM'), after='layer2.0')], plugin_norm_eval=True)
    model.train()
    cbam = model.plugins['layer2_0'].cbam
    model(torch.randn(2, 3, 64, 64))
    assert cbam.training and not cbam.spatial_norm.training
