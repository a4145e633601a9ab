"""The embedded COCO-format set: determinism, mmdet's CocoDataset/CocoMetric, prepare_data."""
import filecmp
import json
import os
import os.path as osp

import numpy as np
import pytest
from mmengine.config import Config

from mmplug.data import generate_coco_shapes, prepare_data
from mmplug.data.coco_shapes import CLASSES

SMALL = dict(num_train=6, num_val=4, width=96, height=80, min_size=12, max_size=40)


@pytest.fixture(scope='module')
def coco_root(tmp_path_factory):
    return generate_coco_shapes(str(tmp_path_factory.mktemp('data') / 'coco_shapes'), **SMALL)


def test_deterministic(tmp_path, coco_root):
    again = generate_coco_shapes(str(tmp_path / 'a'), **SMALL)
    for rel in ['annotations/instances_train.json', 'annotations/instances_val.json',
                'train/000001.png', 'val/000004.png']:
        assert filecmp.cmp(osp.join(coco_root, rel), osp.join(again, rel), shallow=False), rel
    other = generate_coco_shapes(str(tmp_path / 'b'), **dict(SMALL, seed=1))
    assert not filecmp.cmp(osp.join(coco_root, 'train/000001.png'),
                           osp.join(other, 'train/000001.png'), shallow=False)


def test_annotations_are_consistent(coco_root):
    with open(osp.join(coco_root, 'annotations/instances_train.json')) as f:
        coco = json.load(f)
    assert [c['name'] for c in coco['categories']] == list(CLASSES)
    assert len(coco['images']) == SMALL['num_train']
    ids = [a['id'] for a in coco['annotations']]
    assert len(ids) == len(set(ids)) >= SMALL['num_train']
    for ann in coco['annotations']:
        x, y, w, h = ann['bbox']
        assert 0 <= x and 0 <= y and x + w <= SMALL['width'] and y + h <= SMALL['height']
        poly = np.array(ann['segmentation'][0]).reshape(-1, 2)
        assert np.allclose([poly[:, 0].min(), poly[:, 1].min()], [x, y], atol=0.01)
        assert 0 < ann['area'] <= w * h + 1e-6


def _det_dataset(root, split):
    from mmdet.registry import DATASETS
    from mmdet.utils import register_all_modules
    from mmengine.registry import DefaultScope
    register_all_modules(init_default_scope=False)
    with DefaultScope.overwrite_default_scope('mmdet'):  # mmdet's transforms, not mmcv's
        return DATASETS.build(dict(
            type='CocoDataset', data_root=root, ann_file=f'annotations/instances_{split}.json',
            data_prefix=dict(img=f'{split}/'), metainfo=dict(classes=CLASSES), test_mode=True,
            pipeline=[dict(type='LoadImageFromFile'),
                      dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
                      dict(type='PackDetInputs')]))


def test_mmdet_cocodataset_and_cocometric(coco_root):
    import torch
    from mmdet.evaluation import CocoMetric
    ds = _det_dataset(coco_root, 'val')
    assert len(ds) == SMALL['num_val']
    sample = ds[0]['data_samples']
    assert sample.gt_instances.bboxes.shape[0] == len(sample.gt_instances.masks) >= 1

    metric = CocoMetric(ann_file=osp.join(coco_root, 'annotations/instances_val.json'),
                        metric=['bbox', 'segm'])
    metric.dataset_meta = ds.metainfo

    def predictions(corrupt):
        for i in range(len(ds)):
            gt = ds[i]['data_samples']
            boxes = gt.gt_instances.bboxes.tensor.clone()
            if corrupt:
                boxes[:, :2] += 15  # shift: IoU drops
            masks = torch.from_numpy(gt.gt_instances.masks.to_ndarray()).bool()
            yield dict(img_id=gt.img_id, ori_shape=gt.ori_shape, pred_instances=dict(
                bboxes=boxes, scores=torch.ones(len(boxes)), labels=gt.gt_instances.labels,
                masks=masks))

    metric.process({}, list(predictions(False)))
    perfect = metric.evaluate(size=len(ds))
    assert perfect['coco/bbox_mAP'] > 0.99 and perfect['coco/segm_mAP'] > 0.95
    metric.process({}, list(predictions(True)))
    worse = metric.evaluate(size=len(ds))
    assert worse['coco/bbox_mAP'] < perfect['coco/bbox_mAP'] - 0.2


def test_invalid_arguments(tmp_path):
    with pytest.raises(ValueError, match='num_train'):
        generate_coco_shapes(str(tmp_path), num_train=0)
    with pytest.raises(ValueError, match='max_size'):
        generate_coco_shapes(str(tmp_path), width=64, height=64, max_size=100)


def test_prepare_data_generates_demo_once(tmp_path, monkeypatch):
    import mmplug.data.prepare as prepare
    calls = []

    def fake_gen(root):
        calls.append(root)
        return generate_coco_shapes(root, **SMALL)

    monkeypatch.setitem(prepare.DEMO_DATASETS, 'coco_shapes', (fake_gen, 1))
    root = str(tmp_path / 'data' / 'coco_shapes')
    cfg = Config(dict(train_dataloader=dict(dataset=dict(
        type='RepeatDataset', times=2,
        dataset=dict(type='CocoDataset', data_root=root + '/', ann_file='annotations/x.json')))))
    prepare_data(cfg)
    prepare_data(cfg)
    assert len(calls) == 1 and osp.isfile(osp.join(root, 'annotations/instances_val.json'))
    assert not [p for p in os.listdir(tmp_path / 'data') if '.tmp-' in p]


def test_prepare_data_missing_real_data_says_where_and_what_to_do(tmp_path):
    cfg = Config(dict(val_dataloader=dict(dataset=dict(
        type='CocoDataset', data_root=str(tmp_path / 'coco') + '/',
        ann_file='annotations/instances_val2017.json'))))
    with pytest.raises(FileNotFoundError) as err:
        prepare_data(cfg)
    msg = str(err.value)
    assert str(tmp_path / 'coco' / 'annotations' / 'instances_val2017.json') in msg
    assert 'make demo' in msg and 'val_dataloader' in msg
