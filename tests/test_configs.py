"""Every config under configs/: loads, builds its model and trains one iteration on the
embedded data (CPU), and every real config has a demo twin (one demo base from
configs/_base_/demo/ plus the real config's delta) that builds the same model: the same
modules with the same settings, but for the demo changes listed in DEMO_DIFFERENCES.

Real configs are trained on the embedded sets too: the test swaps in the demo twin's data
settings and strips the pretrained-weight references (no downloads). Inputs are kept small
by overrides made here, never by changing the configs.
"""
import copy
import glob
import os.path as osp
import re

import pytest
import torch
from mmcv.ops import DeformConv2dPack
from mmengine.config import Config
from mmengine.dataset import pseudo_collate
from mmengine.model import revert_sync_batchnorm
from mmengine.optim import build_optim_wrapper
from mmengine.registry import DefaultScope
from torch import nn

from mmplug.data import generate_cityscapes_shapes, generate_coco_shapes
from mmplug.engine import pretrained_entries
from mmplug.train import unfused_where_unsupported

from _harness import ROOT, build_model_in_scope

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
# mmcv's compiled DeformConv2dPack (mmdet's dcn=dict(type='DCN')) refuses inputs smaller than
# its 3x3 kernel and, unlike mmcv's DeformConv2d, does not pad them; at 64x64, c5 is 2x2.
DET_SCALE_MMCV_DCN = (96, 96)


def _stem(demo):
    """A twin's name up to ``_demo_``: its real config's name up to the schedule and data."""
    return osp.basename(demo).split('_demo_')[0]


def _twin_of(real):
    """The demo twin beside ``real`` whose name starts as ``real``'s does, else None."""
    folder, name = osp.split(real)
    twins = [d for d in DEMO_CONFIGS if osp.dirname(d) == folder and (
        name == _stem(d) + '.py' or name.startswith(_stem(d) + '_'))]
    assert len(twins) <= 1, f'{real}: more than one demo twin: {twins}'
    return twins[0] if twins else None


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


def _small_train_dataset(cfg, data_root, det_scale=DET_SCALE):
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
            dict(type='Resize', scale=det_scale, keep_ratio=True),
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


def _build(cfg, as_configured=False):
    """The config's model, SyncBN as BN. Unless ``as_configured``: no pretrained-weight
    references (nothing is loaded at build time either way) and small segmentation inputs."""
    model_cfg = copy.deepcopy(cfg.model)
    if not as_configured:
        _strip_pretrained(model_cfg)
        if cfg.default_scope == 'mmseg':
            model_cfg.data_preprocessor.size = SEG_SIZE
    return revert_sync_batchnorm(build_model_in_scope(model_cfg, cfg.default_scope))


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


@pytest.mark.parametrize('name', DEMO_CONFIGS)
def test_demo_twin_inherits_one_demo_base_on_its_real_configs_baseline(name):
    """A twin names its real config in its header and inherits one demo base, which
    starts from the same OpenMMLab config as the real config does."""
    real = next((r for r in REAL_CONFIGS if _twin_of(r) == name), None)
    assert real is not None, f'{name}: no real config beside it with its name'
    with open(osp.join(CONFIG_DIR, name)) as f:
        assert f.readline().startswith(f'# Demo twin of {osp.basename(real)} '), name
    bases = Config._get_base_files(osp.join(CONFIG_DIR, name))
    assert len(bases) == 1, f'{name}: one base, the demo base ({bases})'
    demo_base = osp.normpath(osp.join(CONFIG_DIR, osp.dirname(name), bases[0]))
    assert osp.dirname(demo_base) == osp.join(CONFIG_DIR, '_base_', 'demo'), bases
    assert Config._get_base_files(demo_base) == \
        Config._get_base_files(osp.join(CONFIG_DIR, real)), (demo_base, real)


def test_segmentation_demo_bases_differ_in_the_model_only():
    """The two Cityscapes demo bases repeat the same data and schedule changes; they must not
    drift apart."""
    deeplab, hrnet = (
        Config.fromfile(osp.join(CONFIG_DIR, '_base_', 'demo', f'{n}_cityscapes-shapes.py'))
        .to_dict() for n in ('deeplabv3', 'fcn-hr18'))
    assert deeplab['model']['backbone']['type'] == 'ResNetV1c'
    assert hrnet['model']['backbone']['type'] == 'HRNet'
    for cfg in (deeplab, hrnet):
        assert cfg['model']['pretrained'] is None
        assert cfg['model']['data_preprocessor']['size'] == (128, 256)
    assert {k: v for k, v in deeplab.items() if k != 'model'} == \
        {k: v for k, v in hrnet.items() if k != 'model'}


