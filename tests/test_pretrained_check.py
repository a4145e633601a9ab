"""A config whose pretrained weights cannot load here fails first, naming the key and the fix."""
import importlib.util

import pytest
from mmengine.config import Config

from mmplug.utils import check_pretrained

REAL = 'configs/sge/faster-rcnn_r50-sge-c3-c5_fpn_1x_coco.py'
DEMO = 'configs/sge/faster-rcnn_r50-sge-c3-c5_fpn_demo_coco-shapes.py'


@pytest.mark.skipif(importlib.util.find_spec('torchvision') is not None,
                    reason='torchvision is installed here')
def test_torchvision_checkpoint_without_torchvision_names_key_and_fixes():
    with pytest.raises(RuntimeError) as err:
        check_pretrained(Config.fromfile(REAL))
    msg = str(err.value)
    assert "model.backbone.init_cfg.checkpoint = 'torchvision://resnet50'" in msg
    assert 'install the torchvision release' in msg
    assert '--cfg-options model.backbone.init_cfg=None' in msg


def test_missing_local_checkpoint_is_named(tmp_path):
    missing = str(tmp_path / 'r50.pth')
    cfg = Config(dict(model=dict(backbone=dict(type='ResNet', init_cfg=dict(
        type='Pretrained', checkpoint=missing)), neck=[dict(type='FPN', pretrained=missing)])))
    with pytest.raises(RuntimeError, match=r"model\.backbone\.init_cfg\.checkpoint = .*no such file"):
        check_pretrained(cfg)
    (tmp_path / 'r50.pth').write_bytes(b'')
    check_pretrained(cfg)  # both references exist now


def test_nested_list_entries_are_found(tmp_path):
    cfg = Config(dict(model=dict(neck=[dict(type='FPN'), dict(type='X', pretrained='nope.pth')])))
    with pytest.raises(RuntimeError, match=r"model\.neck\.1\.pretrained = 'nope\.pth'"):
        check_pretrained(cfg)


def test_demo_twin_and_urls_pass():
    check_pretrained(Config.fromfile(DEMO))  # init_cfg=None: nothing to load
    check_pretrained(Config(dict(model=dict(backbone=dict(init_cfg=dict(
        type='Pretrained', checkpoint='open-mmlab://resnet50_v1c'))))))
