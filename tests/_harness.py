"""Checks every module test file shares (the contract in ../shared/STYLE.md).

Import as ``from _harness import ...`` (pytest puts ``tests/`` on ``sys.path``).
"""
import torch
from mmcv.cnn import build_plugin_layer
from mmengine.registry import DefaultScope


def randomize_(module, seed=0, scale=1.0):
    """Fill every parameter of ``module`` with seeded normal noise (in place).

    Paper inits are often zeros/ones, which hide bugs; tests randomise first.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * scale)
    return module


def assert_grads_reach_every_parameter(module, x, loss_fn=None):
    """Backprop ``loss_fn(module(x))`` (default: sum of squares); every parameter and
    ``x`` (if it requires grad) get a finite, non-zero gradient."""
    out = module(x)
    loss = out.square().sum() if loss_fn is None else loss_fn(out)
    loss.backward()
    named = list(module.named_parameters())
    if x.requires_grad:
        named.append(('input', x))
    for name, p in named:
        if not p.requires_grad:
            continue
        assert p.grad is not None, f'{name} got no gradient'
        assert torch.isfinite(p.grad).all(), f'{name} has a non-finite gradient'
        assert p.grad.abs().sum() > 0, f'{name} has an all-zero gradient'
    return out


def build_plugin_in_scope(cfg, scope, in_channels, postfix='_1'):
    """Build a plugin the way mmdet/mmseg ResNet does, with ``scope`` as default scope."""
    with DefaultScope.overwrite_default_scope(scope):
        return build_plugin_layer(dict(cfg), postfix=postfix, in_channels=in_channels)


def mmdet_resnet(plugins=None, depth=50, **kwargs):
    """mmdet's ResNet with ``plugins`` (``dcn``, ``init_cfg`` etc. through ``kwargs``)."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    register_all_modules(init_default_scope=False)
    return MODELS.build(dict(type='ResNet', depth=depth, plugins=plugins, **kwargs))


def mmseg_resnet(plugins=None, depth=50, **kwargs):
    """mmseg's ResNetV1c with ``plugins`` (the DeepLab backbone)."""
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules
    register_all_modules(init_default_scope=False)
    return MODELS.build(dict(type='ResNetV1c', depth=depth, plugins=plugins, **kwargs))


#: An init_cfg like a real backbone's, that overwrites every conv and norm it reaches.
HOST_INIT_CFG = [
    dict(type='Kaiming', layer='Conv2d'),
    dict(type='Constant', val=0.5, layer=['_BatchNorm', 'GroupNorm']),
]
