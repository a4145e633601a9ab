"""mmengine checkpoints load with torch's safe unpickler (``weights_only=True``).

mmengine 0.10.7 calls ``torch.load`` without ``weights_only``; since torch 2.6
that means the safe unpickler, which refuses the ``HistoryBuffer``/numpy objects
mmengine writes. ``import mmplug`` allow-lists exactly those
(``mmplug.safe_loading.MMENGINE_SAFE_GLOBALS``). These tests check that
Runner checkpoints load and resume bit-exactly, that every allow-list entry is
needed, and that anything else is still refused.
"""
import contextlib
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import pytest
import torch
from mmengine.runner import Runner

import mmplug
from mmplug.safe_loading import MMENGINE_SAFE_GLOBALS, allow_mmengine_checkpoints

from _harness import assert_same
from _tiny_training import Synthetic, TinyNet

REPO_ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(
    not allow_mmengine_checkpoints(),
    reason='torch < 2.6: torch.load does not default to weights_only=True')


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def _runner(work_dir, name, by_epoch=True, **kwargs):
    if by_epoch:
        train_cfg = dict(by_epoch=True, max_epochs=2)
        ckpt = dict(type='CheckpointHook', interval=1)
    else:
        train_cfg = dict(by_epoch=False, max_iters=4, val_interval=100)
        ckpt = dict(type='CheckpointHook', interval=2, by_epoch=False)
    return Runner(
        model=TinyNet(),
        work_dir=str(work_dir),
        experiment_name=name,
        train_dataloader=dict(
            dataset=Synthetic(), batch_size=8, num_workers=0,
            sampler=dict(type='DefaultSampler', shuffle=True),
            collate_fn=dict(type='default_collate')),
        train_cfg=train_cfg,
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.05, momentum=0.9)),
        param_scheduler=[
            dict(type='LinearLR', start_factor=0.5, by_epoch=False, begin=0, end=2),
            dict(type='MultiStepLR', milestones=[1], by_epoch=by_epoch),
        ],
        default_hooks=dict(checkpoint=ckpt, logger=dict(type='LoggerHook', interval=1)),
        randomness=dict(seed=0),
        log_level='WARNING',
        **kwargs)


@contextlib.contextmanager
def _isolated_runner_globals():
    """Give back the current DefaultScope/MessageHub/logger/visualizer that an
    in-process Runner replaces, so later tests see the state they expect."""
    from mmengine.logging import MessageHub, MMLogger
    from mmengine.registry import DefaultScope
    from mmengine.visualization import Visualizer
    saved = {cls: cls._instance_dict.copy()
             for cls in (DefaultScope, MessageHub, MMLogger, Visualizer)}
    try:
        yield
    finally:
        for cls, instances in saved.items():
            for name, obj in cls._instance_dict.items():
                if name not in instances and isinstance(obj, MMLogger):
                    for handler in obj.handlers[:]:
                        handler.close()
                        obj.removeHandler(handler)
            cls._instance_dict = instances


@contextlib.contextmanager
def _allow_list(entries):
    """Temporarily replace mmplug's allow-list with ``entries`` (torch's own kept)."""
    before = torch.serialization.get_safe_globals()
    others = [g for g in before if g not in MMENGINE_SAFE_GLOBALS]
    torch.serialization.clear_safe_globals()
    torch.serialization.add_safe_globals(others + list(entries))
    try:
        yield
    finally:
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals(before)


