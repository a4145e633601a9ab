"""A small semantic-segmentation set in the Cityscapes layout.

Toy street scenes from :mod:`.shapes` polygons (sky, buildings, vegetation,
sidewalk, road with lane markings, poles with signs or lamps, people, cars),
randomly sized, sheared and jittered, each class with its own colour and noise
statistics. Labels are Cityscapes *trainIds* (:data:`CLASSES`), optionally with
an ignore (255) band around objects, in the layout mmseg's
``CityscapesDataset`` reads::

    <root>/leftImg8bit/{train,val}/<city>/<city>_<seq:06d>_000019_leftImg8bit.png
    <root>/gtFine/{train,val}/<city>/<city>_<seq:06d>_000019_gtFine_labelTrainIds.png
"""
import os
import os.path as osp

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from tqdm import tqdm

from .shapes import contrasting_color, fill_polygon, random_polygon

#: Cityscapes trainId order (index = trainId), as in mmseg's ``CityscapesDataset``.
CLASSES = ('road', 'sidewalk', 'building', 'wall', 'fence', 'pole', 'traffic light',
           'traffic sign', 'vegetation', 'terrain', 'sky', 'person', 'rider', 'car', 'truck',
           'bus', 'train', 'motorcycle', 'bicycle')
ROAD, SIDEWALK, BUILDING, POLE, SIGN, VEGETATION, SKY, PERSON, CAR = 0, 1, 2, 5, 7, 8, 10, 11, 13
#: The trainIds that the generator draws.
USED_TRAIN_IDS = (ROAD, SIDEWALK, BUILDING, POLE, SIGN, VEGETATION, SKY, PERSON, CAR)
IGNORE_INDEX = 255
#: Bump when the generator's output changes, so cached copies are rebuilt.
FORMAT_VERSION = 1
_SPLIT_IDS = {'train': 0, 'val': 1}
#: Cities per split; image ``idx`` goes to ``cities[idx % len(cities)]``.
CITIES = {'train': ('aachen', 'bremen'), 'val': ('frankfurt',)}
#: Cityscapes annotates the 20th frame of each snippet.
_FRAME = 19
IMG_SUFFIX = '_leftImg8bit.png'
SEG_MAP_SUFFIX = '_gtFine_labelTrainIds.png'
#: Classes whose borders get the optional ignore band.
_THINGS = (POLE, SIGN, PERSON, CAR)

# Colour distributions: mean RGB choices, per-image spread, per-pixel noise.
_BUILDING_COLORS = ((135, 135, 135), (190, 172, 140), (150, 82, 62), (85, 80, 92), (200, 200, 190))
_SIGN_COLORS = ((205, 30, 30), (30, 75, 185), (235, 200, 40), (235, 235, 235))
_CLOTHES_COLORS = ((40, 40, 50), (30, 50, 110), (120, 30, 35), (90, 90, 90), (60, 90, 60),
                   (170, 150, 110))
_SKIN_COLORS = ((225, 185, 155), (190, 140, 105), (120, 85, 60))


class _Scene:
    """Paints polygons into a label map and a region map; regions carry colours."""

    def __init__(self, width, height):
        self.width, self.height = width, height
        self.label = Image.new('L', (width, height), IGNORE_INDEX)
        self.region = Image.new('I', (width, height), 0)
        self._label_draw = ImageDraw.Draw(self.label)
        self._region_draw = ImageDraw.Draw(self.region)
        self._top, self._bottom, self._noise = [], [], []

    def add_region(self, top, bottom=None, noise=6.0):
        """A colour (vertical gradient ``top`` -> ``bottom``) with pixel ``noise``."""
        self._top.append(np.asarray(top, dtype=np.float64))
        self._bottom.append(np.asarray(top if bottom is None else bottom, dtype=np.float64))
        self._noise.append(float(noise))
        return len(self._noise) - 1

    def fill(self, poly, class_id, region):
        fill_polygon(self._label_draw, poly, class_id)
        fill_polygon(self._region_draw, poly, region)

    def render(self, rng, brightness, blur):
        region = np.asarray(self.region, dtype=np.int64)
        top, bottom = np.stack(self._top), np.stack(self._bottom)
        t = np.linspace(0.0, 1.0, self.height)[:, None, None]
        img = top[region] * (1 - t) + bottom[region] * t
        img += np.asarray(self._noise)[region][..., None] * rng.standard_normal(img.shape)
        img = Image.fromarray(np.clip(img * brightness, 0, 255).astype(np.uint8))
        return img.filter(ImageFilter.GaussianBlur(blur)) if blur > 0 else img


