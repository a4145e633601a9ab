"""Faults injected into checkpoint writes, for test_fault_tolerance's training subprocesses.

Imported through the config's ``custom_imports``; registers the file backend
``'faulty_atomic_local'``: :class:`AtomicLocalBackend` that SIGKILLs its own process
while writing the file named by ``MMPLUG_TEST_FAULT=MODE:FILENAME``, where MODE is

* ``mid-write``: after half of the bytes reached the temporary file;
* ``before-replace``: after the temporary file is complete and fsynced, before
  ``os.replace``;
* ``after-replace``: after the checkpoint is in place, before ``last_checkpoint``
  is updated.
"""
import os
import signal

from mmengine.fileio import register_backend

from mmplug.engine import atomic_checkpoint
from mmplug.engine.atomic_checkpoint import AtomicLocalBackend


def _die():
    os.kill(os.getpid(), signal.SIGKILL)


class FaultyAtomicLocalBackend(AtomicLocalBackend):

    def put(self, obj, filepath):
        mode, _, target = os.environ.get('MMPLUG_TEST_FAULT', '').partition(':')
        if os.path.basename(str(filepath)) != target:
            return super().put(obj, filepath)
        tmp = atomic_checkpoint._temp_path(str(filepath))
        if mode == 'mid-write':
            with open(tmp, 'wb') as f:
                f.write(obj[:len(obj) // 2])
                f.flush()
                os.fsync(f.fileno())
            _die()
        atomic_checkpoint._write_temp(obj, tmp)
        if mode == 'before-replace':
            _die()
        atomic_checkpoint._commit(tmp, str(filepath))
        if mode == 'after-replace':
            _die()


register_backend('faulty_atomic_local', FaultyAtomicLocalBackend, force=True)
