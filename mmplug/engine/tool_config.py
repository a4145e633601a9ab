"""Loading a config the way ``mmplug.train`` and ``mmplug.test`` do."""
import os.path as osp

from mmengine.config import Config

from mmplug.configs import config_path

from .config_check import check_registered_types
from .plugin_defaults import fill_plugin_positions

__all__ = ['load_tool_config']


def load_tool_config(config, cfg_options=None, launcher='none', work_dir=None):
    """The config ``config`` (a path or ``mmplug::<path>``) with ``cfg_options`` merged,
    every model type checked, the short plugin form filled in, and ``work_dir`` set (the
    argument, else the config's, else ``./work_dirs/<config name>``); the file it came from
    is ``cfg.filename``.
    """
    path = config_path(config)
    cfg = Config.fromfile(path)
    cfg.launcher = launcher
    if cfg_options is not None:
        cfg.merge_from_dict(cfg_options)
    check_registered_types(cfg)
    fill_plugin_positions(cfg)  # the short form plugins=[dict(cfg=dict(type=...))]
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(path))[0])
    return cfg
