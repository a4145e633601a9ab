"""Safe (``weights_only=True``) loading of mmengine checkpoints.

The problem
-----------
Since torch 2.6, ``torch.load`` defaults to ``weights_only=True``: a restricted
unpickler that only rebuilds tensors, containers, primitive types and the
globals explicitly allow-listed with ``torch.serialization.add_safe_globals``.
mmengine 0.10.7 calls ``torch.load(filename, map_location=...)`` without a
``weights_only`` argument (``mmengine/runner/checkpoint.py``:
``load_from_local``, ``load_from_http``, ``load_from_pavi``, ``load_from_ceph``;
``Runner.load_checkpoint`` -> ``_load_checkpoint``, used by both ``load_from``
and ``resume``), so it gets the safe unpickler. But the checkpoints its own
``Runner.save_checkpoint`` writes hold more than tensors:

* ``checkpoint['message_hub']['log_scalars'][key]`` are
  ``mmengine.logging.history_buffer.HistoryBuffer`` objects. Their
  ``__getstate__`` also stores the class's statistics methods
  (``HistoryBuffer.min/max/current/mean``), which pickle writes as
  ``getattr(HistoryBuffer, 'min')``: a call of ``builtins.getattr``.
* a ``HistoryBuffer`` keeps its history in numpy arrays (``float64`` values,
  ``int64`` counts);
* ``checkpoint['message_hub']['runtime_info']['eta']`` is a numpy scalar
  (``np.float64``), and so is ``best_score`` when ``CheckpointHook(save_best=...)``
  tracks a metric that a numpy-based evaluator returned.

So ``Runner(..., resume=True)`` and ``load_from`` fail with
``WeightsUnpickler error: Unsupported global: GLOBAL
mmengine.logging.history_buffer.HistoryBuffer ...``.

The fix
-------
Keep ``weights_only=True`` and allow-list exactly the globals above
(:data:`MMENGINE_SAFE_GLOBALS`, registered by :func:`allow_mmengine_checkpoints`,
which ``import mmplug`` calls). Nothing is monkeypatched and safe loading is
not turned off: a checkpoint holding any other class or function is still
refused.

``builtins.getattr`` is the one global that must not be allowed as such: with it
a pickle can walk from any allowed object to anything (e.g.
``getattr(getattr, '__self__')`` is the ``builtins`` module). It is instead
registered under the name ``builtins.getattr`` as
:func:`_history_buffer_getattr`, which resolves only the four
``HistoryBuffer`` statistics methods and refuses everything else.

The list was found empirically with
``torch.serialization.get_unsafe_globals_in_checkpoint`` on checkpoints written
by an mmengine 0.10.7 ``Runner`` (epoch- and iter-based loops; SGD with
momentum, Adam, AdamW; ``LinearLR``/``MultiStepLR``/``CosineAnnealingLR``;
gradient clipping and accumulation; ``EMAHook``; a validation loop with
``save_best``; ``AmpOptimWrapper``, whose ``loss_scaler`` state is plain
floats and ints), plus the dtype classes that the safe unpickler's ``BUILD``
step needs and that never appear as a ``GLOBAL``. Each entry is needed; see
``tests/test_checkpoint_safe_loading.py``.

Not covered (deliberately): objects that *user* code puts into a checkpoint,
e.g. a dataset ``metainfo`` holding numpy arrays of other dtypes, custom
``HistoryBuffer.register_statistics`` methods, or non-numeric numpy metrics.
Allow-list those yourself with ``torch.serialization.add_safe_globals`` if you
trust them.

On torch < 2.6 :func:`allow_mmengine_checkpoints` does nothing: there
``torch.load`` defaults to ``weights_only=False`` (mmengine's loads are not
affected), and ``add_safe_globals`` either does not exist (< 2.4) or does not
accept the ``(object, name)`` pairs this list needs (2.4, 2.5).
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
    """``getattr`` restricted to ``HistoryBuffer.{min,max,current,mean}``.

    Registered for the pickle global ``builtins.getattr``; the real ``getattr``
    is never allow-listed.
    """
    if obj is HistoryBuffer and name in _HISTORY_BUFFER_METHODS:
        return getattr(HistoryBuffer, name)
    raise pickle.UnpicklingError(
        f'mmplug: refusing builtins.getattr({obj!r}, {name!r}) in a '
        'weights_only load; only HistoryBuffer.'
        f'{{{",".join(_HISTORY_BUFFER_METHODS)}}} are allowed')


# Exactly what an mmengine 0.10.7 Runner writes into its checkpoints besides
# tensors and the containers/primitives torch already allows. An entry is either
# an object (matched by its ``__module__.__qualname__``) or an
# ``(object, 'module.name as written in the pickle')`` pair.
MMENGINE_SAFE_GLOBALS = (
    # message_hub['log_scalars'][*]: created with NEWOBJ, state set by
    # HistoryBuffer.__setstate__.
    HistoryBuffer,
    # HistoryBuffer.__getstate__ stores its statistics methods, pickled as
    # getattr(HistoryBuffer, 'min'|'max'|'current'|'mean'). Restricted stand-in.
    (_history_buffer_getattr, 'builtins.getattr'),
    # numpy arrays (HistoryBuffer._log_history / _count_history) are pickled as
    # _reconstruct(ndarray, (0,), b'b') + ndarray.__setstate__; the module path
    # is numpy._core.multiarray with numpy 2.x, numpy.core.multiarray with 1.x.
    (_np_multiarray._reconstruct, 'numpy._core.multiarray._reconstruct'),
    (_np_multiarray._reconstruct, 'numpy.core.multiarray._reconstruct'),
    np.ndarray,
    # The dtype of those arrays and scalars: np.dtype('f8', False, True) ...
    np.dtype,
    # ... then BUILD on the dtype instance, whose class is np.dtypes.Float64DType
    # (numpy >= 1.25; np.dtype[float64] before): float64 log values, eta,
    # best_score.
    type(np.dtype(np.float64)),
    # int64 HistoryBuffer._count_history.
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
