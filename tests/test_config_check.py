"""check_registered_types / check_model_types: unknown types named with their config key
and the closest registered names, before anything is built."""
import os
import os.path as osp
import subprocess
import sys

import pytest
from mmengine.config import Config
from mmengine.registry import MODELS

import mmplug  # noqa: F401  registers the modules
from mmplug.engine.config_check import (
    UnknownTypeError,
    check_model_types,
    check_registered_types,
    close_type_names,
)
from mmplug.necks.asff import ASFF

from _harness import ROOT

SGE_DET = osp.join(ROOT, 'configs/sge/faster-rcnn_r50-sge-c3-c5_fpn_1x_coco.py')
SGE_DEMO = osp.join(ROOT, 'configs/sge/faster-rcnn_r50-sge-c3-c5_fpn_demo_coco-shapes.py')
ASPP_SEG = osp.join(ROOT, 'configs/aspp/deeplabv3_r50-d8-aspp-neck_4xb2-40k_cityscapes-512x1024.py')
VALID = [
    SGE_DET, ASPP_SEG,
    osp.join(ROOT, 'configs/asff/yolov3_d53-asff_demo_coco-shapes.py'),
    osp.join(ROOT, 'configs/plugged_backbone/fcn_hr18-sge_demo_cityscapes-shapes.py'),
]


def _error(cfg):
    with pytest.raises(UnknownTypeError) as info:
        check_registered_types(cfg)
    return info.value


@pytest.mark.parametrize('path', VALID, ids=osp.basename)
def test_valid_configs_pass(path):
    assert check_registered_types(Config.fromfile(path)) is None


def test_misspelled_plugin_type():
    cfg = Config.fromfile(SGE_DET)
    cfg.model.backbone.plugins[0].cfg.type = 'SEE'
    err = _error(cfg)
    msg = str(err)
    assert "model.backbone.plugins[0].cfg.type = 'SEE'" in msg
    assert "Did you mean 'SE' or 'SGE'?" in msg
    assert "scope 'mmdet'" in msg and 'default_scope=' in msg
    assert 'Cannot find None' not in msg
    # mmengine's convention (KeyError) and a wrong config value (ValueError) alike
    assert isinstance(err, KeyError) and isinstance(err, ValueError)
    assert err.entries == [('model.backbone.plugins[0].cfg.type', 'SEE', ['SE', 'SGE'])]


def test_misspelled_neck_type():
    cfg = Config.fromfile(SGE_DET)
    cfg.model.neck.type = 'ASF'
    err = _error(cfg)
    assert "model.neck.type = 'ASF'" in str(err)
    path, name, close = err.entries[0]
    assert (path, name) == ('model.neck.type', 'ASF') and close[0] == 'ASFF'


def test_misspelled_backbone_type():
    cfg = Config.fromfile(SGE_DET)
    cfg.model.backbone.type = 'ResNett'
    err = _error(cfg)
    assert err.entries[0][:2] == ('model.backbone.type', 'ResNett')
    assert err.entries[0][2][0] == 'ResNet'


def test_case_only_difference_comes_first():
    cfg = Config.fromfile(SGE_DET)
    cfg.model.backbone.plugins[0].cfg.type = 'sge'
    cfg.model.train_cfg.rpn.assigner.type = 'MaxIOUAssigner'
    err = _error(cfg)
    entries = {path: close for path, _, close in err.entries}
    assert entries['model.backbone.plugins[0].cfg.type'][0] == 'SGE'
    # assigners live in TASK_UTILS: suggested from there
    assert entries['model.train_cfg.rpn.assigner.type'][0] == 'MaxIoUAssigner'
    assert "the 'task util' registry of scope 'mmdet'" in str(err)


def test_every_unknown_type_in_one_error():
    cfg = Config.fromfile(SGE_DET)
    cfg.model.neck.type = 'FNP'
    cfg.model.backbone.init_cfg.type = 'Pretrain'
    cfg.model.test_cfg.rcnn.nms.type = 'nsm'
    cfg.model.roi_head.bbox_roi_extractor.roi_layer.type = 'RoIAlgn'
    err = _error(cfg)
    got = {path: (name, close) for path, name, close in err.entries}
    assert 'FPN' in got['model.neck.type'][1]
    assert got['model.backbone.init_cfg.type'] == ('Pretrain', ['Pretrained'])
    assert got['model.test_cfg.rcnn.nms.type'][1][0] == 'nms'  # an mmcv.ops function
    assert got['model.roi_head.bbox_roi_extractor.roi_layer.type'][1][0] == 'RoIAlign'
    assert len(str(err).splitlines()) == 1 + 4


