"""Plugins on any registered backbone, after any named submodule.

mmdet's and mmseg's ``ResNet`` take plugins only inside ``Bottleneck`` blocks;
``BasicBlock``, ``Darknet``, ``CSPDarknet`` and ``HRNet`` take none.
``PluggedBackbone`` builds any registered backbone unchanged (child ``backbone``,
plain keys) and runs plugins (``plugins.<site>.<abbr><postfix>``, ``<site>``
the submodule's name with dots as underscores) on the outputs of submodules
chosen by name, through a picklable forward hook (``deepcopy`` and
``torch.save`` work; ``forward`` re-hooks a replaced submodule). One seeded dry
forward at construction (eval mode, ``no_grad``, modes and global RNG
untouched) gives each plugin's ``in_channels`` and checks that they keep the
shape.
"""
import copy
import difflib
import fnmatch
import inspect

import torch
from mmcv.cnn import build_plugin_layer
from mmengine.model import BaseModule, ModuleDict, Sequential
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from mmplug.layers import check_bool, is_tracing
from mmplug.registry import MODELS, close_type_names

__all__ = ['PluggedBackbone']

_PLUGIN_KEYS = ('cfg', 'after')


def _site_key(name):
    """``'layer2.0'`` -> ``'layer2_0'``: a ModuleDict key may not hold dots."""
    return name.replace('.', '_')


def _matches(pattern, name):
    """fnmatch per dotted component: ``*`` never crosses a dot."""
    pattern_parts, name_parts = pattern.split('.'), name.split('.')
    return len(pattern_parts) == len(name_parts) and all(
        fnmatch.fnmatchcase(part, pat) for part, pat in zip(name_parts, pattern_parts))


def _describe(value):
    if isinstance(value, torch.Tensor):
        return f'a {value.dim()}-D tensor of shape {tuple(value.shape)}'
    if isinstance(value, (list, tuple)):
        return f'a {type(value).__name__} of {len(value)} items'
    return f'a {type(value).__name__}'


def _children_hint(module, name):
    # A ModuleList/ModuleDict is never called itself: point at its items.
    children = [f'{name}.{child}' + ('.*' if isinstance(sub, (nn.ModuleList, nn.ModuleDict))
                                     else '')
                for child, sub in module.named_children()]
    if not children:
        return ''
    shown = ', '.join(repr(c) for c in children[:8]) + (', ...' if len(children) > 8 else '')
    return f'; select submodules inside it instead, e.g. among its children {shown}'


def _no_match_message(pattern, names, backbone):
    depth = pattern.count('.')
    candidates = [n for n in names if n.count('.') == depth] or names
    close = difflib.get_close_matches(pattern, candidates, n=6, cutoff=0.3)
    top = [n for n, _ in backbone.named_children()]
    return (f'PluggedBackbone: pattern {pattern!r} matches no submodule of '
            f'{type(backbone).__name__}. Close names: {close}. Top-level submodules: {top}. '
            f"A '*' matches within one dotted component ('layer2.*' selects the children "
            f"of layer2, not their descendants).")


def _plugin_class(layer_type):
    if inspect.isclass(layer_type):
        return layer_type
    with MODELS.switch_scope_and_registry(None) as registry:
        plugin_cls = registry.get(layer_type)
        scope = registry.scope
    if plugin_cls is None:
        raise ValueError(
            f'PluggedBackbone: plugin type {layer_type!r} is not registered in scope '
            f"{scope!r} or its parents (close names: {close_type_names(layer_type, registry)}); "
            f"import the package that registers it (custom_imports=dict(imports=['mmplug']) "
            f"in a config)")
    return plugin_cls


def _build_backbone(cfg):
    layer_type = cfg['type']
    if isinstance(layer_type, str):
        with MODELS.switch_scope_and_registry(None) as registry:
            found = registry.get(layer_type) is not None
            scope = registry.scope
            close = close_type_names(layer_type, registry)
        if not found:
            raise ValueError(
                f'PluggedBackbone: backbone type {layer_type!r} is not registered in scope '
                f"{scope!r} (close names: {close}); build with the default scope that has it "
                f"(default_scope='mmdet' "
                f"in the config, or DefaultScope.overwrite_default_scope('mmdet')) or name "
                f"the scope in the type, e.g. 'mmdet.{layer_type}'")
    return MODELS.build(cfg)


class _RunPlugins:
    """Forward hook running a site's plugins; an object, so ``deepcopy`` copies ``plugins``."""

    def __init__(self, plugins, key):
        self.plugins = plugins
        self.key = key

    def __call__(self, module, args, output):
        return self.plugins[self.key](output)


