"""Check a config's model types against the registries before anything is built.

A misspelled type otherwise fails late: in ``build_plugin_layer`` with "Cannot
find None in registry", elsewhere with mmengine's "X is not in the registry",
both without a hint. ``check_registered_types`` names, for each unknown type
in ``cfg.model``, its config key, the scope it was looked up in and the closest
registered names, and reminds of ``custom_imports`` for mmplug's types. A type
counts as known when ``MODELS``, ``TASK_UTILS``, ``WEIGHT_INITIALIZERS`` or
``mmcv.ops`` (``nms``, ``roi_layer``) resolves it.
"""
import ast
import functools
import importlib.util
import os
import os.path as osp
from importlib import import_module

from mmengine.config.utils import MODULE2PACKAGE
from mmengine.registry import MODELS, TASK_UTILS, WEIGHT_INITIALIZERS, Registry

from mmplug.registry import close_names, close_type_names

__all__ = ['UnknownTypeError', 'check_model_types', 'check_registered_types']

# Keys built from TASK_UTILS (the rest of `model` from MODELS, `init_cfg` WEIGHT_INITIALIZERS).
_TASK_UTILS_KEYS = frozenset({
    'assigner', 'sampler', 'bbox_coder', 'prior_generator', 'anchor_generator',
    'point_generator', 'iou_calculator', 'match_costs', 'match_cost', 'coder'
})
# Keys whose `type` names an mmcv.ops attribute, not a registered type.
_MMCV_OPS_KEYS = frozenset({'nms', 'roi_layer'})
_ROOTS = {'model': MODELS, 'task util': TASK_UTILS, 'weight initializer': WEIGHT_INITIALIZERS}
_MMPLUG_DIR = osp.dirname(osp.dirname(osp.abspath(__file__)))


class UnknownTypeError(KeyError, ValueError):
    """Unknown config types: a ``KeyError`` (as mmengine's) and a ``ValueError``.

    ``entries`` lists ``(config key, name, suggestions)`` per unknown type.
    """

    def __init__(self, message, entries):
        super().__init__(message)
        self.message = message
        self.entries = entries

    def __str__(self):
        return self.message


@functools.lru_cache(maxsize=None)
def _mmplug_types():
    """``{registered name: source file}`` of mmplug, read from the source (no import)."""
    found = {}
    for path in sorted(_python_files(_MMPLUG_DIR)):
        try:
            with open(path, encoding='utf-8') as f:
                tree = ast.parse(f.read())
        except (OSError, SyntaxError):
            continue
        for node in ast.walk(tree):
            if not isinstance(node, ast.ClassDef):
                continue
            for deco in node.decorator_list:
                if isinstance(deco, ast.Call) and getattr(deco.func, 'attr',
                                                          None) == 'register_module':
                    names = [kw.value.value for kw in deco.keywords if kw.arg == 'name'
                             and isinstance(kw.value, ast.Constant)]
                    for name in names or [node.name]:
                        found[name] = osp.relpath(path, osp.dirname(_MMPLUG_DIR))
    return found


def _python_files(root):
    for folder, _, files in os.walk(root):
        yield from (osp.join(folder, f) for f in files if f.endswith('.py'))


def _find_scope(root, scope):
    """The registry of ``root``'s tree with ``scope`` (importing ``<scope>.registry``)."""
    if scope is None or scope == root.scope:
        return root
    try:
        import_module(f'{scope}.registry')
    except Exception:  # not installed, or no registry module: then it is not in the tree
        pass
    return next((r for r in _all_registries(root) if r.scope == scope), None)


def _scoped(root, scope):
    """The registry of ``scope`` in ``root``'s tree, else ``root`` (``is None``: empty is falsy)."""
    registry = _find_scope(root, scope)
    return root if registry is None else registry


def _resolves(registry, name):
    try:
        return registry.get(name) is not None
    except Exception:  # mmengine raises RuntimeError for a dotted path it cannot import
        return False


def _mmcv_ops():
    try:
        return import_module('mmcv.ops')
    except Exception:  # mmcv without compiled ops: nothing to check against
        return None