def _color(rng, mean, spread):
    """``mean`` moved by a shared brightness shift and a small per-channel shift."""
    mean = np.asarray(mean, dtype=np.float64)
    return np.clip(mean + rng.normal(0, spread) + rng.normal(0, spread / 3, size=3), 0, 255)


def _pick(rng, choices):
    return choices[int(rng.integers(len(choices)))]


def _shape(rng, kind, box, **kwargs):
    """A deformed ``kind`` outline fitted (before deformation) to ``box`` = (x0, y0, x1, y1)."""
    kwargs.setdefault('rotate', False)
    poly = random_polygon(rng, kind, (0.0, 0.0), 2.0, **kwargs)
    x0, y0, x1, y1 = box
    half = np.array([(x1 - x0) / 2, (y1 - y0) / 2])
    return poly * half + np.array([(x0 + x1) / 2, (y0 + y1) / 2])


def _quad(x0, y0, x1, y1):
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)


def _draw_buildings(rng, scene, ground):
    w, h = scene.width, scene.height
    x = -rng.uniform(0, 0.1) * w
    while x < w:
        bw = rng.uniform(0.12, 0.35) * w
        if rng.random() < 0.15:  # a gap showing the sky
            x += bw * 0.4
            continue
        top = rng.uniform(0.04, 0.75) * ground
        color = _color(rng, _pick(rng, _BUILDING_COLORS), 18)
        body = scene.add_region(color * rng.uniform(0.9, 1.05), color, noise=5)
        scene.fill(_quad(x, top, x + bw, ground + 1), BUILDING, body)
        if rng.random() < 0.3:  # pitched roof
            roof_h = rng.uniform(0.05, 0.15) * h
            roof = _shape(rng, 'triangle', (x - 1, top - roof_h, x + bw + 1, top + 1),
                          max_aspect=1.1, max_shear=0.15, jitter=0.02)
            roof[:, 1] = np.minimum(roof[:, 1], top + 1)
            scene.fill(roof, BUILDING, scene.add_region(_color(rng, (110, 60, 50), 20), noise=5))
        # A grid of windows, one region per building.
        win = scene.add_region(_color(rng, (60, 72, 95), 18), noise=7)
        cell_w, cell_h = rng.uniform(0.035, 0.06) * w, rng.uniform(0.07, 0.13) * h
        fw, fh = rng.uniform(0.35, 0.65), rng.uniform(0.35, 0.65)
        for cy in np.arange(top + cell_h * 0.4, ground - cell_h, cell_h):
            for cx in np.arange(x + cell_w * 0.3, x + bw - cell_w, cell_w):
                scene.fill(_quad(cx, cy, cx + cell_w * fw, cy + cell_h * fh), BUILDING, win)
        x += bw + rng.uniform(0, 0.04) * w


def _draw_tree(rng, scene, base_x, base_y, scale):
    h = scene.height
    trunk_h = rng.uniform(0.08, 0.2) * h * scale
    trunk_w = max(1.5, rng.uniform(0.01, 0.02) * h * scale)
    trunk = _shape(rng, 'rectangle', (base_x - trunk_w / 2, base_y - trunk_h, base_x + trunk_w / 2,
                                      base_y), max_aspect=1.05, max_shear=0.1, jitter=0.02)
    scene.fill(trunk, VEGETATION, scene.add_region(_color(rng, (85, 65, 45), 15), noise=6))
    crown = rng.uniform(0.15, 0.35) * h * scale
    leaves = scene.add_region(_color(rng, (70, 115, 40), 18), noise=20)
    for _ in range(int(rng.integers(2, 5))):
        cx = base_x + rng.normal(0, crown * 0.25)
        cy = base_y - trunk_h - crown * rng.uniform(0.2, 0.5)
        scene.fill(random_polygon(rng, 'ellipse', (cx, cy), crown * rng.uniform(0.6, 1.0),
                                  max_aspect=1.6, jitter=0.12), VEGETATION, leaves)


