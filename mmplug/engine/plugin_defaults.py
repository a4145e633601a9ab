"""Fill the short plugin form of mmdet/mmseg ResNets with each module's paper placement.

``plugins=[dict(cfg=dict(type='SGE'))]`` fails in mmdet's ``Bottleneck`` with a bare
``KeyError: 'position'``; the tools fill ``position`` from the class's
``default_position`` and log it, or stop with a message where there is none.
"""
from mmengine.logging import print_log
from mmengine.registry import MODELS

__all__ = ['fill_plugin_positions']

POSITIONS = ('after_conv1', 'after_conv2', 'after_conv3')


def _resnet_plugin_lists(node, key):
    """Yield ``(config key, list)`` for every ResNet-style ``plugins=[dict(cfg=...)]`` list."""
    if isinstance(node, dict):
        plugins = node.get('plugins')
        if isinstance(plugins, (list, tuple)) and any(
                isinstance(p, dict) and 'cfg' in p and 'after' not in p for p in plugins):
            yield f'{key}.plugins', plugins
        for k, v in node.items():
            yield from _resnet_plugin_lists(v, f'{key}.{k}')
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            yield from _resnet_plugin_lists(v, f'{key}[{i}]')


def fill_plugin_positions(cfg, logger='current'):
    """Give every ResNet-style plugin entry of ``cfg.model`` without ``position`` its
    plugin's paper placement, in place; log each choice.

    Entries of ``PluggedBackbone`` (``after=...``) are left alone.

    Returns:
        list[str]: One line per filled entry (what was logged).

    Raises:
        ValueError: For a plugin without a paper placement among
            ``after_conv1/2/3``, naming the config key and the choices.
    """
    filled = []
    for key, plugins in _resnet_plugin_lists(cfg.get('model', {}), 'model'):
        for i, entry in enumerate(plugins):
            if not isinstance(entry, dict) or 'position' in entry or \
                    not isinstance(entry.get('cfg'), dict):
                continue
            name = entry['cfg'].get('type')
            cls = MODELS.get(name) if isinstance(name, str) else name
            position = getattr(cls, 'default_position', None)
            where = f'{key}[{i}]'
            if position is None:
                raise ValueError(
                    f'{where}: no position given for {name!r}, and its paper places it '
                    f'nowhere among {POSITIONS}. Set position= explicitly'
                    + (f' ({cls.__name__}: {cls.position_note})'
                       if getattr(cls, 'position_note', None) else '') + '.')
            entry['position'] = position
            stages = 'given' if 'stages' in entry else 'all (not given)'
            line = (f'{where}: {name} at position={position!r}, its paper placement; '
                    f'stages: {stages}')
            print_log(line, logger=logger)
            filled.append(line)
    return filled
