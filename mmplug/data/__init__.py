"""Data tools: the embedded demo sets and the check that a config's data exists.

The generators only need numpy and Pillow; the sets they write are read by
mmdet's own ``CocoDataset`` and mmseg's own ``CityscapesDataset``.
"""
from .cityscapes_shapes import generate_cityscapes_shapes
from .coco_shapes import generate_coco_shapes
from .prepare import DEMO_DATASETS, ensure_demo_dataset, prepare_data

__all__ = [
    'generate_coco_shapes', 'generate_cityscapes_shapes', 'DEMO_DATASETS', 'ensure_demo_dataset',
    'prepare_data',
]