@MODELS.register_module()
class PluggedBackbone(BaseModule):
    """Any registered backbone with plugins after submodules chosen by name.

    Args:
        backbone (dict | nn.Module): Config of the inner backbone, built with
            ``MODELS.build`` in the current default scope (a scoped type such as
            ``'mmdet.Darknet'`` works anywhere), or a built module.
        plugins (list[dict]): Each ``dict(cfg=..., after=...)``. ``cfg`` is a
            plugin config as for mmdet's ``ResNet`` (optional ``postfix``;
            ``in_channels`` is inferred). ``after`` is a submodule name or a list
            of them, fnmatch patterns per dotted component (``'layer2.*'`` is every
            block of ``layer2``, ``'layer[234].*'`` of stages 2-4). Every pattern
            must match; each selected submodule must run once per forward and
            return one ``[N, C, H, W]`` tensor. Plugins at one submodule run in
            the order listed.
        freeze_plugins (bool | str): ``False``: plugins train. ``'follow'``: on
            construction and ``train()``, a plugin after a submodule whose
            parameters are all frozen is frozen too, as mmdet's in-block plugins
            are. ``True``: all plugins frozen. Defaults to False.
        plugin_norm_eval (bool): Put the plugins' BatchNorms in eval mode on
            ``train()`` (mmplug's plugins, whose BNs otherwise follow the plugin's
            own mode, get ``norm_eval = True``). Defaults to False.
        probe_shape (tuple[int]): ``(C, H, W)`` of the dry-forward input.
            Defaults to (3, 64, 64).
        init_cfg (dict | list[dict], optional): Init config of the wrapper; the
            inner backbone's (e.g. ``Pretrained``) goes in its config. Defaults
            to None.

    Note:
        State dict: ``backbone.<plain key>`` plus ``plugins.<site>.*``. A plain
        detector checkpoint loads with ``load_checkpoint(model, path,
        strict=False, revise_keys=[(r'^backbone\\.', 'backbone.backbone.')])``.
        Names in mmdet 3.3 / mmseg 1.2 backbones:

        * ResNet / ResNetV1c: blocks ``layer{1-4}.{i}``; a block's ``relu``
          runs twice and is refused.
        * Darknet-53: ``conv_res_block{1-5}`` with ``conv`` and ``res{i}``.
        * CSPDarknet: ``stage{1-4}.0`` the stride-2 conv, ``stage{1-3}.1`` and
          ``stage4.2`` the CSPLayers, ``stage*.*.blocks.*`` their bottlenecks.
        * HRNet: ``layer1.*``; an HRModule returns a list and is refused, its
          branches ``stage{2-4}.{m}.branches.{b}`` return tensors.

    Example:
        >>> import torch
        >>> from mmdet.utils import register_all_modules
        >>> from mmengine.registry import DefaultScope
        >>> from mmplug.backbones.plugged_backbone import PluggedBackbone
        >>> register_all_modules(init_default_scope=False)
        >>> with DefaultScope.overwrite_default_scope('mmdet'):
        ...     model = PluggedBackbone(
        ...         backbone=dict(type='ResNet', depth=18, out_indices=(0, 1, 2, 3)),
        ...         plugins=[dict(cfg=dict(type='SGE', groups=8), after='layer[234].*')])
        >>> model.plugin_sites
        ('layer2.0', 'layer2.1', 'layer3.0', 'layer3.1', 'layer4.0', 'layer4.1')
        >>> [tuple(o.shape) for o in model(torch.randn(1, 3, 64, 64))]
        [(1, 64, 16, 16), (1, 128, 8, 8), (1, 256, 4, 4), (1, 512, 2, 2)]

        In configs (``custom_imports=dict(imports=['mmplug'])``)::

            # ResNet-18: SGE after every block of stages 2-4
            backbone=dict(
                type='PluggedBackbone',
                backbone=dict(type='ResNet', depth=18, frozen_stages=1, norm_eval=True,
                              init_cfg=dict(type='Pretrained',
                                            checkpoint='torchvision://resnet18')),
                plugins=[dict(cfg=dict(type='SGE', groups=8), after='layer[234].*')])
            # YOLOv3 (Darknet-53): after the residual blocks of the last three stages;
            # YOLOX (CSPDarknet): after each CSPLayer; HRNet: after every branch
            after='conv_res_block[345].res*'
            after=['stage[123].1', 'stage4.2']
            after='stage[234].*.branches.*'
    """

    def __init__(self, backbone, plugins, *, freeze_plugins=False, plugin_norm_eval=False,
                 probe_shape=(3, 64, 64), init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        self._check_args(backbone, plugins, freeze_plugins, plugin_norm_eval, probe_shape)
        self.freeze_plugins = freeze_plugins
        self.plugin_norm_eval = plugin_norm_eval
        self.backbone = backbone if isinstance(backbone, nn.Module) else _build_backbone(backbone)

        # Which submodules get which plugin configs, in module order.
        names = [name for name, _ in self.backbone.named_modules() if name]
        site_cfgs = {}
        for entry in plugins:
            after = [entry['after']] if isinstance(entry['after'], str) else entry['after']
            selected = []
            for pattern in after:
                matched = [name for name in names if _matches(pattern, name)]
                if not matched:
                    raise ValueError(_no_match_message(pattern, names, self.backbone))
                selected += [name for name in matched if name not in selected]
            for name in selected:
                site_cfgs.setdefault(name, []).append(entry['cfg'])
        self._site_names = tuple(name for name in names if name in site_cfgs)
        keys = {}
        for name in self._site_names:
            if _site_key(name) in keys:
                raise ValueError(
                    f'PluggedBackbone: submodules {keys[_site_key(name)]!r} and {name!r} '
                    f'share the plugin key {_site_key(name)!r}; select only one of them')
            keys[_site_key(name)] = name

        features = self._probe(probe_shape)

        self.plugins = ModuleDict()
        for name in self._site_names:
            channels = features[name].shape[1]
            site = Sequential()
            for cfg in site_cfgs[name]:
                cfg = copy.deepcopy(dict(cfg))
                postfix = cfg.pop('postfix', '')
                cfg['type'] = _plugin_class(cfg['type'])
                layer_name, layer = build_plugin_layer(cfg, postfix=postfix, in_channels=channels)
                if layer_name in site._modules:
                    raise ValueError(
                        f'PluggedBackbone: two plugins named {layer_name!r} after {name!r}; give '
                        f"them distinct 'postfix' in cfg (e.g. postfix='_a' and postfix='_b')")
                site.add_module(layer_name, layer)
            self.plugins[_site_key(name)] = site
        self._check_plugins_keep_shape(features)

        self._hooked = {}
        self._attach_hooks()
        self._apply_plugin_modes(self.training)

    @staticmethod
    def _check_args(backbone, plugins, freeze_plugins, plugin_norm_eval, probe_shape):
        if not isinstance(backbone, nn.Module) and not (
                isinstance(backbone, dict) and 'type' in backbone):
            raise ValueError('PluggedBackbone: backbone must be a config dict with a "type" or '
                             f'an nn.Module, got {backbone!r}')
        if not isinstance(plugins, (list, tuple)) or not plugins:
            raise ValueError('PluggedBackbone: plugins must be a non-empty list of '
                             f'dict(cfg=..., after=...), got {plugins!r}')
        for entry in plugins:
            if not isinstance(entry, dict) or set(entry) != set(_PLUGIN_KEYS):
                raise ValueError(
                    'PluggedBackbone: each plugin must be dict(cfg=dict(type=...), '
                    f"after='name' or [...]) with exactly those keys, got {entry!r} (mmdet "
                    "ResNet's stages/position do not apply: select submodules by name)")
            cfg, after = entry['cfg'], entry['after']
            if not isinstance(cfg, dict) or 'type' not in cfg:
                raise ValueError(f'PluggedBackbone: plugin cfg must be a dict with a "type", '
                                 f'got {cfg!r}')
            if 'in_channels' in cfg:
                raise ValueError(f'PluggedBackbone: plugin cfg {cfg!r} gives in_channels; it is '
                                 'measured at each selected submodule, remove it')
            if not isinstance(cfg.get('postfix', ''), (int, str)):
                raise ValueError(f'PluggedBackbone: postfix must be a str or int, got '
                                 f'{cfg["postfix"]!r}')
            patterns = [after] if isinstance(after, str) else after
            if not isinstance(patterns, (list, tuple)) or not patterns or not all(
                    isinstance(p, str) and p for p in patterns):
                raise ValueError(
                    'PluggedBackbone: after must be a submodule name or pattern, or a non-empty '
                    f"list of them (e.g. ['layer2.*', 'layer3.1']), got {after!r}")
        if freeze_plugins is not False and freeze_plugins is not True \
                and freeze_plugins != 'follow':
            raise ValueError("PluggedBackbone: freeze_plugins must be False, True or 'follow', "
                             f'got {freeze_plugins!r}')
        check_bool('PluggedBackbone', 'plugin_norm_eval', plugin_norm_eval)
        if not isinstance(probe_shape, (list, tuple)) or len(probe_shape) != 3 or not all(
                isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in probe_shape):
            raise ValueError('PluggedBackbone: probe_shape must be (C, H, W), three positive '
                             f'ints, got {probe_shape!r}')

    def _probe(self, probe_shape):
        """One dry forward; the single 4-D output of every selected submodule."""
        records = {name: [] for name in self._site_names}
        handles = [
            self.backbone.get_submodule(name).register_forward_hook(
                lambda module, args, output, name=name: records[name].append(output))
            for name in self._site_names
        ]
        modes = {module: module.training for module in self.backbone.modules()}
        ref = next((t for t in list(self.backbone.parameters()) + list(self.backbone.buffers())
                    if t.is_floating_point()), None)
        device, dtype = (ref.device, ref.dtype) if ref is not None else ('cpu', torch.float32)
        gen = torch.Generator().manual_seed(0)
        x = torch.randn((1, *probe_shape), generator=gen).to(device=device, dtype=dtype)
        try:
            self.backbone.eval()
            with torch.no_grad():
                self.backbone(x)
        except Exception as err:
            raise RuntimeError(
                f'PluggedBackbone: the dry forward of {type(self.backbone).__name__} on a '
                f'{tuple(x.shape)} input failed ({type(err).__name__}: {err}); pass a '
                'probe_shape=(C, H, W) the backbone accepts') from err
        finally:
            for handle in handles:
                handle.remove()
            for module, mode in modes.items():
                module.training = mode

        features = {}
        for name, outputs in records.items():
            module = self.backbone.get_submodule(name)
            if not outputs:
                raise ValueError(f'PluggedBackbone: submodule {name!r} '
                                 f'({type(module).__name__}) is not called in the forward pass; '
                                 'a plugin after it would never run')
            if len(outputs) > 1:
                raise ValueError(
                    f'PluggedBackbone: submodule {name!r} ({type(module).__name__}) is called '
                    f'{len(outputs)} times in one forward (a shared layer, like a block\'s '
                    'ReLU); select a submodule that runs once')
            output = outputs[0]
            if not isinstance(output, torch.Tensor) or output.dim() != 4:
                raise ValueError(
                    f'PluggedBackbone: submodule {name!r} ({type(module).__name__}) returns '
                    f'{_describe(output)}; plugins need one [N, C, H, W] tensor'
                    + _children_hint(module, name))
            features[name] = output
        return features

    def _check_plugins_keep_shape(self, features):
        modes = {module: module.training for module in self.plugins.modules()}
        try:
            self.plugins.eval()
            with torch.no_grad():
                for name in self._site_names:
                    out = self.plugins[_site_key(name)](features[name])
                    if not isinstance(out, torch.Tensor) or out.shape != features[name].shape:
                        raise ValueError(
                            f'PluggedBackbone: the plugins after {name!r} turn '
                            f'{_describe(features[name])} into {_describe(out)}; plugins must '
                            'keep the shape of the feature map')
        finally:
            for module, mode in modes.items():
                module.training = mode

    def _attach_hooks(self):
        """Hook each selected submodule once; re-hook one that was replaced since."""
        for name in self._site_names:
            module = self.backbone.get_submodule(name)
            if self._hooked.get(name) is not module:
                module.register_forward_hook(_RunPlugins(self.plugins, _site_key(name)))
                self._hooked[name] = module

    def _apply_plugin_modes(self, mode):
        for name in self._site_names:
            site = self.plugins[_site_key(name)]
            freeze = self.freeze_plugins is True
            if self.freeze_plugins == 'follow':
                host = list(self.backbone.get_submodule(name).parameters())
                freeze = bool(host) and not any(p.requires_grad for p in host)
            if freeze:
                site.eval()
                for param in site.parameters():
                    param.requires_grad = False
        if mode and self.plugin_norm_eval:
            for site in self.plugins.values():
                for plugin in site.children():
                    plugin.norm_eval = True  # mmplug's plugins keep their BNs in eval then
            for module in self.plugins.modules():
                if isinstance(module, _BatchNorm):
                    module.eval()

    @property
    def plugin_sites(self):
        """Names of the submodules that have plugins after them, in module order."""
        return self._site_names

    def train(self, mode=True):
        """Train mode as the inner backbone sets it (``frozen_stages``,
        ``norm_eval``); plugins as ``freeze_plugins``/``plugin_norm_eval`` say."""
        super().train(mode)
        self._apply_plugin_modes(mode)
        return self

    def forward(self, x):
        if not is_tracing():  # the hooks attached at construction are traced through
            self._attach_hooks()
        return self.backbone(x)