def _flatten(key, value, out, depth=0):
    """``value`` into ``out`` under ``key``: plain values as they are; dicts, lists and plain
    objects (samplers, anchor generators, box coders) entry by entry under dotted keys;
    functions and classes by name; tensors as their shape and (when small) values. Modules
    are left to their own entries."""
    if isinstance(value, nn.Module):
        return
    if isinstance(value, (bool, int, float, str, type(None))):
        out[key] = value
    elif isinstance(value, torch.Tensor):
        out[key] = (tuple(value.shape), value.tolist() if value.numel() <= 64 else None)
    elif isinstance(value, dict):
        out[key] = f'dict of {len(value)}'
        for k, v in value.items():
            _flatten(f'{key}.{k}', v, out, depth)
    elif isinstance(value, (list, tuple)):
        out[key] = f'{type(value).__name__} of {len(value)}'
        for i, v in enumerate(value):
            _flatten(f'{key}[{i}]', v, out, depth)
    elif hasattr(value, '__qualname__'):
        out[key] = f'{getattr(value, "__module__", "")}.{value.__qualname__}'
    else:
        out[key] = type(value).__name__
        if depth < 2 and hasattr(value, '__dict__'):
            for k, v in vars(value).items():
                if not k.startswith('_'):
                    _flatten(f'{key}.{k}', v, out, depth + 1)


def _settings(model):
    """{(module name, setting): value} for every module of ``model``, in train mode.

    A module's settings: its type; ``repr()``, or ``extra_repr()`` for a module with children
    (some, like mmcv's RoIAlign, print their settings only in ``repr()``); its public
    attributes, flattened by ``_flatten`` (conv strides, dilations and paddings,
    ``frozen_stages``, ``norm_eval``, plugin and neck arguments, ``init_cfg``,
    ``train_cfg``/``test_cfg``, samplers, anchors, ...); ``training``, which ``norm_eval``
    and ``frozen_stages`` set; the shape and ``requires_grad`` of its own parameters and the
    shape of its own buffers.
    """
    model.train()
    out = {}
    for name, module in model.named_modules():
        entries = {'type': type(module).__name__,
                   'repr': module.extra_repr() if any(module.children()) else repr(module)}
        for key, value in vars(module).items():
            if not key.startswith('_'):
                _flatten(key, value, entries)
        for key, param in module.named_parameters(recurse=False):
            entries[f'param.{key}.shape'] = tuple(param.shape)
            entries[f'param.{key}.requires_grad'] = param.requires_grad
        for key, buf in module.named_buffers(recurse=False):
            entries[f'buffer.{key}.shape'] = tuple(buf.shape)
        out.update({(name, key): value for key, value in entries.items()})
    return out


ANY = object()  # DEMO_DIFFERENCES: the twin's value is not checked
_BACKBONE = r'backbone(\.backbone)?'  # the backbone, or the one inside PluggedBackbone
_NORM = r'BatchNorm2d|SyncBatchNorm|GroupNorm'
_FASTER_RCNN = 'FasterRCNN'