def test_mmseg_config():
    cfg = Config.fromfile(ASPP_SEG)
    assert cfg.default_scope == 'mmseg'
    cfg.model.decode_head.type = 'FCNhead'
    cfg.model.neck.type = 'aspp'
    err = _error(cfg)
    got = {path: close for path, _, close in err.entries}
    assert got['model.decode_head.type'][0] == 'FCNHead'
    assert got['model.neck.type'][0] == 'ASPP'
    assert "the 'model' registry of scope 'mmseg'" in str(err)


def test_scope_prefixes_and_classes():
    cfg = Config.fromfile(SGE_DET)
    cfg.model.neck = dict(type=ASFF, in_channels=[256] * 5)  # a class: skipped
    cfg.model.backbone.type = 'mmdet.ResNet'
    check_registered_types(cfg)

    cfg.model.backbone.type = 'mmdett.ResNet'
    cfg.model.rpn_head.type = 'FCNHead'  # mmseg's: needs the prefix in an mmdet config
    cfg.model.roi_head.bbox_head.type = 'mmdet.Shared2FCBoxHead'
    err = _error(cfg)
    got = {path: close for path, _, close in err.entries}
    assert got['model.backbone.type'] == ['mmdet.ResNet']
    assert "package 'mmdett' of 'mmdett.ResNet' is not installed" in str(err)
    assert "['mmseg.FCNHead']" in str(err)
    assert got['model.roi_head.bbox_head.type'][0] == 'mmdet.Shared2FCBBoxHead'


def test_sub_config_scope_is_honoured():
    cfg = Config.fromfile(SGE_DET)
    cfg.model.neck = dict(_scope_='mmseg', type='FCNHead', in_channels=8, channels=8)
    check_registered_types(cfg)


def test_mmplug_type_not_registered_reminds_of_custom_imports(monkeypatch):
    cfg = Config.fromfile(SGE_DET)
    monkeypatch.delitem(MODELS.module_dict, 'SGE')
    msg = str(_error(cfg))
    assert "model.backbone.plugins[0].cfg.type = 'SGE'" in msg
    assert "'SGE' is an mmplug module (mmplug/plugins/sge.py) but is not registered" in msg
    assert "custom_imports=dict(imports=['mmplug']" in msg


def test_missing_custom_imports_is_pointed_out():
    cfg = Config.fromfile(SGE_DET)
    cfg.custom_imports = dict(imports=[])
    cfg.model.backbone.plugins[0].cfg.type = 'SEE'
    assert "need custom_imports=dict(imports=['mmplug']" in str(_error(cfg))
    cfg.custom_imports = dict(imports=['mmplug'])
    assert 'custom_imports' not in str(_error(cfg))


def test_check_model_types_for_own_builds():
    resnet = dict(type='ResNet', depth=50,
                  plugins=[dict(cfg=dict(type='SEE'), stages=(False, True, True, True),
                                position='after_conv3')])
    with pytest.raises(UnknownTypeError, match=r"backbone\.plugins\[0\]\.cfg\.type = 'SEE'.*"
                       r"Did you mean 'SE' or 'SGE'"):
        check_model_types(resnet, scope='mmdet', key='backbone')
    resnet['plugins'][0]['cfg']['type'] = 'SE'
    check_model_types(resnet, scope='mmdet')
    assert close_type_names('asff')[0] == 'ASFF'


def test_plugged_backbone_suggests():
    from mmengine.registry import DefaultScope

    from mmplug.backbones.plugged_backbone import PluggedBackbone
    with DefaultScope.overwrite_default_scope('mmdet'), pytest.raises(
            ValueError, match=r"plugin type 'sge' is not registered .*close names: \['SGE'"):
        PluggedBackbone(backbone=dict(type='ResNet', depth=18),
                        plugins=[dict(cfg=dict(type='sge'), after='layer2.*')])


def test_train_tool_stops_before_building(tmp_path):
    work_dir, data_root = tmp_path / 'work', tmp_path / 'data/'
    proc = subprocess.run(
        [sys.executable, osp.join(ROOT, 'tools/train.py'), SGE_DEMO, '--work-dir', str(work_dir),
         '--cfg-options', 'model.neck.type=ASF', f'train_dataloader.dataset.data_root={data_root}'],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True,
        timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "model.neck.type = 'ASF' is not in the 'model' registry of scope 'mmdet'" in out
    assert "Did you mean 'ASFF'" in out
    # nothing was built: no demo data generated, no work dir made by the runner
    assert not data_root.exists() and not work_dir.exists()
