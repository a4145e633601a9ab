"""Checkpoints that survive a kill, resumes that continue bit for bit, unsafe files refused.

1. mmengine 0.10.7's ``CheckpointHook`` writes in place, deletes the oldest
   checkpoint before writing the new one and rewrites ``last_checkpoint`` in
   place. :class:`AtomicCheckpointHook` writes through
   :class:`AtomicLocalBackend` (temporary file, fsync, ``os.replace``), then
   ``last_checkpoint``, and deletes outdated files last.
2. :func:`find_resumable_checkpoint` (``--resume`` without a path) checks the
   file ``last_checkpoint`` names (zip structure and CRCs) and falls back to the
   newest complete one.
3. mmengine stores no RNG state; the hook stores the generators' states
   (``checkpoint['rng_state']``) and restores them where the uninterrupted run
   would have them, keeping validation off them. Bit-identical on CPU with a
   fixed seed, ``persistent_workers=False`` and epoch checkpoints for
   epoch-based loops; on GPU add ``deterministic=True``.
4. :func:`check_checkpoint_is_safe` refuses a file that needs pickle globals
   beyond the allow-lists, naming each; ``weights_only=True`` stays on.
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
    """Write ``data`` (bytes, or str as UTF-8) to ``path`` so that ``path`` is never partly written.

    Temporary file in the same directory, fsync, ``os.replace``. A crash leaves the
    old ``path`` (and maybe a stale ``.NAME.tmp-PID``) or the new one.
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
    """``LocalBackend`` with atomic ``put``/``put_text``; the file backend ``'atomic_local'``."""

    def put(self, obj, filepath):
        atomic_write(obj, str(filepath))

    def put_text(self, obj, filepath, encoding='utf-8'):
        atomic_write(obj.encode(encoding), str(filepath))


register_backend('atomic_local', AtomicLocalBackend, force=True)


def checkpoint_is_complete(path):
    """Whether ``path`` is a complete torch zip checkpoint (structure and CRCs, no unpickling)."""
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

    Else the newest complete ``epoch_*.pth``/``iter_*.pth`` beside it or in
    ``work_dir``, with a warning naming what was skipped. Returns None if nothing
    was saved yet; raises ``FileNotFoundError`` if none is complete.
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


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint needs pickle globals that ``weights_only=True`` loading refuses."""


def check_checkpoint_is_safe(path):
    """Raise :class:`UnsafeCheckpointError` if ``path`` needs globals outside the allow-lists.

    Reads only the pickle (``torch.serialization.get_unsafe_globals_in_checkpoint``,
    which honours ``add_safe_globals``, mmplug's included). Does nothing for
    non-local or non-zip paths, on torch < 2.6, or with
    ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` set.
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


def get_rng_state():
    """States of python's, numpy's (legacy global) and torch's (CPU, CUDA) generators.

    Tensors, ints and floats only, so it loads with ``weights_only=True``.
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


@HOOKS.register_module()
class AtomicCheckpointHook(CheckpointHook):
    """``CheckpointHook`` with atomic writes and RNG state for bit-identical resumes.

    Takes ``CheckpointHook``'s arguments. Local checkpoints (and ``save_best``
    ones) go through :class:`AtomicLocalBackend`; ``last_checkpoint`` is replaced
    atomically after the checkpoint; outdated checkpoints are deleted after both;
    ``checkpoint['rng_state']`` holds the generators' states; stale temporary files
    of killed writers are removed at ``before_train``. ``tools/train.py`` swaps
    ``CheckpointHook`` for it.

    Example:
        >>> default_hooks = dict(checkpoint=dict(
        ...     type='AtomicCheckpointHook', interval=500, by_epoch=False))
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        local = self.out_dir is None or '://' not in str(self.out_dir)
        if local and self.backend_args is None and self.file_client_args is None:
            self.backend_args = dict(backend='atomic_local')
        self._resume_rng = None
        self._val_rng = None

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
        # mmengine 0.10.7's CheckpointHook._save_checkpoint_with_step, but the outdated
        # checkpoint is deleted last and last_checkpoint is replaced atomically.
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
            # Restore after the loop's skipped batches, before the next fetch.
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


def use_atomic_checkpoints(cfg):
    """Swap ``cfg.default_hooks.checkpoint``'s ``CheckpointHook`` for ``AtomicCheckpointHook``.

    Any other hook type is kept. Returns whether the hook was swapped.
    """
    hook = cfg.get('default_hooks', {}).get('checkpoint')
    if hook is None or hook.get('type') not in ('CheckpointHook', 'mmengine.CheckpointHook',
                                                CheckpointHook):
        return False
    hook['type'] = 'AtomicCheckpointHook'
    return True
