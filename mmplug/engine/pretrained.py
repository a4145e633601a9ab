"""Pretrained weights of a config: load them without torchvision, say how to fix a miss.

:func:`resolve_torchvision_urls` points ``torchvision://`` keys at the same file's
URL from mmengine's own table (torchvision is not installed here);
:func:`check_pretrained` runs before the runner and names the config key and the
file to place where when a local path or download is missing.
"""
import importlib.util
import os.path as osp
import urllib.error
import urllib.request
from urllib.parse import urlparse

import mmengine
import torch
from mmengine.logging import print_log

__all__ = ['check_pretrained', 'pretrained_entries', 'resolve_torchvision_urls']

#: How long :func:`check_pretrained` waits for a download's server to answer.
REACH_TIMEOUT_S = 10


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


def _set(cfg, key, value):
    *parents, last = key.split('.')
    node = cfg
    for part in parents:
        node = node[int(part)] if isinstance(node, (list, tuple)) else node[part]
    node[last] = value


def torchvision_url(name):
    """The download URL of ``torchvision://name``, as mmengine maps it, or None."""
    table = mmengine.load(osp.join(mmengine.__path__[0], 'hub', 'torchvision_0.12.json'))
    return table.get(name)


def resolve_torchvision_urls(cfg, logger='current'):
    """Without torchvision, point every ``torchvision://`` checkpoint of ``cfg.model`` at
    the URL of the same weights (in place), and log each change.

    Returns:
        list[tuple[str, str, str]]: ``(config key, old, new)`` per change.
    """
    if importlib.util.find_spec('torchvision') is not None:
        return []
    changed = []
    for key, ckpt in list(pretrained_entries(cfg.get('model', {}), 'model')):
        url = torchvision_url(ckpt[14:]) if ckpt.startswith('torchvision://') else None
        if url is not None:
            _set(cfg, key, url)
            print_log(f'{key}: {ckpt} -> {url} (the same weights; torchvision is not installed)',
                      logger=logger)
            changed.append((key, ckpt, url))
    return changed


def _download_url(ckpt):
    """The URL mmengine downloads ``ckpt`` from, or None for a local path."""
    if ckpt.startswith(('http://', 'https://')):
        return ckpt
    if ckpt.startswith(('open-mmlab://', 'openmmlab://')):
        from mmengine.runner.checkpoint import get_deprecated_model_names, get_external_models
        name = ckpt.split('://', 1)[1]
        name = get_deprecated_model_names().get(name, name)
        url = get_external_models().get(name)
        return url if url and url.startswith(('http://', 'https://')) else None
    return None


def _reachable(url):
    try:
        urllib.request.urlopen(urllib.request.Request(url, method='HEAD'),
                               timeout=REACH_TIMEOUT_S).close()
        return True
    except (urllib.error.URLError, OSError, ValueError):
        return False


def check_pretrained(cfg):
    """Raise ``RuntimeError`` if a pretrained checkpoint of ``cfg.model`` cannot be loaded here.

    * ``torchvision://`` without torchvision (call :func:`resolve_torchvision_urls`
      first to load the same weights by URL);
    * a local path that does not exist;
    * a download (a URL, ``open-mmlab://``) that is neither in torch's hub cache
      nor reachable: the message names the file to place in the cache.
    """
    for key, ckpt in pretrained_entries(cfg.get('model', {}), 'model'):
        if ckpt.startswith('torchvision://'):
            if importlib.util.find_spec('torchvision') is None:
                raise RuntimeError(
                    f'{key} = {ckpt!r} loads ImageNet weights through torchvision, which is not '
                    'installed, and mmengine has no URL for it. Either install the torchvision '
                    'release that matches your torch, or override the key: '
                    f'`--cfg-options {key}=/path/to/weights.pth` for a local checkpoint, or '
                    f'`--cfg-options {key.rsplit(".", 1)[0]}=None` to train from scratch '
                    '(as the demo twins do).')
            continue
        url = _download_url(ckpt)
        if url is not None:
            cached = osp.join(torch.hub.get_dir(), 'checkpoints', osp.basename(urlparse(url).path))
            if not osp.isfile(cached) and not _reachable(url):
                raise RuntimeError(
                    f'{key} = {ckpt!r}: {url} cannot be downloaded from here (no network?). '
                    f'Download it elsewhere and place it at {cached} (where mmengine looks '
                    f'first), or point the key at a local copy: `--cfg-options '
                    f'{key}=/path/to/{osp.basename(cached)}`.')
        elif '://' not in ckpt and not osp.isfile(osp.expanduser(ckpt)):
            raise RuntimeError(f'{key} = {ckpt!r}: no such file. Point it at an existing '
                               f'checkpoint with `--cfg-options {key}=/path/to/weights.pth`.')
