"""Every config under configs/: loads, builds its model and trains one iteration on the
embedded data (CPU), and every real config has a demo twin that builds the same model.

Real configs are trained on the embedded sets too: the test swaps in the demo twin's data
settings and strips the pretrained-weight references (no downloads). Inputs are kept small
by overrides made here, never by changing the configs.
"""
import copy
import glob
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.dataset import pseudo_collate
from mmengine.model import revert_sync_batchnorm
from mmengine.optim import build_optim_wrapper
from mmengine.registry import DefaultScope

from mmplug.data import generate_cityscapes_shapes, generate_coco_shapes
from mmplug.utils import pretrained_entries
from mmplug.train import unfused_where_unsupported

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIG_DIR = osp.join(ROOT, 'configs')
ALL_CONFIGS = sorted(
    osp.relpath(p, CONFIG_DIR) for p in glob.glob(osp.join(CONFIG_DIR, '**', '*.py'),
                                                   recursive=True)
    if '_base_' not in osp.relpath(p, CONFIG_DIR).split(osp.sep))
DEMO_CONFIGS = [c for c in ALL_CONFIGS if '_demo_' in osp.basename(c)]
REAL_CONFIGS = [c for c in ALL_CONFIGS if c not in DEMO_CONFIGS]
# Small inputs for the one-iteration test: (H, W) of the resized images.
DET_SCALE = (64, 64)
SEG_SIZE = (64, 128)


def _twin_of(real):
    """The demo twin listing ``real`` as its first ``_base_``, else None."""
    folder = osp.dirname(real)
    for demo in DEMO_CONFIGS:
        if osp.dirname(demo) != folder:
            continue
        bases = Config._get_base_files(osp.join(CONFIG_DIR, demo))
        if bases and bases[0] == f'./{osp.basename(real)}':
            return demo
    return None


@pytest.fixture(scope='module')
def data_roots(tmp_path_factory):
    """Small copies of the two embedded sets (the same generators as the demo data)."""
    tmp = tmp_path_factory.mktemp('config_data')
    coco = generate_coco_shapes(str(tmp / 'coco_shapes'), num_train=4, num_val=2)
    city = generate_cityscapes_shapes(str(tmp / 'cityscapes_shapes'), num_train=2, num_val=1)
    return dict(mmdet=coco + '/', mmseg=city + '/')


def _strip_pretrained(node):
    """Drop every pretrained-weight reference (they would download) in place."""
    if isinstance(node, dict):
        if isinstance(node.get('init_cfg'), dict) and node['init_cfg'].get('type') == 'Pretrained':
            node['init_cfg'] = None
        if isinstance(node.get('pretrained'), str):
            node['pretrained'] = None
        for v in node.values():
            _strip_pretrained(v)
    elif isinstance(node, (list, tuple)):
        for v in node:
            _strip_pretrained(v)


def _registries(scope):
    if scope == 'mmdet':
        from mmdet.registry import DATASETS, MODELS
        from mmdet.utils import register_all_modules
    else:
        from mmseg.registry import DATASETS, MODELS
        from mmseg.utils import register_all_modules
    register_all_modules(init_default_scope=False)
    return MODELS, DATASETS


def _small_train_dataset(cfg, data_root):
    """The config's train dataset on ``data_root``, resized small, no augmentation."""
    ds = copy.deepcopy(cfg.train_dataloader.dataset)
    while 'dataset' in ds:  # dataset wrappers
        ds = ds.dataset
    ds.data_root = data_root
    if cfg.default_scope == 'mmdet':
        ds.ann_file = 'annotations/instances_train.json'
        ds.data_prefix = dict(img='train/')
        ds.metainfo = dict(classes=('rectangle', 'ellipse', 'triangle', 'star'))
        ds.pop('filter_cfg', None)
        ds.pipeline = [
            dict(type='LoadImageFromFile'),
            dict(type='LoadAnnotations', with_bbox=True),
            dict(type='Resize', scale=DET_SCALE, keep_ratio=True),
            dict(type='PackDetInputs'),
        ]
    else:
        ds.data_prefix = dict(img_path='leftImg8bit/train', seg_map_path='gtFine/train')
        ds.pipeline = [
            dict(type='LoadImageFromFile'),
            dict(type='LoadAnnotations'),
            dict(type='Resize', scale=SEG_SIZE[::-1], keep_ratio=False),
            dict(type='PackSegInputs'),
        ]
    return ds