def _draw_person(rng, scene, foot_x, foot_y, size):
    skin = scene.add_region(_color(rng, _pick(rng, _SKIN_COLORS), 12), noise=6)
    shirt = scene.add_region(_color(rng, _pick(rng, _CLOTHES_COLORS), 20), noise=8)
    trousers = scene.add_region(_color(rng, _pick(rng, _CLOTHES_COLORS), 15) * 0.8, noise=8)
    top = foot_y - size
    width = size * rng.uniform(0.24, 0.34)
    lean = rng.normal(0, 0.04) * size
    legs_gap = width * rng.uniform(0.0, 0.35)
    leg_w = (width - legs_gap) / 2 * 0.85
    for side in (-1, 1):
        lx = foot_x + side * (legs_gap / 2 + leg_w / 2) + rng.normal(0, 0.03) * size
        scene.fill(_shape(rng, 'rectangle', (lx - leg_w / 2, top + size * 0.5, lx + leg_w / 2,
                                             foot_y), max_aspect=1.1, max_shear=0.2, jitter=0.03),
                   PERSON, trousers)
    tx = foot_x + lean
    scene.fill(_shape(rng, 'rectangle', (tx - width / 2, top + size * 0.15, tx + width / 2,
                                         top + size * 0.56), max_aspect=1.15, max_shear=0.1,
                      jitter=0.05), PERSON, shirt)
    head = size * rng.uniform(0.12, 0.16)
    scene.fill(random_polygon(rng, 'ellipse', (tx + lean * 0.3, top + head * 0.55), head,
                              max_aspect=1.2, jitter=0.04), PERSON, skin)


def _draw_pole(rng, scene, base_x, base_y, height, with_sign):
    w = max(1.6, rng.uniform(0.008, 0.016) * scene.width)
    metal = scene.add_region(_color(rng, (125, 125, 130), 25), noise=5)
    top = base_y - height
    scene.fill(_shape(rng, 'rectangle', (base_x - w / 2, top, base_x + w / 2, base_y),
                      max_aspect=1.02, max_shear=0.02, jitter=0.005), POLE, metal)
    if with_sign:
        size = rng.uniform(0.06, 0.12) * scene.height
        kind = _pick(rng, ('triangle', 'ellipse', 'rectangle', 'rectangle'))
        plate = _shape(rng, kind, (base_x - size / 2, top, base_x + size / 2, top + size),
                       max_aspect=1.3, max_shear=0.1, jitter=0.03)
        paint = scene.add_region(_color(rng, _pick(rng, _SIGN_COLORS), 15), noise=5)
        scene.fill(plate, SIGN, paint)
    elif rng.random() < 0.6:  # a street lamp: horizontal arm, still a pole
        arm = rng.uniform(0.04, 0.1) * scene.width * (1 if rng.random() < 0.5 else -1)
        scene.fill(_quad(min(base_x, base_x + arm), top, max(base_x, base_x + arm), top + w),
                   POLE, metal)


def _draw_car(rng, scene, x0, bottom, length, road_rgb):
    height = length * rng.uniform(0.38, 0.55)
    paint = scene.add_region(np.asarray(contrasting_color(rng, road_rgb, 70.0), dtype=np.float64),
                             noise=6)
    glass = scene.add_region(_color(rng, (45, 55, 70), 12), noise=5)
    tyre = scene.add_region(_color(rng, (25, 25, 25), 6), noise=4)
    x1 = x0 + length
    body_top, body_bottom = bottom - height * 0.62, bottom - height * 0.12
    cab_x0, cab_x1 = x0 + length * rng.uniform(0.12, 0.3), x1 - length * rng.uniform(0.12, 0.3)
    cabin = _shape(rng, 'rectangle', (cab_x0, bottom - height, cab_x1, body_top + 2),
                   max_aspect=1.1, max_shear=0.25, jitter=0.03)
    scene.fill(cabin, CAR, paint)
    inset = max(1.0, height * 0.08)
    scene.fill(_shape(rng, 'rectangle', (cab_x0 + inset, bottom - height + inset, cab_x1 - inset,
                                         body_top + 1), max_aspect=1.05, max_shear=0.2,
                      jitter=0.02), CAR, glass)
    scene.fill(_shape(rng, 'rectangle', (x0, body_top, x1, body_bottom), max_aspect=1.08,
                      max_shear=0.05, jitter=0.02), CAR, paint)
    r = height * rng.uniform(0.17, 0.22)
    for wx in (x0 + length * 0.2, x1 - length * 0.2):
        scene.fill(random_polygon(rng, 'ellipse', (wx, bottom - r), 2 * r, max_aspect=1.1,
                                  jitter=0.02), CAR, tyre)


