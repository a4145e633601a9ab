"""The configs that ship with the package.

``configs/`` of a clone is installed as ``mmplug/.mim/configs`` (package data; a
link in the clone), where mmdet and mmseg keep theirs. ``mmplug::<path>`` names
one of them wherever the package is installed::

    python -m mmplug.train mmplug::faster_rcnn_r50_dcn_asff.py
    python -m mmplug.train mmplug::sge/faster-rcnn_r50-sge-c3-c5_fpn_1x_coco.py

A config of your own takes one as its base by file path (mmengine resolves
``package::`` in ``_base_`` only for OpenMMLab's own packages); this prints it::

    python -c "from mmplug.configs import config_path; print(config_path('mmplug::sge/...'))"
"""
import os.path as osp

__all__ = ['CONFIG_ROOT', 'config_path']

#: Where the package's configs are: ``<mmplug>/.mim/configs``.
CONFIG_ROOT = osp.join(osp.dirname(osp.abspath(__file__)), '.mim', 'configs')
PREFIX = 'mmplug::'


def config_path(name):
    """The file of config ``name``: ``mmplug::<path>`` is ``<path>`` under
    :data:`CONFIG_ROOT`; anything else is returned unchanged.

    Raises:
        FileNotFoundError: For an ``mmplug::`` name that ships no such config,
            with the closest ones.
    """
    if not name.startswith(PREFIX):
        return name
    rel = name[len(PREFIX):]
    path = osp.join(CONFIG_ROOT, rel)
    if not osp.isfile(path):
        import difflib
        import glob
        shipped = sorted(osp.relpath(p, CONFIG_ROOT)
                         for p in glob.glob(osp.join(CONFIG_ROOT, '**', '*.py'), recursive=True)
                         if '_base_' not in p)
        close = difflib.get_close_matches(rel, shipped, n=3, cutoff=0.4)
        raise FileNotFoundError(
            f'{name!r}: mmplug ships no config {rel!r} (looked in {CONFIG_ROOT}). '
            + (f'Closest: {", ".join(close)}. ' if close else '')
            + f'All: {", ".join(shipped)}')
    return path
