"""Safe (``weights_only=True``) loading of mmengine checkpoints.

Since torch 2.6 ``torch.load`` defaults to ``weights_only=True``, which rebuilds
only tensors, containers, primitives and globals allow-listed with
``torch.serialization.add_safe_globals``. mmengine 0.10.7 loads without a
``weights_only`` argument (``load_from`` and ``resume``), but its checkpoints
hold ``HistoryBuffer`` objects (``message_hub['log_scalars']``) whose state
pickles their statistics methods as ``getattr(HistoryBuffer, 'min')``, numpy
arrays, and numpy scalars (``runtime_info['eta']``, ``best_score``), so loading
fails with "Unsupported global".

:data:`MMENGINE_SAFE_GLOBALS` allow-lists exactly those globals
(:func:`allow_mmengine_checkpoints`, called by ``import mmplug``); nothing is
patched and any other class or function is still refused. ``builtins.getattr``
itself would let a pickle reach anything, so that name maps to
:func:`_history_buffer_getattr`, which resolves only the four ``HistoryBuffer``
methods. The list was found with ``get_unsafe_globals_in_checkpoint`` on
checkpoints of mmengine 0.10.7 runners (epoch/iter loops, SGD/Adam/AdamW, LR
schedulers, clipping, accumulation, ``EMAHook``, ``save_best``,
``AmpOptimWrapper``) plus the dtype classes the unpickler's ``BUILD`` needs;
``tests/test_checkpoint_safe_loading.py`` shows each entry is needed. Objects
that user code puts into a checkpoint are not covered. A no-op on torch < 2.6.
"""
import pickle
import re

import numpy as np
import torch
from mmengine.logging.history_buffer import HistoryBuffer

try:  # numpy >= 2.0 (and the 1.26 forward-compat shim)
    from numpy._core import multiarray as _np_multiarray
except ImportError:  # pragma: no cover - numpy < 1.26
    from numpy.core import multiarray as _np_multiarray

__all__ = ['MMENGINE_SAFE_GLOBALS', 'allow_mmengine_checkpoints']

# The statistics methods ``HistoryBuffer._set_default_statistics`` registers;
# ``HistoryBuffer.__getstate__`` pickles them as ``getattr(HistoryBuffer, name)``.
_HISTORY_BUFFER_METHODS = ('min', 'max', 'current', 'mean')


def _history_buffer_getattr(obj, name):
    """``getattr`` restricted to ``HistoryBuffer.{min,max,current,mean}`` (``builtins.getattr``)."""
    if obj is HistoryBuffer and name in _HISTORY_BUFFER_METHODS:
        return getattr(HistoryBuffer, name)
    raise pickle.UnpicklingError(
        f'mmplug: refusing builtins.getattr({obj!r}, {name!r}) in a '
        'weights_only load; only HistoryBuffer.'
        f'{{{",".join(_HISTORY_BUFFER_METHODS)}}} are allowed')


# An object (matched by ``__module__.__qualname__``) or an ``(object, 'name in pickle')``.
MMENGINE_SAFE_GLOBALS = (
    HistoryBuffer,  # message_hub['log_scalars'][*]
    (_history_buffer_getattr, 'builtins.getattr'),  # its statistics methods, restricted
    # its numpy arrays (numpy 2.x and 1.x module paths)
    (_np_multiarray._reconstruct, 'numpy._core.multiarray._reconstruct'),
    (_np_multiarray._reconstruct, 'numpy.core.multiarray._reconstruct'),
    np.ndarray,
    # Their dtypes, and the dtype classes BUILD needs (float64 values, int64 counts).
    np.dtype,
    type(np.dtype(np.float64)),
    type(np.dtype(np.int64)),
    # numpy scalars (runtime_info['eta'], best_score): scalar(dtype, bytes).
    (_np_multiarray.scalar, 'numpy._core.multiarray.scalar'),
    (_np_multiarray.scalar, 'numpy.core.multiarray.scalar'),
)


def _torch_supports_named_safe_globals():
    """Whether ``add_safe_globals`` accepts ``(object, name)`` pairs (torch 2.6+)."""
    if not hasattr(torch.serialization, 'add_safe_globals'):
        return False
    match = re.match(r'(\d+)\.(\d+)', str(torch.__version__))
    return match is not None and tuple(map(int, match.groups())) >= (2, 6)


def allow_mmengine_checkpoints():
    """Allow-list :data:`MMENGINE_SAFE_GLOBALS` for ``torch.load(weights_only=True)``.

    Idempotent (torch keeps the allow-list as a set). A no-op on torch < 2.6.

    Returns:
        bool: Whether the globals were registered.
    """
    if not _torch_supports_named_safe_globals():
        return False
    torch.serialization.add_safe_globals(list(MMENGINE_SAFE_GLOBALS))
    return True