def _ignore_band(label, width):
    """Set ``width`` px around every border that touches a thing class to ignore."""
    thing = np.isin(label, _THINGS)
    edge = np.zeros_like(thing)
    for a, b, sa, sb in ((label[:, 1:], label[:, :-1], (slice(None), slice(1, None)),
                          (slice(None), slice(None, -1))),
                         (label[1:], label[:-1], (slice(1, None),), (slice(None, -1),))):
        diff = (a != b) & (thing[sa] | thing[sb])
        edge[sa] |= diff
        edge[sb] |= diff
    band = edge.copy()
    for _ in range(width - 1):
        grown = band.copy()
        grown[1:] |= band[:-1]
        grown[:-1] |= band[1:]
        grown[:, 1:] |= band[:, :-1]
        grown[:, :-1] |= band[:, 1:]
        band = grown
    label = label.copy()
    label[band] = IGNORE_INDEX
    return label


def _draw_scene(rng, width, height, max_cars, max_people, max_poles, ignore_border):
    """One scene; returns ``(rgb PIL.Image, uint8 trainId array)``."""
    scene = _Scene(width, height)
    ground = rng.uniform(0.42, 0.6) * height  # foot of the buildings
    walk_left = ground + rng.uniform(0.06, 0.18) * height
    walk_right = ground + rng.uniform(0.06, 0.18) * height

    def curb(x):  # sidewalk / road border at column x
        return walk_left + (walk_right - walk_left) * x / width

    # Sky: bluish or overcast, brighter towards the horizon.
    if rng.random() < 0.7:
        sky_top, sky_bottom = _color(rng, (70, 125, 200), 15), _color(rng, (175, 205, 235), 12)
    else:
        sky_top = _color(rng, (175, 180, 190), 15)
        sky_bottom = np.clip(sky_top + 25, 0, 255)
    scene.fill(_quad(-1, -1, width + 1, height + 1), SKY,
               scene.add_region(sky_top, sky_bottom, noise=4))
    _draw_buildings(rng, scene, ground)
    for _ in range(int(rng.integers(0, 4))):
        _draw_tree(rng, scene, rng.uniform(0, width), ground + rng.uniform(0, 0.03) * height,
                   rng.uniform(0.8, 1.3))
    for _ in range(int(rng.integers(0, 3))):  # bushes in front of the buildings
        bx, size = rng.uniform(0, width), rng.uniform(0.08, 0.2) * height
        scene.fill(random_polygon(rng, 'ellipse', (bx, ground - size * 0.15), size, max_aspect=2.5,
                                  jitter=0.1, rotate=False), VEGETATION,
                   scene.add_region(_color(rng, (60, 105, 45), 18), noise=18))
    walk = scene.add_region(_color(rng, (165, 150, 145), 18), noise=9)
    scene.fill(np.array([[-1, ground], [width + 1, ground], [width + 1, curb(width + 1)],
                         [-1, curb(-1)]]), SIDEWALK, walk)
    road_rgb = _color(rng, (90, 90, 96), 15)
    scene.fill(np.array([[-1, curb(-1)], [width + 1, curb(width + 1)], [width + 1, height + 1],
                         [-1, height + 1]]), ROAD, scene.add_region(road_rgb, noise=7))
    # Dashed lane marking (still road).
    mark = scene.add_region(_color(rng, (225, 225, 215), 10), noise=6)
    lane_y = curb(0) + (height - curb(0)) * rng.uniform(0.45, 0.65)
    dash, gap = rng.uniform(0.06, 0.12) * width, rng.uniform(0.04, 0.1) * width
    thick = max(1.0, 0.015 * height)
    slope = (walk_right - walk_left) / width  # the marking runs parallel to the curb
    for x in np.arange(-rng.uniform(0, dash + gap), width, dash + gap):
        y = lane_y + slope * x
        scene.fill(np.array([[x, y], [x + dash, y + slope * dash],
                             [x + dash + thick, y + thick + slope * dash],
                             [x + thick, y + thick]]), ROAD, mark)

    # Things on the sidewalk (poles, people) then on the road (cars), far to near.
    items = []
    for _ in range(int(rng.integers(0, max_poles + 1))):
        x = rng.uniform(0.02, 0.98) * width
        y = rng.uniform(ground + 1, curb(x))
        items.append((y, 'pole', x))
    for _ in range(int(rng.integers(0, max_people + 1))):
        x = rng.uniform(0.03, 0.97) * width
        y = rng.uniform(ground + 2, curb(x) + 0.05 * height)
        items.append((y, 'person', x))
    for _ in range(int(rng.integers(0, max_cars + 1))):
        x = rng.uniform(-0.2, 0.9) * width
        y = rng.uniform(curb(x) + 0.08 * height, height * 1.05)
        items.append((y, 'car', x))
    cars = []  # (x0, x1, bottom) of the cars drawn so far
    for y, kind, x in sorted(items):
        depth = 0.6 + 0.7 * (y - ground) / max(height - ground, 1.0)  # perspective scale
        if kind == 'car':
            length = rng.uniform(0.45, 0.7) * height * depth
            # Cars may partly occlude each other, but never hide one almost entirely.
            if any(min(x + length, c1) - max(x, c0) > 0.5 * min(length, c1 - c0)
                   and y - cb < 0.25 * length for c0, c1, cb in cars):
                continue
            cars.append((x, x + length, y))
        if kind == 'pole':
            _draw_pole(rng, scene, x, y, rng.uniform(0.3, 0.55) * height * depth,
                       with_sign=rng.random() < 0.6)
        elif kind == 'person':
            _draw_person(rng, scene, x, y, rng.uniform(0.17, 0.3) * height * depth)
        else:
            _draw_car(rng, scene, x, y, length, road_rgb)

    img = scene.render(rng, brightness=rng.uniform(0.75, 1.15), blur=0.6)
    label = np.asarray(scene.label, dtype=np.uint8)
    if ignore_border:
        label = _ignore_band(label, ignore_border)
    return img, label


