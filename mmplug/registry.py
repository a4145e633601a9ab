"""The one registry mmplug registers into: mmengine's root ``MODELS``, which mmcv's
bricks use and whose children (mmdet's, mmseg's) fall back to, so ``type='SGE'``
resolves from mmdet and mmseg configs alike.
"""
import difflib

from mmengine.registry import MODELS

__all__ = ['MODELS', 'close_names', 'close_type_names', 'visible_names']


def visible_names(registry):
    """Names ``registry.get`` resolves without a scope prefix (itself and its parents)."""
    names = []
    while registry is not None:
        registry.import_from_location()  # mmdet/mmseg register lazily
        names += [n for n in registry.module_dict if n not in names]
        registry = registry.parent
    return names


def close_names(name, candidates, n=5):
    """Case-insensitive exact matches first, then difflib's, as typed and lower-cased."""
    lower = {}
    for c in candidates:
        lower.setdefault(c.lower(), []).append(c)
    out = [c for c in lower.get(name.lower(), []) if c != name]
    out += difflib.get_close_matches(name, candidates, n=n, cutoff=0.6)
    for match in difflib.get_close_matches(name.lower(), list(lower), n=n, cutoff=0.6):
        out += lower[match]
    return list(dict.fromkeys(out))[:n]


def close_type_names(name, registry=MODELS, n=5):
    """Registered names close to ``name`` that ``registry.get`` resolves unprefixed.

    Case-insensitive matches first (``'sge'`` -> ``'SGE'``), then difflib's.
    """
    return close_names(name, visible_names(registry), n=n)
