"""Checkpoints that survive a kill, and resumes that continue bit for bit.

Three faults of mmengine 0.10.7's checkpointing, and what this module does about them.

1. Torn writes. ``CheckpointHook`` saves through ``LocalBackend.put``, which opens
   the final path with ``'wb'`` and writes: a kill mid-write leaves a truncated
   ``iter_N.pth``. It also deletes the oldest checkpoint (``max_keep_ckpts``)
   *before* writing the new one, and rewrites ``last_checkpoint`` in place. With
   ``max_keep_ckpts=1`` a kill at the wrong moment leaves no checkpoint at all.

   :class:`AtomicCheckpointHook` (a ``CheckpointHook`` registered in mmengine's
   ``HOOKS``; ``tools/train.py`` selects it in place of ``CheckpointHook``) writes
   every checkpoint through :class:`AtomicLocalBackend` (registered as the file
   backend ``'atomic_local'``): the bytes go to a temporary file in the same
   directory, are fsynced, and are ``os.replace``\\ d onto the final name (then the
   directory is fsynced). ``last_checkpoint`` is written the same way, after the
   checkpoint, and outdated checkpoints are deleted only after both. A kill at any
   moment leaves the previous state or the new one, and ``last_checkpoint`` always
   names a complete file. Nothing of mmengine is patched.

2. Resume from a damaged checkpoint. :func:`find_resumable_checkpoint` (used by
   ``tools/train.py --resume`` without a path) checks the file ``last_checkpoint``
   names (zip structure and CRCs; no unpickling) and, if it is truncated or
   unreadable (written by an older run or another writer), falls back to the
   newest complete ``epoch_*.pth`` / ``iter_*.pth`` and says so.

3. Resume that is not bit-identical. mmengine's checkpoint holds the model,
   optimizer, schedulers and message hub but no RNG state; a resumed run restarts
   the python/numpy/torch generators from the seed, so data augmentation
   (``RandomFlip``), dropout and RoI sampling differ from the uninterrupted run.
   :class:`AtomicCheckpointHook` also stores the generators' states in the
   checkpoint (``checkpoint['rng_state']``, tensors and ints only, so it loads with
   ``weights_only=True``) and restores them where the uninterrupted run would be:
   at the first training epoch of an ``EpochBasedTrainLoop``, or, in an
   ``IterBasedTrainLoop``, after the loop has skipped the batches already trained
   (the skip runs the data pipeline and so draws random numbers) and before the
   next batch is fetched. It also keeps validation from drawing on the training
   generators (states saved at ``before_val``, restored at ``after_val``), because
   an uninterrupted run validates between a checkpoint and the next epoch, where
   the resumed run does not.

Bit-identical resume on CPU needs: a fixed seed (``randomness=dict(seed=...)``);
``train_dataloader.persistent_workers=False`` when ``num_workers > 0`` (persistent
workers carry their generators across epochs; a resumed run restarts them, so the
hook warns); checkpoints at points mmengine can resume from: epoch ends for an
``EpochBasedTrainLoop`` (it restarts a partly trained epoch from its first batch;
the hook warns about ``by_epoch=False`` checkpoints there), any iteration for an
``IterBasedTrainLoop``. On GPU add ``deterministic=True`` to ``randomness``.

4. Unsafe checkpoints. :func:`check_checkpoint_is_safe` lists the pickle globals a
   local checkpoint needs beyond torch's and mmplug's allow-lists
   (``torch.serialization.get_unsafe_globals_in_checkpoint``, which reads only the
   pickle) and refuses it with :class:`UnsafeCheckpointError`, naming each global
   and how to allow-list it if the file is trusted. ``weights_only=True`` stays on.
"""
import os
import os.path as osp
import pickle
import random
import re
import zipfile

import numpy as np
import torch
from mmengine.fileio import LocalBackend, register_backend
from mmengine.hooks import CheckpointHook
from mmengine.logging import print_log
from mmengine.registry import HOOKS
from mmengine.runner import EpochBasedTrainLoop, IterBasedTrainLoop

__all__ = [
    'AtomicCheckpointHook', 'AtomicLocalBackend', 'UnsafeCheckpointError', 'atomic_write',
    'check_checkpoint_is_safe', 'checkpoint_is_complete', 'find_resumable_checkpoint',
    'get_rng_state', 'set_rng_state', 'use_atomic_checkpoints'
]

