"""The configs that ship with the package, installed as ``mmplug/.mim/configs``.

``mmplug::<path>`` names one wherever the package is installed::

    python -m mmplug.train mmplug::sge/faster-rcnn_r50-sge-c3-c5_fpn_1x_coco.py

mmengine resolves ``package::`` in ``_base_`` only for OpenMMLab's packages, so
a config of your own takes one as its base by the path ``config_path`` returns.
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
