"""The short plugin form ``plugins=[dict(cfg=dict(type=...))]`` through our tools."""
import pytest
from mmengine.config import Config

import mmplug
from mmplug.engine import fill_plugin_positions

from _harness import build_model_in_scope


def _cfg(plugins):
    return Config(dict(model=dict(type='FasterRCNN', backbone=dict(
        type='ResNet', depth=50, plugins=plugins))))


@pytest.mark.parametrize('name, position', [('SE', 'after_conv3'), ('CBAM', 'after_conv3'),
                                            ('SGE', 'after_conv3'), ('SK', 'after_conv2'),
                                            ('StripPooling', 'after_conv2')])
def test_position_is_the_paper_placement(name, position):
    cfg = _cfg([dict(cfg=dict(type=name))])
    lines = fill_plugin_positions(cfg)
    assert cfg.model.backbone.plugins[0].position == position
    assert lines == [f'model.backbone.plugins[0]: {name} at position={position!r}, its paper '
                     'placement; stages: all (not given)']


def test_short_form_builds_in_mmdet_resnet():
    cfg = _cfg([dict(cfg=dict(type='SGE', groups=8))])
    with pytest.raises(KeyError, match='position'):  # what mmdet says without us
        build_model_in_scope(cfg.model.backbone, 'mmdet')
    fill_plugin_positions(cfg)
    backbone = build_model_in_scope(cfg.model.backbone, 'mmdet')
    sges = [m for m in backbone.modules() if isinstance(m, mmplug.SGE)]
    assert len(sges) == 3 + 4 + 6 + 3  # every bottleneck of every stage
    assert backbone.layer1[0].after_conv3_plugin_names == ['sge']


def test_given_positions_and_plugged_backbone_entries_are_kept():
    cfg = Config(dict(model=dict(backbone=dict(
        type='PluggedBackbone',
        backbone=dict(type='ResNet', depth=50, plugins=[
            dict(cfg=dict(type='SE'), position='after_conv2', stages=(True,) * 4),
            dict(cfg=dict(type='SGE'), stages=(False, True, True, True))]),
        plugins=[dict(cfg=dict(type='SE'), after='layer1')]))))
    lines = fill_plugin_positions(cfg)
    assert lines == ["model.backbone.backbone.plugins[1]: SGE at position='after_conv3', its "
                     'paper placement; stages: given']
    assert cfg.model.backbone.backbone.plugins[0].position == 'after_conv2'
    assert 'position' not in cfg.model.backbone.plugins[0]


@pytest.mark.parametrize('name, words', [('NonLocal', ['after a whole residual block',
                                                       'PluggedBackbone']),
                                         ('STN', ['depends on the task']),
                                         ('CoordConvPlugin', ["conv's input"])])
def test_no_paper_placement_names_the_key(name, words):
    cfg = _cfg([dict(cfg=dict(type='SE'), position='after_conv3'), dict(cfg=dict(type=name))])
    with pytest.raises(ValueError) as err:
        fill_plugin_positions(cfg)
    message = str(err.value)
    assert f'model.backbone.plugins[1]: no position given for {name!r}' in message
    for word in words + ['after_conv1', 'after_conv3']:
        assert word in message
