"""Argument checks shared by the modules: each error names the module, the argument,
what was expected and the value given."""
import torch
from mmengine.registry import MODELS
from torch.nn.modules.utils import _pair


def _is_int(value, minimum):
    return not isinstance(value, bool) and isinstance(value, int) and value >= minimum


def check_int(owner, name, value, minimum=1):
    """Return ``value`` if it is an int (not a bool) ``>= minimum``, else raise ``ValueError``."""
    if not _is_int(value, minimum):
        expected = 'a positive int' if minimum == 1 else f'an int >= {minimum}'
        raise ValueError(f'{owner}: {name} must be {expected}, got {value!r}')
    return value


def check_bool(owner, name, value):
    """Return ``value`` if it is a bool, else raise ``ValueError``."""
    if not isinstance(value, bool):
        raise ValueError(f'{owner}: {name} must be True or False (a bool), got {value!r}')
    return value


def check_odd(owner, name, value, why='the map keeps its size'):
    """Return ``value`` if it is a positive odd int, else raise ``ValueError`` saying ``why``."""
    if not _is_int(value, 1) or value % 2 == 0:
        raise ValueError(f'{owner}: {name} must be a positive odd int ({why}), got {value!r}')
    return value


def check_divisible(owner, name, value, divisor_name, divisor):
    """Raise ``ValueError`` unless ``divisor`` divides ``value`` (both already checked ints)."""
    if value % divisor:
        raise ValueError(f'{owner}: {name} ({value}) must be divisible by {divisor_name} '
                         f'({divisor}); choose {divisor_name} among the divisors of {value}')


def check_int_pair(owner, name, value, minimum=1):
    """Return ``value`` as a pair of ints ``>= minimum`` (an int is repeated), else raise."""
    pair = _pair(value)
    if len(pair) != 2 or not all(_is_int(v, minimum) for v in pair):
        raise ValueError(f'{owner}: {name} must be an int >= {minimum} or a pair of them, '
                         f'got {value!r}')
    return tuple(pair)


def check_int_tuple(owner, name, value, meaning, min_len=1):
    """Return ``value`` as a tuple if it is a list/tuple of at least ``min_len`` positive
    ints, else raise ``ValueError`` (``meaning``: what the entries are, for the message)."""
    if not isinstance(value, (list, tuple)) or len(value) < min_len or not all(
            _is_int(v, 1) for v in value):
        expected = 'a non-empty tuple of' if min_len == 1 else f'a tuple of at least {min_len}'
        raise ValueError(f'{owner}: {name} must be {expected} positive ints ({meaning}), '
                         f'got {value!r}')
    return tuple(value)


def check_conv_channels(owner, in_channels, out_channels, groups):
    """``in_channels``, ``out_channels`` and ``groups`` positive ints, ``groups``
    dividing both (the checks ``nn.Conv2d`` makes, with the module's name)."""
    for name, value in (('in_channels', in_channels), ('out_channels', out_channels),
                        ('groups', groups)):
        check_int(owner, name, value)
    if in_channels % groups or out_channels % groups:
        raise ValueError(f'{owner}: groups ({groups}) must divide in_channels '
                         f'({in_channels}) and out_channels ({out_channels})')


def check_cfg(owner, name, cfg, allow_none=True):
    """Raise ``ValueError`` unless ``cfg`` is an mmcv layer config: a dict whose
    ``type`` is a name (str) or a class/function, as mmengine's builders take."""
    if cfg is None and allow_none:
        return
    if not isinstance(cfg, dict) or not (isinstance(cfg.get('type'), str)
                                         or callable(cfg.get('type'))):
        expected = 'a dict with a "type" key (a str or a class)' + \
            (' or None' if allow_none else '')
        raise ValueError(f'{owner}: {name} must be {expected}, got {cfg!r}')
    if isinstance(cfg['type'], str):
        # build_from_cfg's lookup; mmcv's own miss message names neither type nor argument.
        with MODELS.switch_scope_and_registry(cfg.get('_scope_')) as registry:
            found = registry.get(cfg['type']) is not None
        if not found:
            raise ValueError(f'{owner}: {name} type {cfg["type"]!r} is not a registered layer '
                             f'(scope {registry.scope!r}), got {cfg!r}')


def check_input(owner, x, channels):
    """Raise unless ``x`` is a floating-point ``[N, channels, H, W]`` tensor.

    For the first line of a ``forward``: plain comparisons on ``x.dim()``,
    ``x.dtype`` and ``x.shape`` (no tensor ops), so tracing, ``torch.compile``
    and ONNX export see no extra graph. Anything but a tensor (e.g. a neck's tuple of
    levels) and an integer/bool dtype raise ``TypeError``; a wrong ndim or channel
    count ``ValueError``.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f'{owner}: expected a [N, {channels}, H, W] tensor, got '
                        f'{type(x).__name__}')
    if x.dim() != 4:
        raise ValueError(f'{owner}: expected a 4-D input [N, {channels}, H, W], got input '
                         f'shape {tuple(x.shape)}')
    if not x.is_floating_point():
        raise TypeError(f'{owner}: expected a floating-point input, got input dtype {x.dtype}')
    if x.shape[1] != channels:
        raise ValueError(f'{owner}: expected {channels} input channels, got {x.shape[1]} '
                         f'(input shape {tuple(x.shape)})')


class InputSizeError(ValueError, RuntimeError):
    """An input too small for a layer's kernel: a ``ValueError`` with a message that
    says what was expected, and a ``RuntimeError`` as ``nn.Conv2d`` raises in that
    case (so code written against ``nn.Conv2d`` still catches it)."""


def check_conv_input(owner, x, channels, kernel_size, padding, dilation):
    """:func:`check_input`, and that the padded input holds one dilated kernel.

    ``kernel_size``, ``padding`` and ``dilation`` are pairs (``padding`` may
    also be ``'same'`` or ``'valid'``, as for ``nn.Conv2d``). Raises
    :class:`InputSizeError` where ``nn.Conv2d`` raises a ``RuntimeError``.
    """
    check_input(owner, x, channels)
    if padding == 'same':
        return
    padding = (0, 0) if padding == 'valid' else padding
    size = x.shape[2:]
    if any(s + 2 * p < d * (k - 1) + 1 for s, k, p, d in zip(size, kernel_size, padding,
                                                             dilation)):
        raise InputSizeError(
            f'{owner}: input {size[0]}x{size[1]} too small for kernel_size {tuple(kernel_size)} '
            f'with padding {tuple(padding)} and dilation {tuple(dilation)} (needs H + 2 * '
            f'padding >= dilation * (kernel_size - 1) + 1 on each axis; input shape '
            f'{tuple(x.shape)})')
