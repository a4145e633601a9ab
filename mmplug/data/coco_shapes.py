"""A small detection / instance-segmentation set in COCO format (mmdet's ``CocoDataset``).

Non-overlapping rectangles, ellipses, triangles and stars (so polygon masks are the
visible masks) on noisy gradient backgrounds::

    <root>/annotations/instances_{train,val}.json
    <root>/{train,val}/<id>.png
"""
import json
import os
import os.path as osp

import numpy as np
from PIL import ImageDraw
from tqdm import tqdm

from .shapes import (SHAPE_NAMES, contrasting_color, fill_polygon, polygon_area, polygon_bbox,
                     random_background, random_polygon)

CLASSES = SHAPE_NAMES
#: Bump when the generator's output changes, so cached copies are rebuilt.
FORMAT_VERSION = 2
_SPLIT_IDS = {'train': 0, 'val': 1}


def _place_objects(rng, width, height, max_objects, min_size, max_size):
    """Sample non-overlapping polygons; returns ``[(class_index, polygon), ...]``."""
    objects, boxes = [], []
    wanted = int(rng.integers(1, max_objects + 1))
    for _ in range(wanted * 20):
        if len(objects) == wanted:
            break
        size = float(np.exp(rng.uniform(np.log(min_size), np.log(max_size))))
        center = rng.uniform(size * 0.4, [width - size * 0.4, height - size * 0.4])
        cls = int(rng.integers(len(CLASSES)))
        poly = random_polygon(rng, CLASSES[cls], center, size, max_shear=0.2, jitter=0.05)
        poly[:, 0] = np.clip(poly[:, 0], 0, width - 1)
        poly[:, 1] = np.clip(poly[:, 1], 0, height - 1)
        x0, y0, x1, y1 = polygon_bbox(poly)
        if x1 - x0 < 4 or y1 - y0 < 4:
            continue
        # 2 px of clearance: boxes never touch, masks stay the visible masks.
        if any(x0 - 2 < b[2] and b[0] < x1 + 2 and y0 - 2 < b[3] and b[1] < y1 + 2 for b in boxes):
            continue
        objects.append((cls, poly))
        boxes.append((x0, y0, x1, y1))
    return objects


def _make_split(root, split, num_images, seed, width, height, max_objects, min_size, max_size,
                with_masks, first_ann_id):
    img_dir = osp.join(root, split)
    os.makedirs(img_dir, exist_ok=True)
    images, annotations = [], []
    ann_id = first_ann_id
    for idx in tqdm(range(num_images), desc=f'coco-shapes {split}', unit='img', leave=False):
        # One generator per image: an image depends on (seed, split, index) only.
        rng = np.random.default_rng([seed, _SPLIT_IDS[split], idx])
        img = random_background(rng, width, height)
        bg_mean = np.asarray(img).reshape(-1, 3).mean(0)
        draw = ImageDraw.Draw(img)
        image_id = idx + 1
        file_name = f'{image_id:06d}.png'
        for cls, poly in _place_objects(rng, width, height, max_objects, min_size, max_size):
            fill_polygon(draw, poly, contrasting_color(rng, bg_mean))
            x0, y0, x1, y1 = polygon_bbox(poly)
            ann = dict(id=ann_id, image_id=image_id, category_id=cls + 1,
                       bbox=[round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
                       area=round(polygon_area(poly), 2), iscrowd=0)
            if with_masks:
                ann['segmentation'] = [[round(float(v), 2) for v in poly.reshape(-1)]]
            annotations.append(ann)
            ann_id += 1
        img.save(osp.join(img_dir, file_name))
        images.append(dict(id=image_id, file_name=file_name, width=width, height=height))
    coco = dict(
        info=dict(description='mmplug coco-shapes (synthetic)', version=str(FORMAT_VERSION)),
        images=images, annotations=annotations,
        categories=[dict(id=i + 1, name=name, supercategory='shape') for i, name in enumerate(CLASSES)])
    os.makedirs(osp.join(root, 'annotations'), exist_ok=True)
    with open(osp.join(root, 'annotations', f'instances_{split}.json'), 'w') as f:
        json.dump(coco, f)
    return ann_id


def generate_coco_shapes(root, *, num_train=512, num_val=128, seed=0, width=128, height=128,
                         max_objects=4, min_size=24, max_size=64, with_masks=True):
    """Write the COCO-format shapes set under ``root`` and return ``root``.

    Args:
        root (str): Output folder.
        num_train (int): Training images. Defaults to 512.
        num_val (int): Validation images. Defaults to 128.
        seed (int): Seed; the output is a pure function of the arguments.
            Defaults to 0.
        width, height (int): Image size. Defaults to 128, 128.
        max_objects (int): At most this many objects per image. Defaults to 4.
        min_size, max_size (float): Object extent in pixels. Defaults to 24, 64.
        with_masks (bool): Write polygon ``segmentation`` fields. Defaults to True.
    """
    for name, value in (('num_train', num_train), ('num_val', num_val), ('width', width),
                        ('height', height), ('max_objects', max_objects)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f'generate_coco_shapes: {name} must be a positive int, got {value!r}')
    if not 2 <= min_size <= max_size <= min(width, height):
        raise ValueError(f'generate_coco_shapes: need 2 <= min_size ({min_size}) <= max_size '
                         f'({max_size}) <= min(width, height) ({min(width, height)})')
    ann_id = 1
    for split, num in (('train', num_train), ('val', num_val)):
        ann_id = _make_split(root, split, num, seed, width, height, max_objects, min_size,
                             max_size, with_masks, ann_id)
    return root
