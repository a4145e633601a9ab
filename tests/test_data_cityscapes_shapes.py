"""The Cityscapes-layout street-shapes set, read by mmseg's own dataset and metric."""
import os
import os.path as osp

import numpy as np
import pytest
from PIL import Image

from mmplug.data.cityscapes_shapes import CITIES, USED_TRAIN_IDS, generate_cityscapes_shapes

CITYSCAPES_PIPELINE = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]
VALID_LABELS = set(range(19)) | {255}
SMALL = dict(width=64, height=32)


def _files(root):
    out = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = osp.join(dirpath, name)
            with open(path, 'rb') as f:
                out[osp.relpath(path, root)] = f.read()
    return out


def _build_dataset(root, split):
    from mmseg.registry import DATASETS
    from mmseg.utils import register_all_modules
    register_all_modules()
    return DATASETS.build(dict(
        type='CityscapesDataset', data_root=root,
        data_prefix=dict(img_path=f'leftImg8bit/{split}', seg_map_path=f'gtFine/{split}'),
        pipeline=CITYSCAPES_PIPELINE))


def test_same_seed_same_bytes_different_seed_differs(tmp_path):
    kw = dict(num_train=2, num_val=1, **SMALL)
    a = _files(generate_cityscapes_shapes(str(tmp_path / 'a'), seed=3, **kw))
    b = _files(generate_cityscapes_shapes(str(tmp_path / 'b'), seed=3, **kw))
    c = _files(generate_cityscapes_shapes(str(tmp_path / 'c'), seed=4, **kw))
    assert len(a) == 2 * (2 + 1)  # an image and a label per sample, nothing else
    assert a == b
    assert a.keys() == c.keys()
    assert all(a[k] != c[k] for k in a)


def test_layout_is_read_by_mmseg_cityscapes_dataset(tmp_path):
    root = generate_cityscapes_shapes(str(tmp_path), num_train=4, num_val=2, seed=0, width=96,
                                      height=48)
    seen = set()
    for split, num in (('train', 4), ('val', 2)):
        images = sorted(
            osp.join(dp, n) for dp, _, ns in os.walk(osp.join(root, 'leftImg8bit', split))
            for n in ns)
        assert len(images) == num
        assert {osp.basename(osp.dirname(p)) for p in images} == set(CITIES[split])
        dataset = _build_dataset(root, split)
        assert len(dataset) == num
        assert [d['img_path'] for d in dataset.load_data_list()] == images
        assert dataset.metainfo['classes'][13] == 'car'
        for i in range(num):
            info = dataset.get_data_info(i)
            assert info['seg_map_path'].endswith('_gtFine_labelTrainIds.png')
            assert osp.isfile(info['seg_map_path'])
            item = dataset[i]
            assert tuple(item['inputs'].shape) == (3, 48, 96)
            gt = item['data_samples'].gt_sem_seg.data.numpy()
            assert gt.shape == (1, 48, 96)
            assert np.array_equal(gt[0], np.asarray(Image.open(info['seg_map_path'])))
            values = set(np.unique(gt).tolist())
            assert values <= VALID_LABELS
            seen |= values
    assert {0, 1, 2, 10} <= seen  # road, sidewalk, building and sky in every scene
    assert len(seen & set(USED_TRAIN_IDS)) >= 6


def test_iou_metric_perfect_and_corrupted(tmp_path):
    import torch
    from mmengine.structures import PixelData
    from mmseg.evaluation import IoUMetric
    from mmseg.structures import SegDataSample

    root = generate_cityscapes_shapes(str(tmp_path), num_train=1, num_val=2, seed=1, width=96,
                                      height=48, ignore_border=1)
    dataset = _build_dataset(root, 'val')

    def score(corrupt):
        metric = IoUMetric(iou_metrics=['mIoU'])
        metric.dataset_meta = dataset.metainfo
        for i in range(len(dataset)):
            gt = dataset[i]['data_samples'].gt_sem_seg.data
            pred = gt.clone()
            pred[pred == 255] = 0  # the model predicts something on ignored pixels too
            if corrupt:
                pred[..., :, : pred.shape[-1] // 3] = 13  # a third of the image called "car"
            sample = SegDataSample()
            sample.gt_sem_seg = PixelData(data=gt)
            sample.pred_sem_seg = PixelData(data=pred.to(torch.int64))
            metric.process({}, [sample.to_dict()])
        return metric.evaluate(len(dataset))['mIoU']

    assert abs(score(False) - 100.0) < 1e-6
    assert score(True) < 90.0


def test_ignore_border(tmp_path):
    plain = generate_cityscapes_shapes(str(tmp_path / 'plain'), num_train=2, num_val=1, seed=5,
                                       **SMALL)
    band = generate_cityscapes_shapes(str(tmp_path / 'band'), num_train=2, num_val=1, seed=5,
                                      ignore_border=1, **SMALL)
    n_ignored = 0
    for dirpath, _, names in os.walk(osp.join(plain, 'gtFine')):
        for name in names:
            a = np.asarray(Image.open(osp.join(dirpath, name)))
            b = np.asarray(Image.open(osp.join(band, osp.relpath(dirpath, plain), name)))
            assert a.dtype == np.uint8 and a.ndim == 2
            assert 255 not in a
            changed = a != b
            assert np.all(b[changed] == 255)  # the band only turns pixels into ignore
            n_ignored += int(changed.sum())
    assert n_ignored > 0


@pytest.mark.parametrize('name, value', [
    ('num_train', 0), ('num_val', -1), ('num_train', 2.0), ('width', 16), ('height', True),
    ('max_cars', -1), ('max_people', 'x'), ('max_poles', -2), ('ignore_border', -1),
    ('seed', -1), ('seed', 1.5),
])
def test_invalid_arguments_raise(tmp_path, name, value):
    with pytest.raises(ValueError, match=name):
        generate_cityscapes_shapes(str(tmp_path), **{name: value})
    assert not osp.exists(osp.join(tmp_path, 'leftImg8bit'))