def _load(name):
    cfg = Config.fromfile(osp.join(CONFIG_DIR, name))
    assert cfg.custom_imports == dict(imports=['mmplug'], allow_failed_imports=False), name
    assert cfg.default_scope in ('mmdet', 'mmseg'), name
    return cfg


def _build(cfg):
    model_cfg = copy.deepcopy(cfg.model)
    _strip_pretrained(model_cfg)
    if cfg.default_scope == 'mmseg':
        model_cfg.data_preprocessor.size = SEG_SIZE
    models, _ = _registries(cfg.default_scope)
    with DefaultScope.overwrite_default_scope(cfg.default_scope):
        model = models.build(model_cfg)
    return revert_sync_batchnorm(model)


def test_configs_are_found():
    assert 'faster_rcnn_r50_dcn_asff.py' in REAL_CONFIGS
    assert 'faster_rcnn_r50_dcn_asff_demo_coco-shapes.py' in DEMO_CONFIGS
    assert len(REAL_CONFIGS) >= 20 and len(DEMO_CONFIGS) == len(REAL_CONFIGS)


@pytest.mark.parametrize('name', REAL_CONFIGS)
def test_real_config_keeps_pretrained_init_and_has_a_twin(name):
    cfg = _load(name)
    refs = list(pretrained_entries(cfg.model, 'model'))
    if 'ghost' not in name:  # Ghost-ResNet has no ImageNet weights (documented in its config)
        assert refs, f'{name}: no ImageNet-pretrained initialisation'
    assert _twin_of(name) is not None, f'{name} has no demo twin in its folder'


@pytest.mark.parametrize('name', REAL_CONFIGS)
def test_demo_twin_builds_the_same_model(name):
    """Same modules in the same places; only the class count may change parameter shapes."""
    real, twin = _build(_load(name)), _build(_load(_twin_of(name)))
    assert [(n, type(m).__name__) for n, m in real.named_modules()] == \
        [(n, type(m).__name__) for n, m in twin.named_modules()]
    real_shapes = {n: p.shape for n, p in real.named_parameters()}
    twin_shapes = {n: p.shape for n, p in twin.named_parameters()}
    assert real_shapes.keys() == twin_shapes.keys()
    differ = [n for n in real_shapes if real_shapes[n] != twin_shapes[n]]
    # Class-count dependent: box classifier/regressor, YOLO's predictors, seg classifiers.
    assert all(n.split('.')[-2] in ('fc_cls', 'fc_reg', 'conv_seg') or '.convs_pred.' in n
               for n in differ), differ


@pytest.mark.parametrize('name', ALL_CONFIGS)
def test_config_trains_one_iteration_on_embedded_data(name, data_roots):
    cfg = _load(name)
    unfused_where_unsupported(cfg)  # as the train tool does (torch < 2.4 on the CPU)
    scope = cfg.default_scope
    model = _build(cfg)
    model.init_weights()
    model.train()
    _, datasets = _registries(scope)
    with DefaultScope.overwrite_default_scope(scope):
        dataset = datasets.build(_small_train_dataset(cfg, data_roots[scope]))
        batch = pseudo_collate([dataset[i] for i in range(2)])
        optim_wrapper = build_optim_wrapper(model, copy.deepcopy(cfg.optim_wrapper))
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        log_vars = model.train_step(batch, optim_wrapper)
    assert log_vars and all(torch.isfinite(torch.as_tensor(v)).all() for v in log_vars.values()), \
        log_vars
    changed = [n for n, p in model.named_parameters() if not torch.equal(before[n], p)]
    assert changed, f'{name}: no parameter changed after one step'