#: Everything a demo twin may change in its real config's model (configs/_base_/demo/ makes
#: these changes and says why there): (module name, module type, setting, the twin's value or
#: ANY, reason). Names, types and settings are regular expressions matched in full against
#: the entries of ``_settings``. Any other difference fails test_demo_twin_builds_the_same_model.
DEMO_DIFFERENCES = [
    # class counts, and the layers sized by them
    (r'(roi_head\.)?bbox_head', r'\w*BBoxHead|YOLOV3Head', 'num_classes', 4,
     'coco_shapes has 4 classes, COCO 80'),
    (r'roi_head\.bbox_head\.fc_(cls|reg)', 'Linear', r'out_features|repr|param\.\w+\.shape',
     ANY, 'the box classifier and regressor have outputs per class'),
    (r'bbox_head\.convs_pred\.\d', 'Conv2d', r'out_channels|repr|param\.\w+\.shape', ANY,
     "YOLOv3's predictors have 5 + (number of classes) outputs per anchor"),
    # smaller images
    (r'bbox_head', 'YOLOV3Head', r'prior_generator\.(base_sizes|base_anchors)(\[\d\])*', ANY,
     "128x128 images: the paper's COCO anchors (608x608 images) scaled by 128/608"),
    (r'data_preprocessor', 'SegDataPreProcessor', r'size\[0\]', 128,
     'whole 128x256 images instead of 512x1024 crops'),
    (r'data_preprocessor', 'SegDataPreProcessor', r'size\[1\]', 256,
     'whole 128x256 images instead of 512x1024 crops'),
    # from scratch: no download, nothing frozen, BN trains
    (_BACKBONE, r'\w+', r'init_cfg.*', ANY,
     "no ImageNet weights: the backbone's own init (Kaiming convs, norm weights 1)"),
    (_BACKBONE, r'ResNetV1c', 'pretrained', None,
     "no ImageNet weights (mmseg's model.pretrained)"),
    (_BACKBONE + r'\.layer\d\.\d+', 'Bottleneck', r'init_cfg.*', ANY,
     "from scratch, mmdet's ResNet zero-initialises each residual branch's last BN"),
    (_BACKBONE, 'ResNet', 'frozen_stages', -1,
     'from scratch nothing is frozen (the baseline freezes the stem and stage 1)'),
    (_BACKBONE, 'ResNet', 'norm_eval', False,
     "from scratch the backbone's BN layers train (the baseline keeps them in eval mode)"),
    (_BACKBONE + r'\.(conv1|bn1|layer1(\..+)?)', r'\w+', r'training|param\.\w+\.requires_grad',
     True, 'frozen_stages=-1: the stem and stage 1 (their plugins too) train'),
    (_BACKBONE + r'\..+', _NORM, 'training', True,
     "norm_eval=False: the backbone's norm layers (the plugins' too) train"),
    # cheaper RoI head on CPU
    (r'roi_head\.bbox_roi_extractor\.roi_layers\.\d', 'RoIAlign', 'sampling_ratio', 2,
     "RoIAlign: 2x2 samples per bin instead of mmdet's adaptive count (sampling_ratio=0)"),
    (r'roi_head\.bbox_roi_extractor\.roi_layers\.\d', 'RoIAlign', 'repr', ANY,
     'prints sampling_ratio'),
    ('', _FASTER_RCNN, r'train_cfg\.rpn_proposal\.nms_pre', 1000,
     'training: the best 1000 RPN boxes enter NMS instead of 2000'),
    ('', _FASTER_RCNN, r'train_cfg\.rpn_proposal\.max_per_img', 300,
     'training: 300 proposals per image instead of 1000'),
    ('', _FASTER_RCNN, r'train_cfg\.rcnn\.sampler\.num', 64,
     'training: 64 RoIs sampled per image for the box head instead of 512'),
    ('roi_head', 'StandardRoIHead',
     r'train_cfg\.sampler\.num|bbox_sampler\.((pos|neg)_sampler\.)?num', 64,
     'training: 64 RoIs sampled per image for the box head instead of 512'),
    ('', _FASTER_RCNN, r'test_cfg\.rpn\.nms_pre', 300,
     'test: the best 300 RPN boxes enter NMS instead of 1000'),
    ('rpn_head', 'RPNHead', r'test_cfg\.nms_pre', 300,
     'test: the best 300 RPN boxes enter NMS instead of 1000'),
    ('', _FASTER_RCNN, r'test_cfg\.rpn\.max_per_img', 100,
     'test: 100 proposals per image instead of 1000'),
    ('rpn_head', 'RPNHead', r'test_cfg\.max_per_img', 100,
     'test: 100 proposals per image instead of 1000'),
    ('', _FASTER_RCNN, r'test_cfg\.rcnn\.max_per_img', 50,
     'test: at most 50 detections per image instead of 100 (a few shapes per image)'),
    ('roi_head', 'StandardRoIHead', r'test_cfg\.max_per_img', 50,
     'test: at most 50 detections per image instead of 100 (a few shapes per image)'),
]


def _undocumented(real, twin):
    """{(module, setting): (real value, twin value)} for every setting in which the two models
    differ other than DEMO_DIFFERENCES allows ('<missing>' where one model lacks it)."""
    real_settings, twin_settings = _settings(real), _settings(twin)
    types = {name: type(module).__name__ for name, module in real.named_modules()}
    out = {}
    for key in sorted(real_settings.keys() | twin_settings.keys()):
        ours = real_settings.get(key, '<missing>'), twin_settings.get(key, '<missing>')
        if ours[0] == ours[1]:
            continue
        module, setting = key
        if not any(re.fullmatch(module_re, module) and re.fullmatch(type_re, types[module])
                   and re.fullmatch(setting_re, setting)
                   and (value is ANY or ours[1] == value and type(ours[1]) is type(value))
                   for module_re, type_re, setting_re, value, _ in DEMO_DIFFERENCES):
            out[key] = ours
    return out