def _make_split(root, split, num_images, seed, width, height, max_cars, max_people, max_poles,
                ignore_border):
    cities = CITIES[split]
    for idx in tqdm(range(num_images), desc=f'cityscapes-shapes {split}', unit='img', leave=False):
        # One generator per image: an image depends on (seed, split, index) only.
        rng = np.random.default_rng([seed, _SPLIT_IDS[split], idx])
        img, label = _draw_scene(rng, width, height, max_cars, max_people, max_poles,
                                 ignore_border)
        city = cities[idx % len(cities)]
        stem = f'{city}_{idx // len(cities):06d}_{_FRAME:06d}'
        img_dir = osp.join(root, 'leftImg8bit', split, city)
        ann_dir = osp.join(root, 'gtFine', split, city)
        os.makedirs(img_dir, exist_ok=True)
        os.makedirs(ann_dir, exist_ok=True)
        img.save(osp.join(img_dir, stem + IMG_SUFFIX))
        Image.fromarray(label).save(osp.join(ann_dir, stem + SEG_MAP_SUFFIX))


def generate_cityscapes_shapes(root, *, num_train=200, num_val=50, seed=0, width=256, height=128,
                               max_cars=4, max_people=4, max_poles=3, ignore_border=0):
    """Write the Cityscapes-layout street-shapes set under ``root`` and return ``root``.

    Args:
        root (str): Output folder.
        num_train (int): Training images. Defaults to 200.
        num_val (int): Validation images. Defaults to 50.
        seed (int): Seed; the output is a pure function of the arguments.
            Defaults to 0.
        width, height (int): Image size, each at least 32. Defaults to 256, 128.
        max_cars, max_people, max_poles (int): At most this many per image (some
            poles carry a traffic sign). Defaults to 4, 4, 3.
        ignore_border (int): Width of an ignore (255) band around poles, signs,
            people and cars; 0 for none. Defaults to 0.
    """
    def is_int(value):
        return isinstance(value, (int, np.integer)) and not isinstance(value, bool)

    for name, value in (('num_train', num_train), ('num_val', num_val)):
        if not is_int(value) or value < 1:
            raise ValueError(
                f'generate_cityscapes_shapes: {name} must be a positive int, got {value!r}')
    for name, value in (('width', width), ('height', height)):
        if not is_int(value) or value < 32:
            raise ValueError(
                f'generate_cityscapes_shapes: {name} must be an int >= 32, got {value!r}')
    for name, value in (('max_cars', max_cars), ('max_people', max_people),
                        ('max_poles', max_poles), ('ignore_border', ignore_border)):
        if not is_int(value) or value < 0:
            raise ValueError(
                f'generate_cityscapes_shapes: {name} must be a non-negative int, got {value!r}')
    if not is_int(seed) or seed < 0:
        raise ValueError(
            f'generate_cityscapes_shapes: seed must be a non-negative int, got {seed!r}')
    for split, num in (('train', num_train), ('val', num_val)):
        _make_split(root, split, num, int(seed), int(width), int(height), int(max_cars),
                    int(max_people), int(max_poles), int(ignore_border))
    return root


__all__ = ['CLASSES', 'USED_TRAIN_IDS', 'FORMAT_VERSION', 'CITIES', 'generate_cityscapes_shapes']
