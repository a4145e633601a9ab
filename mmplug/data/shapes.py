"""Random, deformable shapes and backgrounds for the embedded demo data.

Everything is a function of a ``numpy.random.Generator``, so a data set is a pure
function of its seed. Shapes are polygons (in pixel coordinates), which gives
boxes, COCO polygon masks and rasterised label maps from one description.
"""
import math

import numpy as np
from PIL import Image, ImageFilter

#: Unit outlines in [-1, 1]^2, before aspect, rotation, shear and jitter.
_UNIT_OUTLINES = {
    'rectangle': np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64),
    'ellipse': np.stack([np.cos(np.linspace(0, 2 * math.pi, 28, endpoint=False)),
                         np.sin(np.linspace(0, 2 * math.pi, 28, endpoint=False))], axis=1),
    'triangle': np.array([[0, -1], [1, 1], [-1, 1]], dtype=np.float64),
    'star': np.stack([
        np.where(np.arange(10) % 2 == 0, 1.0, 0.42) * np.cos(np.arange(10) * math.pi / 5 - math.pi / 2),
        np.where(np.arange(10) % 2 == 0, 1.0, 0.42) * np.sin(np.arange(10) * math.pi / 5 - math.pi / 2),
    ], axis=1),
}

SHAPE_NAMES = tuple(_UNIT_OUTLINES)


def random_polygon(rng, kind, center, size, *, max_aspect=2.0, max_shear=0.3, jitter=0.08,
                   rotate=True):
    """A deformed outline of ``kind`` (one of :data:`SHAPE_NAMES`) around ``center``.

    ``size`` is the approximate extent in pixels; width/height is drawn
    log-uniformly in ``[1/max_aspect, max_aspect]``, the shear in
    ``[-max_shear, max_shear]``, per-vertex noise is ``jitter`` times the size, and
    ``rotate`` adds a random angle. Returns ``[K, 2]`` vertices (x, y) in pixels.
    """
    if kind not in _UNIT_OUTLINES:
        raise ValueError(f'unknown shape {kind!r}; expected one of {SHAPE_NAMES}')
    pts = _UNIT_OUTLINES[kind].copy()
    aspect = math.exp(rng.uniform(-math.log(max_aspect), math.log(max_aspect)))
    pts *= np.array([math.sqrt(aspect), 1 / math.sqrt(aspect)]) * size / 2
    shear = rng.uniform(-max_shear, max_shear)
    pts = pts @ np.array([[1.0, 0.0], [shear, 1.0]])
    if rotate:
        t = rng.uniform(0, 2 * math.pi)
        pts = pts @ np.array([[math.cos(t), math.sin(t)], [-math.sin(t), math.cos(t)]])
    pts += rng.normal(0, jitter * size / 2, size=pts.shape)
    return pts + np.asarray(center, dtype=np.float64)


def polygon_bbox(poly):
    """``(x0, y0, x1, y1)`` of a polygon."""
    return (float(poly[:, 0].min()), float(poly[:, 1].min()),
            float(poly[:, 0].max()), float(poly[:, 1].max()))


def polygon_area(poly):
    """Shoelace area of a simple polygon."""
    x, y = poly[:, 0], poly[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2)


def random_background(rng, width, height, *, noise=12.0, blur=1.5):
    """A smooth colour gradient with blurred noise, as an RGB ``PIL.Image``."""
    c0 = rng.uniform(40, 215, size=3)
    c1 = np.clip(c0 + rng.uniform(-60, 60, size=3), 0, 255)
    t = np.linspace(0, 1, width)[None, :, None] if rng.random() < 0.5 \
        else np.linspace(0, 1, height)[:, None, None]
    img = c0 * (1 - t) + c1 * t
    img = np.broadcast_to(img, (height, width, 3)) + rng.normal(0, noise, (height, width, 3))
    img = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    return img.filter(ImageFilter.GaussianBlur(blur))


def contrasting_color(rng, background_rgb, min_distance=90.0):
    """A random RGB colour at least ``min_distance`` away from ``background_rgb``."""
    bg = np.asarray(background_rgb, dtype=np.float64)
    for _ in range(50):
        color = rng.uniform(0, 255, size=3)
        if np.linalg.norm(color - bg) >= min_distance:
            break
    return tuple(int(v) for v in color)


def fill_polygon(draw, poly, fill):
    """Rasterise ``poly`` onto a ``PIL.ImageDraw`` with colour/label ``fill``."""
    draw.polygon([(float(x), float(y)) for x, y in poly], fill=fill)


__all__ = [
    'SHAPE_NAMES', 'random_polygon', 'polygon_bbox', 'polygon_area', 'random_background',
    'contrasting_color', 'fill_polygon',
]