def _twin_pair(name, twin_changes=None):
    """The real config's model and its twin's, both as configured (pretrained references
    kept: nothing is loaded at build), the twin's config updated with ``twin_changes``."""
    twin_cfg = _load(_twin_of(name))
    if twin_changes:
        twin_cfg.merge_from_dict(twin_changes)
    return _build(_load(name), as_configured=True), _build(twin_cfg, as_configured=True)


@pytest.mark.parametrize('name', REAL_CONFIGS)
def test_demo_twin_builds_the_same_model(name):
    """The same modules in the same places, with the same settings but DEMO_DIFFERENCES."""
    real, twin = _twin_pair(name)
    assert [(n, type(m).__name__) for n, m in real.named_modules()] == \
        [(n, type(m).__name__) for n, m in twin.named_modules()]
    undocumented = _undocumented(real, twin)
    assert not undocumented, '\n'.join(f'{m!r} {s}: real {r!r}, twin {t!r}'
                                         for (m, s), (r, t) in undocumented.items())


@pytest.mark.parametrize('name, twin_changes, expected', [
    # output stride 32 instead of 8: no dilation, strided c4 and c5
    ('sge/deeplabv3_r50-d8-sge_4xb2-40k_cityscapes-512x1024.py',
     {'model.backbone.strides': (1, 2, 2, 2), 'model.backbone.dilations': (1, 1, 1, 1)},
     [('backbone.layer3.0.conv2', 'stride[0]'), ('backbone.layer4.1.conv2', 'dilation[0]'),
      ('backbone.layer4.1.conv2', 'padding[0]')]),
    # ASPP with DeepLabV3's output-stride-16 rates
    ('aspp/deeplabv3_r50-d8-aspp-neck_4xb2-40k_cityscapes-512x1024.py',
     {'model.neck.dilations': (1, 6, 12, 18)},
     [('neck.blocks.3.aspp_modules.1.conv', 'dilation[0]')]),
    # a plugin argument
    ('sge/faster-rcnn_r50-sge-c3-c5_fpn_1x_coco.py',
     {'model.backbone.plugins': [dict(cfg=dict(type='SGE', groups=32),
                                      stages=(False, True, True, True),
                                      position='after_conv3')]},
     [('backbone.layer2.0.sge', 'groups')]),
    # a frozen stage where the real config freezes none
    ('ghost/faster-rcnn_ghost-r50_fpn_1x_coco.py', {'model.backbone.frozen_stages': 1},
     [('backbone', 'frozen_stages'), ('backbone.layer1.0.conv1', 'training')]),
    # the RPN's test-time NMS
    ('faster_rcnn_r50_dcn_asff.py', {'model.test_cfg.rpn.nms.iou_threshold': 0.5},
     [('', 'test_cfg.rpn.nms.iou_threshold'), ('rpn_head', 'test_cfg.nms.iou_threshold')]),
])
def test_twin_comparison_finds_what_the_demo_may_not_change(name, twin_changes, expected):
    """test_demo_twin_builds_the_same_model fails on a twin changed in any of these ways."""
    undocumented = _undocumented(*_twin_pair(name, twin_changes))
    assert undocumented and set(expected) <= set(undocumented), sorted(undocumented)[:20]


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
        mmcv_dcn = any(type(m) is DeformConv2dPack for m in model.modules())
        dataset = datasets.build(_small_train_dataset(
            cfg, data_roots[scope], DET_SCALE_MMCV_DCN if mmcv_dcn else DET_SCALE))
        batch = pseudo_collate([dataset[i] for i in range(2)])
        optim_wrapper = build_optim_wrapper(model, copy.deepcopy(cfg.optim_wrapper))
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        log_vars = model.train_step(batch, optim_wrapper)
    assert log_vars and all(torch.isfinite(torch.as_tensor(v)).all() for v in log_vars.values()), \
        log_vars
    changed = [n for n, p in model.named_parameters() if not torch.equal(before[n], p)]
    assert changed, f'{name}: no parameter changed after one step'
