"""Argument checks shared by the modules: each error names the module, the argument,
what was expected and the value given."""
from torch.nn.modules.utils import _pair


def _is_int(value, minimum):
    return not isinstance(value, bool) and isinstance(value, int) and value >= minimum


def check_int(owner, name, value, minimum=1):
    """Return ``value`` if it is an int (not a bool) ``>= minimum``, else raise ``ValueError``."""
    if not _is_int(value, minimum):
        expected = 'a positive int' if minimum == 1 else f'an int >= {minimum}'
        raise ValueError(f'{owner}: {name} must be {expected}, got {value!r}')
    return value


def check_int_pair(owner, name, value, minimum=1):
    """Return ``value`` as a pair of ints ``>= minimum`` (an int is repeated), else raise."""
    pair = _pair(value)
    if len(pair) != 2 or not all(_is_int(v, minimum) for v in pair):
        raise ValueError(f'{owner}: {name} must be an int >= {minimum} or a pair of them, '
                         f'got {value!r}')
    return tuple(pair)


def check_cfg(owner, name, cfg, allow_none=True):
    """Raise ``ValueError`` unless ``cfg`` is an mmcv layer config (a dict with ``type``)."""
    if cfg is None and allow_none:
        return
    if not isinstance(cfg, dict) or 'type' not in cfg:
        expected = 'a dict with a "type" key' + (' or None' if allow_none else '')
        raise ValueError(f'{owner}: {name} must be {expected}, got {cfg!r}')
