"""tools/train.py and tools/test.py end to end on the demo config (tiny overrides)."""
import os
import os.path as osp
import pickle
import subprocess
import sys

import pytest
from mmengine.config import Config

from _harness import ROOT

DEMO = osp.join(ROOT, 'configs/sge/faster-rcnn_r50-sge-c3-c5_fpn_demo_coco-shapes.py')
REAL = osp.join(ROOT, 'configs/sge/faster-rcnn_r50-sge-c3-c5_fpn_1x_coco.py')


def _tool(name, *args, cwd=ROOT):
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, osp.join(ROOT, 'tools', name), *args], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=900)
    return proc.returncode, proc.stdout + proc.stderr


def _tiny(data_root, epochs):
    """Overrides that keep the demo config but make it run in seconds."""
    return ['--cfg-options', f'train_cfg.max_epochs={epochs}', 'train_cfg.val_interval=1',
            f'train_dataloader.dataset.data_root={data_root}', 'train_dataloader.dataset.indices=4',
            'train_dataloader.batch_size=2', 'train_dataloader.num_workers=0',
            'train_dataloader.persistent_workers=False',
            f'val_dataloader.dataset.data_root={data_root}', 'val_dataloader.dataset.indices=4',
            'val_dataloader.num_workers=0', 'val_dataloader.persistent_workers=False',
            f'test_dataloader.dataset.data_root={data_root}', 'test_dataloader.dataset.indices=4',
            'test_dataloader.num_workers=0', 'test_dataloader.persistent_workers=False',
            f'val_evaluator.ann_file={data_root}annotations/instances_val.json',
            f'test_evaluator.ann_file={data_root}annotations/instances_val.json',
            'default_hooks.checkpoint.interval=1', 'default_hooks.checkpoint.max_keep_ckpts=3']


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """Train 1 epoch of the demo config: the embedded set is generated on first use."""
    tmp = tmp_path_factory.mktemp('tools')
    data_root = f'{tmp}/coco_shapes/'
    work_dir = str(tmp / 'work')
    code, out = _tool('train.py', DEMO, '--work-dir', work_dir, *_tiny(data_root, 1))
    assert code == 0, out[-3000:]
    return data_root, work_dir, out


@pytest.mark.slow
def test_train_generates_data_and_evaluates(trained):
    data_root, work_dir, out = trained
    assert 'generating the embedded demo set' in out
    assert osp.isfile(osp.join(data_root, 'annotations/instances_val.json'))
    assert 'coco/bbox_mAP_50' in out
    assert osp.isfile(osp.join(work_dir, 'epoch_1.pth'))


@pytest.mark.slow
def test_resume_continues_from_last_checkpoint(trained):
    data_root, work_dir, _ = trained
    code, out = _tool('train.py', DEMO, '--work-dir', work_dir, '--resume', *_tiny(data_root, 2))
    assert code == 0, out[-3000:]
    assert 'resumed epoch: 1' in out and 'generating' not in out
    assert osp.isfile(osp.join(work_dir, 'epoch_2.pth'))


@pytest.mark.slow
def test_test_tool_prints_metrics_dumps_and_draws(trained, tmp_path):
    data_root, work_dir, _ = trained
    out_pkl = str(tmp_path / 'res.pkl')
    code, out = _tool('test.py', DEMO, osp.join(work_dir, 'epoch_1.pth'), '--work-dir',
                      str(tmp_path), '--out', out_pkl, '--show-dir', 'vis', *_tiny(data_root, 1))
    assert code == 0, out[-3000:]
    assert 'coco/bbox_mAP' in out
    with open(out_pkl, 'rb') as f:
        results = pickle.load(f)
    assert len(results) == 4 and 'pred_instances' in results[0]
    drawn = [f for _, _, files in os.walk(tmp_path) for f in files if f.endswith('.png')]
    assert len(drawn) == 4


def test_real_config_without_coco_says_where_and_how_to_demo(tmp_path):
    code, out = _tool('train.py', REAL, '--work-dir', str(tmp_path / 'w'), cwd=str(tmp_path))
    assert code != 0
    assert str(tmp_path / 'data/coco/annotations/instances_train2017.json') in out
    assert 'make demo' in out


def test_real_config_builds_with_sge_in_c3_c5():
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    from mmplug.plugins import SGE
    register_all_modules()
    cfg = Config.fromfile(REAL)
    assert cfg.custom_imports == dict(imports=['mmplug'], allow_failed_imports=False)
    assert cfg.model.backbone.init_cfg.checkpoint == 'torchvision://resnet50'
    model = MODELS.build(cfg.model)  # no init_weights(): that would download ResNet-50
    names = [n for n, m in model.named_modules() if isinstance(m, SGE)]
    assert len(names) == 4 + 6 + 3 and not any(n.startswith('backbone.layer1.') for n in names)


