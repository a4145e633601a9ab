"""Pretrained weights: loaded without torchvision, and a config whose weights cannot load
here fails first, naming the key and the fix."""
import importlib.util
import os.path as osp

import pytest
from mmengine.config import Config

from mmplug.engine import check_pretrained, pretrained, resolve_torchvision_urls

REAL = 'configs/sge/faster-rcnn_r50-sge-c3-c5_fpn_1x_coco.py'
DEMO = 'configs/sge/faster-rcnn_r50-sge-c3-c5_fpn_demo_coco-shapes.py'
R50_URL = 'https://download.pytorch.org/models/resnet50-0676ba61.pth'
NO_TORCHVISION = pytest.mark.skipif(importlib.util.find_spec('torchvision') is not None,
                                    reason='torchvision is installed here')


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty torch hub cache, and a network that answers ``reachable``."""
    monkeypatch.setenv('TORCH_HOME', str(tmp_path))
    state = dict(reachable=False, asked=[])

    def reachable(url):
        state['asked'].append(url)
        return state['reachable']

    monkeypatch.setattr(pretrained, '_reachable', reachable)
    return tmp_path / 'hub' / 'checkpoints', state


@NO_TORCHVISION
def test_torchvision_checkpoint_becomes_the_same_weights_url():
    cfg = Config.fromfile(REAL)
    changed = resolve_torchvision_urls(cfg)
    assert changed == [('model.backbone.init_cfg.checkpoint', 'torchvision://resnet50', R50_URL)]
    assert cfg.model.backbone.init_cfg.checkpoint == R50_URL


@NO_TORCHVISION
def test_unresolved_torchvision_checkpoint_names_key_and_fixes():
    cfg = Config.fromfile(REAL)
    with pytest.raises(RuntimeError) as err:
        check_pretrained(cfg)
    msg = str(err.value)
    assert "model.backbone.init_cfg.checkpoint = 'torchvision://resnet50'" in msg
    assert 'install the torchvision release' in msg
    assert '--cfg-options model.backbone.init_cfg=None' in msg


def test_offline_download_names_the_file_to_place(hub):
    cache, state = hub
    cfg = Config(dict(model=dict(backbone=dict(init_cfg=dict(type='Pretrained',
                                                              checkpoint=R50_URL)))))
    with pytest.raises(RuntimeError) as err:
        check_pretrained(cfg)
    msg = str(err.value)
    cached = osp.join(cache, 'resnet50-0676ba61.pth')
    assert f'place it at {cached}' in msg and 'model.backbone.init_cfg.checkpoint' in msg
    assert state['asked'] == [R50_URL]
    state['reachable'] = True
    check_pretrained(cfg)  # online: mmengine downloads it
    state['reachable'] = False
    cache.mkdir(parents=True)
    open(cached, 'wb').close()
    check_pretrained(cfg)  # offline, but in the cache: mmengine loads it from there
    assert state['asked'] == [R50_URL, R50_URL]


def test_open_mmlab_checkpoints_resolve_to_their_download(hub):
    _, state = hub
    state['reachable'] = True
    check_pretrained(Config(dict(model=dict(backbone=dict(init_cfg=dict(
        type='Pretrained', checkpoint='open-mmlab://resnet50_v1c'))))))
    assert state['asked'] == [
        'https://download.openmmlab.com/pretrain/third_party/resnet50_v1c-2cccc1ad.pth']


def test_missing_local_checkpoint_is_named(tmp_path):
    missing = str(tmp_path / 'r50.pth')
    cfg = Config(dict(model=dict(backbone=dict(type='ResNet', init_cfg=dict(
        type='Pretrained', checkpoint=missing)), neck=[dict(type='FPN', pretrained=missing)])))
    with pytest.raises(RuntimeError,
                       match=r"model\.backbone\.init_cfg\.checkpoint = .*no such file"):
        check_pretrained(cfg)
    (tmp_path / 'r50.pth').write_bytes(b'')
    check_pretrained(cfg)  # both references exist now


def test_nested_list_entries_are_found(tmp_path):
    cfg = Config(dict(model=dict(neck=[dict(type='FPN'), dict(type='X', pretrained='nope.pth')])))
    with pytest.raises(RuntimeError, match=r"model\.neck\.1\.pretrained = 'nope\.pth'"):
        check_pretrained(cfg)


def test_demo_twin_loads_nothing(hub):
    check_pretrained(Config.fromfile(DEMO))  # init_cfg=None: nothing to load
    assert hub[1]['asked'] == []