# Checkpoint names CheckpointHook writes with its default filename_tmpl.
_CKPT_NAME = re.compile(r'^(epoch|iter)_(\d+)\.pth$')


# --------------------------------------------------------------------------
# atomic writes
# --------------------------------------------------------------------------
def _temp_path(path):
    """Hidden temporary name beside ``path``, unique per process."""
    return osp.join(osp.dirname(path), f'.{osp.basename(path)}.tmp-{os.getpid()}')


def _write_temp(data, tmp):
    """Write ``data`` to ``tmp`` and fsync it."""
    with open(tmp, 'wb') as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _commit(tmp, path):
    """``os.replace`` ``tmp`` onto ``path``, then fsync the directory (the rename itself)."""
    os.replace(tmp, path)
    try:
        fd = os.open(osp.dirname(path) or '.', os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some filesystems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def atomic_write(data, path):
    """Write ``data`` (bytes or str) to ``path`` so that ``path`` is never partly written.

    The data goes to a temporary file in the same directory, is fsynced and
    replaces ``path`` with ``os.replace`` (atomic on POSIX and Windows within a
    file system). A crash leaves the old ``path`` (and possibly a stale
    ``.NAME.tmp-PID`` file) or the new one.

    Args:
        data (bytes | str): Content; ``str`` is encoded as UTF-8.
        path (str): Destination; its directory is created if missing.
    """
    if isinstance(data, str):
        data = data.encode('utf-8')
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    tmp = _temp_path(path)
    try:
        _write_temp(data, tmp)
        _commit(tmp, path)
    except BaseException:
        if osp.exists(tmp):
            os.remove(tmp)
        raise


class AtomicLocalBackend(LocalBackend):
    """mmengine's ``LocalBackend`` whose ``put``/``put_text`` write atomically.

    Registered as the file backend ``'atomic_local'``; select it with
    ``backend_args=dict(backend='atomic_local')`` (what :class:`AtomicCheckpointHook`
    does for local output directories). Reads are ``LocalBackend``'s.
    """

    def put(self, obj, filepath):
        atomic_write(obj, str(filepath))

    def put_text(self, obj, filepath, encoding='utf-8'):
        atomic_write(obj.encode(encoding), str(filepath))


register_backend('atomic_local', AtomicLocalBackend, force=True)


# --------------------------------------------------------------------------
# finding a complete checkpoint
# --------------------------------------------------------------------------
def checkpoint_is_complete(path):
    """Whether ``path`` is a complete torch zip checkpoint (structure and CRCs).

    Reads the file but unpickles nothing. A truncated or overwritten file fails the
    zip central directory or a CRC check.

    Args:
        path (str): Checkpoint file.

    Returns:
        bool: ``False`` if missing, not a zip file, truncated or corrupted.
    """
    try:
        with zipfile.ZipFile(path) as zf:
            if not any(n.endswith('/data.pkl') or n == 'data.pkl' for n in zf.namelist()):
                return False
            return zf.testzip() is None
    except (OSError, zipfile.BadZipFile, EOFError, ValueError, RuntimeError):
        return False


def _candidates(directory):
    """``epoch_*.pth``/``iter_*.pth`` in ``directory``, newest first (mtime, then step)."""
    if not osp.isdir(directory):
        return []
    found = []
    for name in os.listdir(directory):
        match = _CKPT_NAME.match(name)
        path = osp.join(directory, name)
        if match and osp.isfile(path):
            found.append((os.stat(path).st_mtime_ns, int(match.group(2)), path))
    return [path for *_, path in sorted(found, reverse=True)]


def find_resumable_checkpoint(work_dir, logger='current'):
    """The checkpoint ``--resume`` should continue from: ``last_checkpoint`` if complete.

    If the file that ``work_dir/last_checkpoint`` names is missing, truncated or
    corrupted (or the pointer itself is empty), the newest complete
    ``epoch_*.pth``/``iter_*.pth`` in that file's directory and in ``work_dir`` is
    returned instead, and a warning says which file was skipped and why.

    Args:
        work_dir (str): The run's work dir.
        logger (str | logging.Logger): Where to report a fallback.

    Returns:
        str | None: Path of a complete checkpoint, or ``None`` if nothing was saved yet.

    Raises:
        FileNotFoundError: If checkpoints were saved but none is complete.
    """
    pointer = osp.join(work_dir, 'last_checkpoint')
    named = None
    if osp.isfile(pointer):
        with open(pointer) as f:
            named = f.read().strip() or None
    if named is not None and checkpoint_is_complete(named):
        return named

    dirs = [work_dir] + ([osp.dirname(named)] if named and osp.dirname(named) else [])
    seen, candidates = set(), []
    for d in dirs:
        for path in _candidates(d):
            if osp.realpath(path) not in seen:
                seen.add(osp.realpath(path))
                candidates.append(path)
    candidates.sort(key=lambda p: os.stat(p).st_mtime_ns, reverse=True)
    skipped = [p for p in candidates if p != named]
    fallback = next((p for p in skipped if checkpoint_is_complete(p)), None)
    if named is None and not osp.isfile(pointer):
        reason = f'{pointer} does not exist'
    elif named is None:
        reason = f'{pointer} is empty'
    elif not osp.exists(named):
        reason = f'{pointer} names {named}, which does not exist'
    else:
        reason = f'{pointer} names {named}, which is truncated or corrupted'
    if fallback is None:
        if named is None and not candidates:
            return None  # nothing saved yet: train from the start, as mmengine does
        raise FileNotFoundError(
            f'Cannot resume: {reason}, and no other complete checkpoint was found in '
            f'{", ".join(dict.fromkeys(dirs))}. Pass one with --resume PATH, or start afresh '
            'in another work dir.')
    incomplete = [p for p in skipped[:skipped.index(fallback)]]
    print_log(f'{reason}; resuming from the newest complete checkpoint, {fallback}'
              + (f' (also skipped, incomplete: {", ".join(incomplete)})' if incomplete else '')
              + '.', logger=logger, level=30)
    return fallback


# --------------------------------------------------------------------------
# refusing unsafe checkpoints with a useful message
# --------------------------------------------------------------------------
class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint needs pickle globals that ``weights_only=True`` loading refuses."""


def check_checkpoint_is_safe(path):
    """Raise :class:`UnsafeCheckpointError` if ``path`` needs globals outside the allow-lists.

    Reads only the checkpoint's pickle (no tensors, nothing executed) with
    ``torch.serialization.get_unsafe_globals_in_checkpoint``, which honours torch's
    own safe types and everything registered with ``add_safe_globals`` (mmplug's
    :data:`~mmplug.utils.checkpoint.MMENGINE_SAFE_GLOBALS` included). Does nothing
    for non-local paths (URLs, ``torchvision://``), for non-zip checkpoints, on
    torch < 2.6, or when ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` is set.

    Args:
        path (str): The checkpoint ``load_from``/``--resume`` is about to load.

    Raises:
        UnsafeCheckpointError: Naming each offending global and how to allow it.
    """
    if (not isinstance(path, str) or '://' in path or not osp.isfile(path)
            or not hasattr(torch.serialization, 'get_unsafe_globals_in_checkpoint')
            or os.environ.get('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', '0') not in ('', '0')
            or not zipfile.is_zipfile(path)):
        return
    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # noqa: BLE001  damaged file: let the real load report it
        return
    if not unsafe:
        return
    names = ', '.join(unsafe)
    example = ', '.join(f'{g.rsplit(".", 1)[-1]}' for g in unsafe)
    imports = '; '.join(f'from {g.rsplit(".", 1)[0]} import {g.rsplit(".", 1)[-1]}'
                        for g in unsafe)
    raise UnsafeCheckpointError(
        f'Refusing to load {path}: it contains pickled Python objects of {names}, which '
        'torch.load(weights_only=True) does not allow (only tensors, containers, numbers and '
        "the mmengine objects mmplug allow-lists). Unpickling an arbitrary global can run any "
        'code, so a checkpoint from an untrusted source must not be loaded this way. If you '
        'trust this file and know why it holds these objects, allow-list exactly them before '
        f'loading, e.g. in a module listed in the config\'s custom_imports: `{imports}; '
        f'torch.serialization.add_safe_globals([{example}])`.')


# --------------------------------------------------------------------------
# RNG state
# --------------------------------------------------------------------------
def get_rng_state():
    """States of python's, numpy's (legacy global) and torch's (CPU, CUDA) generators.

    Tensors, ints and floats only, so a checkpoint holding it loads with
    ``weights_only=True`` (numpy's ``uint32`` key array is stored as an int64 tensor).
    """
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = dict(
        python=[version, list(internal), gauss],
        numpy=[name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss),
               float(cached)],
        torch=torch.get_rng_state())
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    """Restore what :func:`get_rng_state` returned."""
    version, internal, gauss = state['python']
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state['numpy']
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


