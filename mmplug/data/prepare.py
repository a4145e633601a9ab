"""Make a config's data ready: generate the embedded demo sets (``data/coco_shapes``,
``data/cityscapes_shapes``) on first use, or say what real data is missing and where.
"""
import json
import os
import os.path as osp
import shutil

from .cityscapes_shapes import FORMAT_VERSION as CITYSCAPES_FORMAT_VERSION
from .cityscapes_shapes import generate_cityscapes_shapes
from .coco_shapes import FORMAT_VERSION as COCO_FORMAT_VERSION
from .coco_shapes import generate_coco_shapes

#: Folder name of each embedded set -> (generator, format version).
DEMO_DATASETS = {
    'coco_shapes': (generate_coco_shapes, COCO_FORMAT_VERSION),
    'cityscapes_shapes': (generate_cityscapes_shapes, CITYSCAPES_FORMAT_VERSION),
}
_MARKER = '.mmplug_demo.json'
_DEMO_HINT = ('To try mmplug without it, run the demo on the embedded data: `make demo`, or '
              'the demo twin of a config (same folder, `_demo_` in its name), e.g. '
              '`python tools/train.py configs/faster_rcnn_r50_dcn_asff_demo_coco-shapes.py`.')


def ensure_demo_dataset(root):
    """Generate the embedded set named by ``basename(root)`` unless a current copy exists.

    Written to a temporary sibling and moved into place, so it is never half-written.
    Returns True if generated now, False if the cached copy was used.
    """
    name = osp.basename(osp.normpath(root))
    if name not in DEMO_DATASETS:
        raise ValueError(f'{root!r} is not an embedded demo set; expected a folder named one of '
                         f'{sorted(DEMO_DATASETS)}')
    generator, version = DEMO_DATASETS[name]
    marker = osp.join(root, _MARKER)
    if osp.isfile(marker):
        with open(marker) as f:
            if json.load(f).get('format_version') == version:
                return False
    tmp = f'{osp.normpath(root)}.tmp-{os.getpid()}'
    shutil.rmtree(tmp, ignore_errors=True)
    print(f'[mmplug] generating the embedded demo set {name!r} into {root} (once)', flush=True)
    generator(tmp)
    with open(osp.join(tmp, _MARKER), 'w') as f:
        json.dump({'name': name, 'format_version': version}, f)
    shutil.rmtree(root, ignore_errors=True)  # a stale or partial copy
    os.makedirs(osp.dirname(osp.abspath(root)), exist_ok=True)
    try:
        os.replace(tmp, root)
    except OSError:
        # Another process (e.g. another rank) moved its identical copy in first.
        shutil.rmtree(tmp, ignore_errors=True)
        if not osp.isfile(marker):
            raise
    return True


def _dataset_cfgs(dataset):
    """Yield the leaf dataset configs of (possibly wrapped) ``dataset``."""
    if dataset is None:
        return
    if 'dataset' in dataset:  # RepeatDataset, ClassBalancedDataset, MultiImageMixDataset
        yield from _dataset_cfgs(dataset['dataset'])
    elif 'datasets' in dataset:  # ConcatDataset
        for d in dataset['datasets']:
            yield from _dataset_cfgs(d)
    else:
        yield dataset


def _expected_paths(ds):
    """Paths a leaf dataset config reads first: its annotation file or image folder."""
    root = ds.get('data_root') or ''
    if ds.get('ann_file'):
        return [osp.join(root, ds['ann_file'])]
    prefix = ds.get('data_prefix') or {}
    return [osp.join(root, p) for p in prefix.values() if isinstance(p, str) and p] or [root]


def prepare_data(cfg):
    """Generate the embedded sets ``cfg`` uses; raise ``FileNotFoundError`` for missing real data.

    The message names the path and how to run the demo instead.
    """
    for key in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        loader = cfg.get(key)
        if not loader:
            continue
        for ds in _dataset_cfgs(loader.get('dataset')):
            root = ds.get('data_root') or ''
            if osp.basename(osp.normpath(root)) in DEMO_DATASETS:
                ensure_demo_dataset(root)
                continue
            missing = [p for p in _expected_paths(ds) if not osp.exists(p)]
            if missing:
                raise FileNotFoundError(
                    f'{key}: the dataset {ds.get("type")} of this config reads '
                    f'{osp.abspath(missing[0])}, which does not exist (cwd: {os.getcwd()}). '
                    f'Download the data set and place it there (or set data_root with '
                    f'--cfg-options {key}.dataset.data_root=/path/to/data/). ' + _DEMO_HINT)