def _as_numpy1(src, dst):
    """Copy of a checkpoint whose pickle names numpy 1.x's ``numpy.core`` paths."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, 'w', zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename.endswith('data.pkl'):
                assert b'cnumpy._core.multiarray\n' in data
                data = data.replace(b'cnumpy._core.multiarray\n', b'cnumpy.core.multiarray\n')
            zout.writestr(info, data)
    return dst


@pytest.fixture(scope='module')
def runner_ckpts(tmp_path_factory):
    """Checkpoints written by real mmengine Runners (epoch- and iter-based)."""
    root = tmp_path_factory.mktemp('runner_ckpts')
    with _isolated_runner_globals():
        _runner(root / 'epoch', 'ckpt_epoch', by_epoch=True).train()
        _runner(root / 'iter', 'ckpt_iter', by_epoch=False).train()
    epoch = root / 'epoch' / 'epoch_2.pth'
    return dict(epoch=epoch, iter=root / 'iter' / 'iter_4.pth',
                epoch_numpy1=_as_numpy1(epoch, root / 'epoch_numpy1.pth'))


# --------------------------------------------------------------------------
# the allow-list
# --------------------------------------------------------------------------
def test_import_registers_allow_list_idempotently():
    registered = torch.serialization.get_safe_globals()
    assert all(g in registered for g in MMENGINE_SAFE_GLOBALS)
    assert mmplug.allow_mmengine_checkpoints is allow_mmengine_checkpoints
    assert allow_mmengine_checkpoints() is True
    assert allow_mmengine_checkpoints() is True
    after = torch.serialization.get_safe_globals()
    assert sorted(map(repr, after)) == sorted(map(repr, registered))


def test_real_getattr_is_not_allowed():
    for entry in MMENGINE_SAFE_GLOBALS:
        obj = entry[0] if isinstance(entry, tuple) else entry
        assert obj is not getattr
    assert getattr not in torch.serialization.get_safe_globals()


# --------------------------------------------------------------------------
# a. Runner checkpoints load with plain torch.load(weights_only=True)
# --------------------------------------------------------------------------
@pytest.mark.parametrize('kind', ['epoch', 'iter', 'epoch_numpy1'])
def test_runner_checkpoint_loads_weights_only(runner_ckpts, kind):
    path = runner_ckpts[kind]
    assert torch.serialization.get_unsafe_globals_in_checkpoint(str(path)) == []
    ckpt = torch.load(path, weights_only=True)
    assert set(ckpt) >= {'meta', 'state_dict', 'message_hub', 'optimizer', 'param_schedulers'}
    assert 'sge.weight' in ckpt['state_dict'] and 'sge.bias' in ckpt['state_dict']
    loss = ckpt['message_hub']['log_scalars']['train/loss']
    assert type(loss).__name__ == 'HistoryBuffer' and len(loss.data[0]) > 0
    assert float(loss.mean()) > 0
    assert ckpt['optimizer']['state']  # SGD momentum buffers


def test_without_allow_list_runner_checkpoint_is_refused(runner_ckpts):
    with _allow_list([]):
        with pytest.raises(pickle.UnpicklingError, match='HistoryBuffer'):
            torch.load(runner_ckpts['epoch'], weights_only=True)


def test_allow_list_is_exact(runner_ckpts):
    """Every name mmplug registers occurs in a real checkpoint, and every entry
    (names and the dtype classes that only the BUILD step needs) is required."""
    paths = [runner_ckpts['epoch'], runner_ckpts['iter'], runner_ckpts['epoch_numpy1']]
    with _allow_list([]):
        unsafe = set()
        for p in paths:
            unsafe |= set(torch.serialization.get_unsafe_globals_in_checkpoint(str(p)))
    named = {e[1] if isinstance(e, tuple) else f'{e.__module__}.{e.__qualname__}'
             for e in MMENGINE_SAFE_GLOBALS}
    dtype_classes = {f'{e.__module__}.{e.__qualname__}' for e in MMENGINE_SAFE_GLOBALS
                     if not isinstance(e, tuple) and e.__module__ == 'numpy.dtypes'}
    assert unsafe == named - dtype_classes

    for i, entry in enumerate(MMENGINE_SAFE_GLOBALS):
        rest = MMENGINE_SAFE_GLOBALS[:i] + MMENGINE_SAFE_GLOBALS[i + 1:]
        failures = 0
        with _allow_list(rest):
            for p in paths:
                try:
                    torch.load(p, weights_only=True)
                except pickle.UnpicklingError:
                    failures += 1
        assert failures, f'{entry!r} is not needed by any mmengine checkpoint'


# --------------------------------------------------------------------------
# b. anything else is still refused
# --------------------------------------------------------------------------
class _Arbitrary:
    def __init__(self):
        self.payload = 1


class _RunsShell:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f'touch {self.marker}',)


class _WalksToBuiltins:
    def __reduce__(self):  # getattr(getattr, '__self__') is the builtins module
        return getattr, (getattr, '__self__')


class _HistoryBufferInit:
    def __reduce__(self):
        from mmengine.logging.history_buffer import HistoryBuffer
        return getattr, (HistoryBuffer, '__init__')


def _refusal(tmp_path, obj):
    path = tmp_path / 'evil.pth'
    torch.save({'state_dict': {'w': torch.zeros(2)}, 'meta': obj}, path)
    with pytest.raises(pickle.UnpicklingError) as info:
        torch.load(path, weights_only=True)
    return str(info.value)


def test_arbitrary_class_is_refused(tmp_path):
    msg = _refusal(tmp_path, _Arbitrary())
    assert f'{_Arbitrary.__module__}._Arbitrary' in msg


def test_os_system_is_refused(tmp_path):
    marker = tmp_path / 'pwned'
    msg = _refusal(tmp_path, _RunsShell(marker))
    assert f'{os.system.__module__}.system' in msg
    assert not marker.exists()
    msg = _refusal(tmp_path, {'f': os.system})
    assert f'{os.system.__module__}.system' in msg


@pytest.mark.parametrize('obj', [_WalksToBuiltins(), _HistoryBufferInit()],
                         ids=['getattr-builtins', 'getattr-HistoryBuffer.__init__'])
def test_getattr_is_restricted_to_history_buffer_statistics(tmp_path, obj):
    msg = _refusal(tmp_path, obj)
    assert 'refusing builtins.getattr' in msg


# --------------------------------------------------------------------------
# d. load_from (no resume)
# --------------------------------------------------------------------------
def test_runner_load_from(runner_ckpts, tmp_path):
    path = runner_ckpts['epoch']
    saved = torch.load(path, weights_only=True)['state_dict']

    with _isolated_runner_globals():
        runner = _runner(tmp_path / 'load_from', 'ckpt_load_from', load_from=str(path))
        assert not all(torch.equal(v, saved[k]) for k, v in runner.model.state_dict().items())
        with _allow_list([]):  # the fix matters: mmengine's own load fails without it
            with pytest.raises(pickle.UnpicklingError, match='HistoryBuffer'):
                runner.load_or_resume()
        runner.load_or_resume()
        state = runner.model.state_dict()
    assert state.keys() == saved.keys()
    for k, v in saved.items():
        assert torch.equal(state[k], v), k


# --------------------------------------------------------------------------
# c. SIGKILL mid-epoch, resume, and end bit-identical to an uninterrupted run
# --------------------------------------------------------------------------
_TRAIN_SCRIPT = textwrap.dedent('''
    """Child of test_checkpoint_safe_loading: tiny CPU training with an SGE net."""
    import os
    import sys
    import time

    import torch
    torch.set_num_threads(1)
    from mmengine.hooks import Hook
    from mmengine.registry import MODELS
    from mmengine.runner import Runner

    import mmplug  # noqa: F401  registers SGE and allow-lists mmengine checkpoint objects
    from _tiny_training import Synthetic, TinyNet  # tests/ is on PYTHONPATH

    work_dir, max_epochs, resume, pause_marker = sys.argv[1:5]

    if os.environ.get('MMPLUG_TEST_NO_ALLOWLIST'):
        # Undo only mmplug's allow-list, to show that resume needs it.
        from mmplug.safe_loading import MMENGINE_SAFE_GLOBALS
        keep = [g for g in torch.serialization.get_safe_globals()
                if g not in MMENGINE_SAFE_GLOBALS]
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals(keep)


    MODELS.register_module(name='ResumeTestNet', module=TinyNet)


    class Report(Hook):
        """Prints where training starts; with a marker path, signals the parent
        mid-way through epoch 3 and waits there to be SIGKILLed."""

        def before_train(self, runner):
            print(f'START epoch={runner.epoch} iter={runner.iter}', flush=True)

        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
            if pause_marker != '-' and runner.epoch == 2 and batch_idx == 3:
                with open(pause_marker + '.tmp', 'w') as f:
                    f.write(str(runner.iter))
                os.replace(pause_marker + '.tmp', pause_marker)
                time.sleep(300)


    runner = Runner(
        # built (and so initialised) after the Runner has seeded the RNGs
        model=dict(type='ResumeTestNet'),
        work_dir=work_dir,
        train_dataloader=dict(
            dataset=Synthetic(n=64, size=12, seed=1234), batch_size=8, num_workers=0,
            sampler=dict(type='DefaultSampler', shuffle=True),
            collate_fn=dict(type='default_collate')),
        train_cfg=dict(type='EpochBasedTrainLoop', max_epochs=int(max_epochs)),
        optim_wrapper=dict(optimizer=dict(
            type='SGD', lr=0.05, momentum=0.9, weight_decay=1e-4)),
        param_scheduler=[
            dict(type='LinearLR', start_factor=0.2, by_epoch=False, begin=0, end=12),
            dict(type='MultiStepLR', by_epoch=True, milestones=[3], gamma=0.1),
        ],
        default_hooks=dict(
            checkpoint=dict(type='CheckpointHook', interval=1, max_keep_ckpts=-1),
            logger=dict(type='LoggerHook', interval=4)),
        custom_hooks=[Report()],
        randomness=dict(seed=0, deterministic=True),
        resume=resume == 'resume',
        log_level='WARNING',
    )
    runner.train()
    print('DONE', flush=True)
''')


def _child_env(**extra):
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join(
        [str(REPO_ROOT), str(REPO_ROOT / 'tests')]
        + ([env['PYTHONPATH']] if env.get('PYTHONPATH') else []))
    env.update(CUDA_VISIBLE_DEVICES='', OMP_NUM_THREADS='1', MKL_NUM_THREADS='1',
               PYTHONUNBUFFERED='1')
    env.update(extra)
    return env


def _start(script, work_dir, log, *, max_epochs=4, resume=False, pause_marker=None,
           **env):
    args = [sys.executable, str(script), str(work_dir), str(max_epochs),
            'resume' if resume else 'fresh', str(pause_marker) if pause_marker else '-']
    out = open(log, 'w')
    proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=_child_env(**env))
    proc.log, proc.log_file = Path(log), out
    return proc


def _finish(proc, timeout=120):
    try:
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        proc.log_file.close()
    return proc.returncode, proc.log.read_text()


@pytest.mark.slow
def test_resume_after_sigkill_is_bit_identical(tmp_path):
    script = tmp_path / 'train.py'
    script.write_text(_TRAIN_SCRIPT)
    dir_a, dir_b = tmp_path / 'run_a', tmp_path / 'run_b'
    marker = tmp_path / 'in_epoch_3'

    # Run A (uninterrupted) and run B (to be killed) side by side.
    run_a = _start(script, dir_a, tmp_path / 'a.log')
    run_b = _start(script, dir_b, tmp_path / 'b1.log', pause_marker=marker)
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert run_b.poll() is None, run_b.log.read_text()[-3000:]
        assert time.monotonic() < deadline, 'run B never reached epoch 3'
        time.sleep(0.05)
    os.kill(run_b.pid, signal.SIGKILL)
    rc_b, log_b = _finish(run_b)
    assert rc_b == -signal.SIGKILL, log_b[-3000:]
    # killed after 4 of the 8 iterations of epoch 3 (runner.iter is incremented
    # after the after_train_iter hooks, so it still reads 2 * 8 + 3 there)
    assert int(marker.read_text()) == 2 * 8 + 3
    assert (dir_b / 'epoch_2.pth').exists() and not (dir_b / 'epoch_3.pth').exists()

    # Without mmplug's allow-list, torch 2.6+ refuses mmengine's own checkpoint.
    rc, log = _finish(_start(script, dir_b, tmp_path / 'b_noallow.log', resume=True,
                             MMPLUG_TEST_NO_ALLOWLIST='1'))
    assert rc != 0 and 'Weights only load failed' in log and 'HistoryBuffer' in log, log[-3000:]
    assert not (dir_b / 'epoch_3.pth').exists()

    # Resume B from its last checkpoint (epoch 2) to the end.
    rc, log = _finish(_start(script, dir_b, tmp_path / 'b2.log', resume=True))
    assert rc == 0, log[-3000:]
    assert 'START epoch=2 iter=16' in log and 'DONE' in log, log[-3000:]

    rc, log = _finish(run_a)
    assert rc == 0, log[-3000:]
    assert 'START epoch=0 iter=0' in log

    final_a = torch.load(dir_a / 'epoch_4.pth', weights_only=True)
    final_b = torch.load(dir_b / 'epoch_4.pth', weights_only=True)
    mid_b = torch.load(dir_b / 'epoch_2.pth', weights_only=True)
    assert final_a['meta']['epoch'] == final_b['meta']['epoch'] == 4
    assert final_a['meta']['iter'] == final_b['meta']['iter'] == 32
    assert final_a['state_dict'].keys() == final_b['state_dict'].keys()
    assert 'sge.weight' in final_a['state_dict']
    for k, v in final_a['state_dict'].items():
        assert torch.equal(v, final_b['state_dict'][k]), k
    # training after the resume did change the weights (the check is not vacuous)
    assert not torch.equal(final_b['state_dict']['sge.weight'], mid_b['state_dict']['sge.weight'])
    assert_same(final_a['optimizer'], final_b['optimizer'], 'optimizer')
    assert_same(final_a['param_schedulers'], final_b['param_schedulers'], 'param_schedulers')