_MMSEG_CONFIG = '''
_base_ = 'mmseg::deeplabv3/deeplabv3_r50-d8_4xb2-40k_cityscapes-512x1024.py'
custom_imports = dict(imports=['mmplug'], allow_failed_imports=False)
norm_cfg = dict(type='BN', requires_grad=True)  # SyncBN needs a process group
crop_size = (64, 128)
model = dict(
    pretrained=None,
    data_preprocessor=dict(size=crop_size),
    backbone=dict(norm_cfg=norm_cfg, plugins=[
        dict(cfg=dict(type='SGE', groups=32), stages=(False, False, True, True),
             position='after_conv3')]),
    decode_head=dict(norm_cfg=norm_cfg, channels=32),
    auxiliary_head=dict(norm_cfg=norm_cfg, channels=16))
data_root = '{data_root}'
train_pipeline = [
    dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'),
    dict(type='RandomCrop', crop_size=crop_size), dict(type='PackSegInputs')]
test_pipeline = [
    dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'), dict(type='PackSegInputs')]
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                        dataset=dict(data_root=data_root, pipeline=train_pipeline, indices=4))
val_dataloader = dict(batch_size=1, num_workers=0, persistent_workers=False,
                      dataset=dict(data_root=data_root, pipeline=test_pipeline, indices=2))
test_dataloader = val_dataloader
train_cfg = dict(type='IterBasedTrainLoop', max_iters=2, val_interval=2)
default_hooks = dict(checkpoint=dict(by_epoch=False, interval=2), logger=dict(interval=1))
'''


@pytest.mark.slow
def test_tools_on_an_mmseg_config(tmp_path):
    """The same tools run an mmseg config (default_scope='mmseg') with an mmplug plugin."""
    cfg_file = tmp_path / 'deeplabv3_r50-sge_tiny_cityscapes-shapes.py'
    cfg_file.write_text(_MMSEG_CONFIG.format(data_root=f'{tmp_path}/cityscapes_shapes/'))
    work_dir = str(tmp_path / 'work')
    code, out = _tool('train.py', str(cfg_file), '--work-dir', work_dir)
    assert code == 0, out[-3000:]
    assert 'generating the embedded demo set' in out and 'mIoU' in out
    out_pkl = str(tmp_path / 'seg.pkl')
    code, out = _tool('test.py', str(cfg_file), osp.join(work_dir, 'iter_2.pth'), '--work-dir',
                      work_dir, '--out', out_pkl, '--show-dir', str(tmp_path / 'vis'))
    assert code == 0, out[-3000:]
    assert 'mIoU' in out
    with open(out_pkl, 'rb') as f:
        assert len(pickle.load(f)) == 2
    drawn = [f for _, _, files in os.walk(tmp_path / 'vis') for f in files if f.endswith('.png')]
    assert len(drawn) == 2


def _upstream_test_tool(package):
    """Path of ``tools/test.py`` shipped inside the installed mmdet / mmseg package."""
    mod = __import__(package)
    path = osp.join(osp.dirname(mod.__file__), '.mim', 'tools', 'test.py')
    assert osp.isfile(path), path
    return path


def _run_script(path, *args, cwd=ROOT):
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, path, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=900)
    return proc.returncode, proc.stdout + proc.stderr


@pytest.mark.slow
def test_mmdet_own_test_script_evaluates_a_demo_checkpoint(trained, tmp_path):
    """mmdet's tools/test.py, unchanged, on our demo config and checkpoint (custom_imports)."""
    data_root, work_dir, _ = trained
    code, out = _run_script(_upstream_test_tool('mmdet'), DEMO, osp.join(work_dir, 'epoch_1.pth'),
                            '--work-dir', str(tmp_path), *_tiny(data_root, 1), cwd=str(tmp_path))
    assert code == 0, out[-3000:]
    assert 'coco/bbox_mAP' in out and 'coco/bbox_mAP_50' in out


SEG_DEMO = osp.join(ROOT, 'configs/sge/deeplabv3_r50-d8-sge_demo_cityscapes-shapes.py')


def _tiny_seg(data_root, iters):
    return ['--cfg-options', f'train_cfg.max_iters={iters}', f'train_cfg.val_interval={iters}',
            f'default_hooks.checkpoint.interval={iters}', 'default_hooks.logger.interval=1',
            'param_scheduler.0.end=1', 'param_scheduler.1.begin=1',
            f'param_scheduler.1.end={iters}',
            'model.data_preprocessor.size=(64,128)',
            f'train_dataloader.dataset.data_root={data_root}', 'train_dataloader.dataset.indices=4',
            'train_dataloader.batch_size=2', 'train_dataloader.num_workers=0',
            'train_dataloader.persistent_workers=False',
            f'val_dataloader.dataset.data_root={data_root}', 'val_dataloader.dataset.indices=2',
            'val_dataloader.num_workers=0', 'val_dataloader.persistent_workers=False',
            f'test_dataloader.dataset.data_root={data_root}', 'test_dataloader.dataset.indices=2',
            'test_dataloader.num_workers=0', 'test_dataloader.persistent_workers=False']


@pytest.mark.slow
def test_mmseg_own_test_script_evaluates_a_demo_checkpoint(tmp_path):
    """Our train.py on the DeepLabV3 + SGE demo twin, then mmseg's tools/test.py, unchanged."""
    data_root = f'{tmp_path}/cityscapes_shapes/'
    work_dir = str(tmp_path / 'work')
    code, out = _tool('train.py', SEG_DEMO, '--work-dir', work_dir, *_tiny_seg(data_root, 2))
    assert code == 0, out[-3000:]
    assert 'generating the embedded demo set' in out
    code, out = _run_script(_upstream_test_tool('mmseg'), SEG_DEMO,
                            osp.join(work_dir, 'iter_2.pth'), '--work-dir', str(tmp_path / 'eval'),
                            *_tiny_seg(data_root, 2), cwd=str(tmp_path))
    assert code == 0, out[-3000:]
    assert 'mIoU' in out and 'aAcc' in out
