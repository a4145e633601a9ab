"""Check a config's pretrained weights before training, and say how to fix a miss.

OpenMMLab configs initialise backbones from ``torchvision://``, ``open-mmlab://``
or URL checkpoints. Without torchvision, or with a mistyped local path, mmengine
fails deep inside ``init_weights`` after the runner has been built. This check
runs first and names the config key, what is missing and the two ways out:
install what loads it, or override the key.
"""
import importlib.util
import os.path as osp


def pretrained_entries(node, key=''):
    """Yield ``(config key, checkpoint)`` for every pretrained reference in ``node``."""
    if isinstance(node, dict):
        if node.get('type') == 'Pretrained' and isinstance(node.get('checkpoint'), str):
            yield f'{key}.checkpoint', node['checkpoint']
        if isinstance(node.get('pretrained'), str):
            yield f'{key}.pretrained', node['pretrained']
        for k, v in node.items():
            yield from pretrained_entries(v, f'{key}.{k}' if key else k)
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            yield from pretrained_entries(v, f'{key}.{i}')


def check_pretrained(cfg):
    """Raise ``RuntimeError`` if a pretrained checkpoint of ``cfg.model`` cannot be loaded here.

    Checks what is knowable offline: ``torchvision://`` needs torchvision, and a
    local path must exist. URLs and ``open-mmlab://`` are left to mmengine.
    """
    for key, ckpt in pretrained_entries(cfg.get('model', {}), 'model'):
        if ckpt.startswith('torchvision://'):
            if importlib.util.find_spec('torchvision') is None:
                raise RuntimeError(
                    f'{key} = {ckpt!r} loads ImageNet weights through torchvision, which is not '
                    'installed. Either install the torchvision release that matches your torch '
                    '(it downloads the weights on first use), or override the key: '
                    f'`--cfg-options {key}=/path/to/resnet.pth` for a local checkpoint, or '
                    f'`--cfg-options {key.rsplit(".", 1)[0]}=None` to train from scratch '
                    '(as the demo twins do).')
        elif '://' not in ckpt and not osp.isfile(osp.expanduser(ckpt)):
            raise RuntimeError(f'{key} = {ckpt!r}: no such file. Point it at an existing '
                               f'checkpoint with `--cfg-options {key}=/path/to/weights.pth`.')