class _Checker:

    def __init__(self, custom_imports):
        self.custom_imports = custom_imports
        self.entries = []
        self.lines = []

    def walk(self, node, path, key, scope, root):
        if isinstance(node, dict):
            scope = node.get('_scope_', scope)
            if isinstance(node.get('type'), str):
                self.check(node['type'], f'{path}.type', key, scope, root)
            for k, v in node.items():
                if k == 'type':
                    continue
                child_root = WEIGHT_INITIALIZERS if k == 'init_cfg' else (
                    TASK_UTILS if k in _TASK_UTILS_KEYS and root is MODELS else root)
                self.walk(v, f'{path}.{k}', k, scope, child_root)
        elif isinstance(node, (list, tuple)):
            for i, v in enumerate(node):
                self.walk(v, f'{path}[{i}]', key, scope, root)

    def check(self, name, path, key, scope, root):
        ops = _mmcv_ops() if key in _MMCV_OPS_KEYS else None
        if key in _MMCV_OPS_KEYS and (ops is None or hasattr(ops, name)):
            return
        for other in [root] + [r for r in _ROOTS.values() if r is not root]:
            registry = _scoped(other, scope)
            if _resolves(registry, name):
                return
        self.report(name, path, key, scope, root, ops)

    def report(self, name, path, key, scope, root, ops):
        prefix, real = Registry.split_scope_key(name)
        registry = _scoped(root, scope)
        hints = []
        if ops is not None:
            where = f'mmcv.ops (config key {key!r} names an mmcv.ops function or class)'
            close = close_names(name, [n for n in dir(ops) if not n.startswith('_')])
        elif prefix is not None and _find_scope(root, prefix) is None:
            scopes = sorted(r.scope for r in _all_registries(root))
            where = f'any scope: scope {prefix!r} of {name!r} is unknown (known: {scopes})'
            if importlib.util.find_spec(prefix) is None:
                where = f'any scope: package {prefix!r} of {name!r} is not installed'
            close = [f'{s}.{real}' for s in close_names(prefix, scopes)]
        else:
            if prefix is not None:
                registry = _find_scope(root, prefix)
            where = (f"the {registry.name!r} registry of scope {registry.scope!r}"
                     + (' or its parents' if registry.parent is not None else ''))
            close = close_type_names(real, registry)
            if prefix is not None:
                close = [f'{prefix}.{c}' if c in registry.module_dict else c for c in close]
            # Registered under another scope: it needs the prefix.
            others = [f'{r.scope}.{real}' for r in _installed_registries(root)
                      if r is not registry and real in r.module_dict]
            if others:
                hints.append(f'registered in another scope, name it with the prefix: '
                             f'{others}')
        plugged = _mmplug_types()
        for candidate in [real] + [c.split('.')[-1] for c in close]:
            if candidate in plugged and not _resolves(MODELS, candidate):
                hints.append(f'{candidate!r} is an mmplug module ({plugged[candidate]}) but '
                             "is not registered: add custom_imports=dict(imports=['mmplug'], "
                             'allow_failed_imports=False) to the config (or `import mmplug` '
                             'before building)')
                break
        if any(c.split('.')[-1] in plugged for c in [real] + close) and not any(
                m == 'mmplug' or m.startswith('mmplug.') for m in self.custom_imports):
            hints.append("mmplug's types need custom_imports=dict(imports=['mmplug'], "
                         'allow_failed_imports=False) in the config to build outside '
                         "mmplug's tools")
        hints = list(dict.fromkeys(hints))
        line = f'  {path} = {name!r} is not in {where}. '
        line += f'Did you mean {" or ".join(repr(c) for c in close)}?' if close else \
            'No registered name is close.'
        line += ''.join(f' Note: {h}.' for h in hints)
        self.lines.append(line)
        self.entries.append((path, name, close))


def _all_registries(root):
    out, stack = [], [root]
    while stack:
        registry = stack.pop()
        out.append(registry)
        stack.extend(registry.children.values())
    return out


def _installed_registries(root):
    """Every populated registry of ``root``'s kind of the installed packages (error path only)."""
    for scope in MODULE2PACKAGE:
        if scope != root.scope and importlib.util.find_spec(scope) is not None:
            _find_scope(root, scope)
    registries = _all_registries(root)
    for registry in registries:
        try:
            registry.import_from_location()
        except Exception:  # a broken optional package: its names are just not offered
            pass
    return registries


def _custom_imports(cfg):
    imports = (cfg.get('custom_imports') or {}).get('imports', [])
    return [imports] if isinstance(imports, str) else list(imports)


def _raise(checker, header):
    if checker.entries:
        raise UnknownTypeError('\n'.join([header] + checker.lines), checker.entries)


def check_model_types(model_cfg, scope=None, *, key='model', custom_imports=('mmplug', )):
    """Raise :class:`UnknownTypeError` if ``model_cfg`` names a type no registry resolves.

    For code that builds a model from a config dict itself.

    Args:
        model_cfg (dict): A model config (nested dicts and lists are walked).
        scope (str, optional): Registry scope, e.g. ``'mmdet'``; ``None`` is
            mmengine's root; ``_scope_`` switches it for a subtree. Defaults to
            None.
        key (str): Config key of ``model_cfg``, for the message. Defaults to
            ``'model'``.
        custom_imports (Sequence[str]): Modules the config imports, for the
            ``custom_imports`` reminder. Defaults to ``('mmplug',)``.

    Example:
        >>> from mmplug.engine.config_check import check_model_types
        >>> check_model_types(dict(type='ResNet', depth=50, plugins=[
        ...     dict(cfg=dict(type='SEE'), position='after_conv3')]), scope='mmdet')
        Traceback (most recent call last):
        ...
        mmplug.engine.config_check.UnknownTypeError: ... model.plugins[0].cfg.type = 'SEE' ...
    """
    checker = _Checker(list(custom_imports))
    checker.walk(model_cfg, key, None, scope, MODELS)
    _raise(checker, f'Unknown type(s) in {key} (scope {scope or MODELS.scope!r}):')


def check_registered_types(cfg):
    """Raise :class:`UnknownTypeError` if ``cfg.model`` names a type no registry resolves.

    Run it after loading the config and ``--cfg-options``. Types are looked up in
    the config's ``default_scope`` (``'scope.Name'`` in that scope); the error lists
    each unknown type with its config key and the closest names, case-insensitive
    included (``'sge'`` -> ``'SGE'``).

    Example:
        >>> from mmengine.config import Config
        >>> from mmplug.engine.config_check import check_registered_types
        >>> cfg = Config.fromfile('configs/sge/faster-rcnn_r50-sge-c3-c5_fpn_1x_coco.py')
        >>> check_registered_types(cfg)  # passes: every type is registered
        >>> cfg.model.neck.type = 'FNP'
        >>> check_registered_types(cfg)
        Traceback (most recent call last):
        ...
        mmplug.engine.config_check.UnknownTypeError: ... model.neck.type = 'FNP' ...
    """
    model = cfg.get('model')
    if model is None:
        return
    scope = cfg.get('default_scope')
    checker = _Checker(_custom_imports(cfg))
    checker.walk(model, 'model', 'model', scope, MODELS)
    filename = getattr(cfg, 'filename', None)
    source = f' of {filename}' if filename else ''
    _raise(checker, f'Unknown type(s) in the model config{source} '
                    f'(default_scope={scope!r}):')