class _RestoreRNGAfter:
    """Iterator proxy: after ``skip`` batches, restore ``state`` before the next fetch."""

    def __init__(self, iterator, skip, state):
        self.iterator, self.skip, self.state = iterator, skip, state

    def __iter__(self):
        return self

    def __next__(self):
        if self.skip == 0 and self.state is not None:
            set_rng_state(self.state)
            self.state = None
        self.skip -= 1
        return next(self.iterator)


# --------------------------------------------------------------------------
# the hook
# --------------------------------------------------------------------------
@HOOKS.register_module()
class AtomicCheckpointHook(CheckpointHook):
    """``CheckpointHook`` with atomic writes and RNG state for bit-identical resumes.

    Takes ``CheckpointHook``'s arguments. Differences:

    * local checkpoints (``out_dir`` unset or a local path, no ``backend_args``)
      are written by :class:`AtomicLocalBackend` (temporary file, fsync,
      ``os.replace``); so are ``save_best`` checkpoints;
    * ``last_checkpoint`` is replaced atomically after the checkpoint is complete;
    * with ``max_keep_ckpts``, outdated checkpoints are deleted after the new one
      and ``last_checkpoint`` are written, not before;
    * ``checkpoint['rng_state']`` holds the generators' states (see
      :func:`get_rng_state`); a resume restores them where the uninterrupted run
      would have them, and validation does not draw on them;
    * stale temporary files of killed writers are removed at ``before_train``.

    Example:
        >>> default_hooks = dict(checkpoint=dict(
        ...     type='AtomicCheckpointHook', interval=500, by_epoch=False))

    Note:
        ``tools/train.py`` swaps ``CheckpointHook`` for this hook. Bit-identical
        resume needs a fixed seed and, with ``num_workers > 0``,
        ``persistent_workers=False``; see the module docstring.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        local = self.out_dir is None or '://' not in str(self.out_dir)
        if local and self.backend_args is None and self.file_client_args is None:
            self.backend_args = dict(backend='atomic_local')
        self._resume_rng = None
        self._val_rng = None

    # -- writing -----------------------------------------------------------
    def before_train(self, runner):
        super().before_train(runner)
        self._remove_stale_temp_files(runner)
        self._warn_unresumable_settings(runner)

    def _remove_stale_temp_files(self, runner):
        if not isinstance(self.file_backend, LocalBackend):
            return
        for directory in dict.fromkeys([self.out_dir, runner.work_dir]):
            if not osp.isdir(directory):
                continue
            for name in os.listdir(directory):
                match = re.match(r'^\..+\.tmp-(\d+)$', name)
                if match and int(match.group(1)) != os.getpid() and not _alive(
                        int(match.group(1))):
                    os.remove(osp.join(directory, name))
                    runner.logger.info(f'Removed {name}, left by a writer that was killed.')

    def _warn_unresumable_settings(self, runner):
        loader = runner.train_dataloader
        if getattr(loader, 'num_workers', 0) > 0 and getattr(loader, 'persistent_workers',
                                                              False):
            runner.logger.warning(
                'train_dataloader has persistent_workers=True: its workers carry their random '
                'state across epochs and a resumed run restarts them, so a resumed run will not '
                'be bit-identical to an uninterrupted one. Set persistent_workers=False for that.')
        if isinstance(runner.train_loop, EpochBasedTrainLoop) and not self.by_epoch:
            runner.logger.warning(
                'by_epoch=False checkpoints in an EpochBasedTrainLoop: mmengine resumes such a '
                'checkpoint from the first batch of its epoch, so a mid-epoch resume repeats '
                'batches. Use epoch checkpoints or an IterBasedTrainLoop to resume exactly.')

    def _save_checkpoint_with_step(self, runner, step, meta):
        # mmengine 0.10.7's CheckpointHook._save_checkpoint_with_step, except that the
        # outdated checkpoint is deleted after the new one and last_checkpoint are written,
        # and last_checkpoint is replaced atomically. The message hub is updated before
        # saving, as there, so the checkpoint's content is unchanged.
        outdated = None
        if self.max_keep_ckpts > 0 and not (self.keep_ckpt_ids
                                            and self.keep_ckpt_ids[-1] == step):
            if len(self.keep_ckpt_ids) == self.max_keep_ckpts:
                outdated = self.keep_ckpt_ids.popleft()
            self.keep_ckpt_ids.append(step)
            runner.message_hub.update_info('keep_ckpt_ids', list(self.keep_ckpt_ids))

        ckpt_filename = self.filename_tmpl.format(step)
        self.last_ckpt = self.file_backend.join_path(self.out_dir, ckpt_filename)
        runner.message_hub.update_info('last_ckpt', self.last_ckpt)
        runner.save_checkpoint(
            self.out_dir,
            ckpt_filename,
            self.file_client_args,
            save_optimizer=self.save_optimizer,
            save_param_scheduler=self.save_param_scheduler,
            meta=meta,
            by_epoch=self.by_epoch,
            backend_args=self.backend_args,
            **self.args)

        if not _is_main_process():
            return
        atomic_write(str(self.last_ckpt), osp.join(runner.work_dir, 'last_checkpoint'))
        if outdated is not None:
            path = self.file_backend.join_path(self.out_dir, self.filename_tmpl.format(outdated))
            if self.file_backend.isfile(path):
                self.file_backend.remove(path)
            elif self.file_backend.isdir(path):  # checkpoints saved by deepspeed
                self.file_backend.rmtree(path)

    # -- RNG state -----------------------------------------------------------
    def before_save_checkpoint(self, runner, checkpoint):
        # Inside validation (save_best) store the training generators' state.
        checkpoint['rng_state'] = self._val_rng if self._val_rng is not None else get_rng_state()

    def after_load_checkpoint(self, runner, checkpoint):
        # Also called by a plain load_from, which restarts training: restore only on resume.
        if runner._resume:  # noqa: SLF001  Runner has no public accessor
            self._resume_rng = checkpoint.get('rng_state')
            if self._resume_rng is None:
                runner.logger.warning(
                    'The checkpoint holds no random-generator state (not written by '
                    'AtomicCheckpointHook): the resumed run continues correctly but will not '
                    'be bit-identical to an uninterrupted one.')

    def before_train_epoch(self, runner):
        if self._resume_rng is None:
            return
        loop = runner.train_loop
        if isinstance(loop, IterBasedTrainLoop) and loop.iter > 0:
            # The loop now skips loop.iter batches (running the data pipeline); restore the
            # generators after those, right before the next batch is fetched.
            loop.dataloader_iterator = _RestoreRNGAfter(loop.dataloader_iterator, loop.iter,
                                                        self._resume_rng)
        else:
            set_rng_state(self._resume_rng)
        self._resume_rng = None

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        loop = runner.train_loop
        if isinstance(getattr(loop, 'dataloader_iterator', None), _RestoreRNGAfter):
            loop.dataloader_iterator = loop.dataloader_iterator.iterator

    def before_val(self, runner):
        if self._val_rng is None:
            self._val_rng = get_rng_state()

    def after_val(self, runner):
        if self._val_rng is not None:
            set_rng_state(self._val_rng)
            self._val_rng = None


def _is_main_process():
    from mmengine.dist import is_main_process
    return is_main_process()


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --------------------------------------------------------------------------
# selecting it from a config
# --------------------------------------------------------------------------
def use_atomic_checkpoints(cfg):
    """Make ``cfg``'s checkpoint hook an :class:`AtomicCheckpointHook`.

    Swaps ``default_hooks.checkpoint.type`` ``'CheckpointHook'`` (or the class) for
    ``'AtomicCheckpointHook'``; any other type (a user's own hook) is kept.

    Args:
        cfg (mmengine.Config): The training config; changed in place.

    Returns:
        bool: Whether the hook was swapped.
    """
    hook = cfg.get('default_hooks', {}).get('checkpoint')
    if hook is None or hook.get('type') not in ('CheckpointHook', 'mmengine.CheckpointHook',
                                                CheckpointHook):
        return False
    hook['type'] = 'AtomicCheckpointHook'
    return True
