"""Training faults lose nothing: SIGKILL at any moment, resume, end bit-identical.

tools/train.py runs a shrunk twin of the DeepLabV3 + SGE demo (IterBasedTrainLoop,
RandomFlip in the pipeline, dropout in the heads: numpy and torch generators both
matter) in subprocesses. Faults are injected through ``tests/_fault_injection.py``
(a file backend that SIGKILLs its own process inside a checkpoint write) and by
SIGKILLing a run from outside between checkpoints. Every resumed lineage must end
with the same model, optimizer, scheduler, RNG and loss history as an uninterrupted
run, bit for bit.
"""
import os
import os.path as osp
import pickle
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

import mmplug  # noqa: F401  allow-lists mmengine's checkpoint objects
from mmplug.engine.atomic_checkpoint import (
    UnsafeCheckpointError,
    atomic_write,
    check_checkpoint_is_safe,
    checkpoint_is_complete,
    find_resumable_checkpoint,
    get_rng_state,
    set_rng_state,
)

from _harness import ROOT, assert_same, needs_unsafe_globals_check

#: Safe loading of mmengine's checkpoints needs the allow-list (torch >= 2.6); older torch
#: cannot allow-list mmengine's objects, so these tests load their own checkpoints plainly.
WEIGHTS_ONLY = mmplug.allow_mmengine_checkpoints()
DEMO = osp.join(ROOT, 'configs/sge/deeplabv3_r50-d8-sge_demo_cityscapes-shapes.py')
MAX_ITERS = 8

_TINY = '''
_base_ = {demo!r}
custom_imports = dict(imports=['mmplug', '_fault_injection'], allow_failed_imports=False)
data_root = {data_root!r}
model = dict(
    data_preprocessor=dict(size=(64, 128)),
    backbone=dict(stem_channels=16, base_channels=16),
    decode_head=dict(in_channels=512, channels=32),
    auxiliary_head=dict(in_channels=256, channels=16))
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                        dataset=dict(data_root=data_root, indices=6))
val_dataloader = dict(num_workers=0, persistent_workers=False,
                      dataset=dict(data_root=data_root, indices=2))
test_dataloader = val_dataloader
train_cfg = dict(max_iters={max_iters}, val_interval=4)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=2),
    dict(type='PolyLR', eta_min=1e-6, power=0.9, begin=2, end={max_iters}, by_epoch=False)]
default_hooks = dict(
    logger=dict(interval=1),
    checkpoint=dict(interval=2, max_keep_ckpts=2,
                    backend_args=dict(backend='faulty_atomic_local')))
'''

FAULTS = []  # (where, what) of every fault injected, for the report


def _env(**extra):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, osp.join(ROOT, 'tests')]),
               OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', CUDA_VISIBLE_DEVICES='',
               PYTHONUNBUFFERED='1')
    env.pop('MMPLUG_TEST_FAULT', None)
    env.update(extra)
    return env


def _train(cfg, work_dir, *args, fault=None, kill_at_log=None, timeout=300):
    """Run tools/train.py; ``fault`` = 'MODE:FILE' for _fault_injection, ``kill_at_log``:
    SIGKILL the run from outside as soon as its output contains that text."""
    log = osp.join(work_dir + '.log') if not osp.isdir(work_dir) else work_dir + '.log'
    env = _env(**({'MMPLUG_TEST_FAULT': fault} if fault else {}))
    with open(log, 'a') as out:
        start = out.tell()
        proc = subprocess.Popen([sys.executable, osp.join(ROOT, 'tools', 'train.py'), cfg,
                                 '--work-dir', work_dir, *args], cwd=ROOT, env=env,
                                stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        try:
            while proc.poll() is None:
                assert time.monotonic() < deadline, 'training timed out'
                if kill_at_log is not None:
                    with open(log) as f:
                        f.seek(start)
                        if kill_at_log in f.read():
                            os.kill(proc.pid, signal.SIGKILL)
                            proc.wait()
                            break
                time.sleep(0.05)
        finally:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
    with open(log) as f:
        f.seek(start)
        return proc.returncode, f.read()


def _load(path):
    return torch.load(path, weights_only=WEIGHTS_ONLY, map_location='cpu')


def _assert_same_training_state(a, b):
    """Model, optimizer, schedulers, RNG, progress and loss history: bit for bit.
    Returns the number of tensors compared."""
    for key in ('state_dict', 'optimizer', 'param_schedulers', 'rng_state'):
        assert_same(a[key], b[key], key)
    assert (a['meta']['epoch'], a['meta']['iter']) == (b['meta']['epoch'], b['meta']['iter'])
    scalars_a, scalars_b = a['message_hub']['log_scalars'], b['message_hub']['log_scalars']
    losses = [k for k in scalars_a if 'loss' in k or 'acc' in k or k == 'train/lr']
    assert 'train/loss' in losses and 'train/decode.loss_ce' in losses
    for k in losses:  # whole history: every iteration's loss, not only the last
        for x, y in zip(scalars_a[k].data, scalars_b[k].data):
            assert x.tolist() == y.tolist(), k
    return sum(isinstance(v, torch.Tensor) for v in a['state_dict'].values())


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp('fault')
    cfg = root / 'deeplabv3_r50-d8-sge_tiny_cityscapes-shapes.py'
    cfg.write_text(_TINY.format(demo=DEMO, data_root=f'{root}/cityscapes_shapes/',
                                max_iters=MAX_ITERS))
    return root, str(cfg)


@pytest.fixture(scope='module')
def uninterrupted(tiny):
    root, cfg = tiny
    work = str(root / 'uninterrupted')
    code, out = _train(cfg, work)
    assert code == 0, out[-3000:]
    return work


# --------------------------------------------------------------------------
# SIGKILL inside checkpoint writes and between them; resume; bit-identical
# --------------------------------------------------------------------------
@pytest.mark.slow
def test_killed_four_times_and_resumed_ends_bit_identical(tiny, uninterrupted):
    root, cfg = tiny
    work = str(root / 'killed')
    temp = lambda name: [f for f in os.listdir(work) if f.startswith(f'.{name}.tmp-')]  # noqa

    # 1. killed half-way through writing iter_4.pth: iter_2 stays the last checkpoint
    code, out = _train(cfg, work, fault='mid-write:iter_4.pth')
    FAULTS.append(('iter_4.pth', 'SIGKILL mid-write (half the bytes in the temp file)'))
    assert code == -signal.SIGKILL, out[-3000:]
    assert not osp.exists(osp.join(work, 'iter_4.pth')) and len(temp('iter_4.pth')) == 1
    assert not checkpoint_is_complete(osp.join(work, temp('iter_4.pth')[0]))
    assert open(osp.join(work, 'last_checkpoint')).read() == osp.join(work, 'iter_2.pth')
    assert checkpoint_is_complete(osp.join(work, 'iter_2.pth'))

    # 2. resumed from iter_2; killed with iter_6.pth complete in its temp file, before
    #    os.replace; the killed writer's stale temp file is removed on start
    code, out = _train(cfg, work, '--resume', fault='before-replace:iter_6.pth')
    FAULTS.append(('iter_6.pth', 'SIGKILL after the temp file is fsynced, before os.replace'))
    assert code == -signal.SIGKILL, out[-3000:]
    assert 'resumed epoch: 0, iter: 2' in out and 'Advance dataloader 2 steps' in out
    assert 'left by a writer that was killed' in out and not temp('iter_4.pth')
    assert not osp.exists(osp.join(work, 'iter_6.pth')) and len(temp('iter_6.pth')) == 1
    assert open(osp.join(work, 'last_checkpoint')).read() == osp.join(work, 'iter_4.pth')

    # 3. resumed from iter_4; killed with iter_6.pth in place but last_checkpoint not
    #    yet updated: the next resume goes back to iter_4 (consistent, only older)
    code, out = _train(cfg, work, '--resume', fault='after-replace:iter_6.pth')
    FAULTS.append(('iter_6.pth', 'SIGKILL after os.replace, before last_checkpoint'))
    assert code == -signal.SIGKILL, out[-3000:]
    assert 'resumed epoch: 0, iter: 4' in out
    assert checkpoint_is_complete(osp.join(work, 'iter_6.pth'))
    assert open(osp.join(work, 'last_checkpoint')).read() == osp.join(work, 'iter_4.pth')

    # 4. resumed from iter_4 again; SIGKILLed from outside in iteration 8, after iter_6
    code, out = _train(cfg, work, '--resume', kill_at_log=f'Iter(train) [7/{MAX_ITERS}]')
    FAULTS.append(('iteration 8', 'SIGKILL from outside between checkpoints'))
    assert code == -signal.SIGKILL, out[-3000:]
    assert 'resumed epoch: 0, iter: 4' in out
    assert open(osp.join(work, 'last_checkpoint')).read() == osp.join(work, 'iter_6.pth')
    assert not osp.exists(osp.join(work, f'iter_{MAX_ITERS}.pth'))

    # 5. resumed from iter_6 to the end
    code, out = _train(cfg, work, '--resume')
    assert code == 0, out[-3000:]
    assert 'resumed epoch: 0, iter: 6' in out

    final = _load(osp.join(work, f'iter_{MAX_ITERS}.pth'))
    reference = _load(osp.join(uninterrupted, f'iter_{MAX_ITERS}.pth'))
    assert _assert_same_training_state(final, reference) > 100
    # the comparison is not vacuous: the weights moved after the last resume
    mid = _load(osp.join(work, 'iter_6.pth'))['state_dict']
    assert any(not torch.equal(v, final['state_dict'][k]) for k, v in mid.items())
    # outdated checkpoints were removed only after newer ones were complete
    assert sorted(f for f in os.listdir(work) if f.endswith('.pth')) == ['iter_6.pth',
                                                                       'iter_8.pth']


@pytest.mark.slow
def test_truncated_newest_checkpoint_is_skipped_by_resume(tiny, uninterrupted):
    """A truncated iter_8.pth that last_checkpoint names (an older writer's torn file):
    --resume falls back to iter_6, says so, and retrains to the same iter_8."""
    root, cfg = tiny
    work = str(root / 'truncated')
    shutil.copytree(uninterrupted, work, ignore=shutil.ignore_patterns('2*'))
    with open(osp.join(work, 'last_checkpoint'), 'w') as f:
        f.write(osp.join(work, f'iter_{MAX_ITERS}.pth'))
    newest = osp.join(work, f'iter_{MAX_ITERS}.pth')
    with open(newest, 'r+b') as f:
        f.truncate(os.path.getsize(newest) * 2 // 3)
    FAULTS.append((f'iter_{MAX_ITERS}.pth', 'truncated to 2/3 on disk'))
    code, out = _train(cfg, work, '--resume')
    assert code == 0, out[-3000:]
    assert f'names {newest}, which is truncated or corrupted; resuming from the newest ' \
           f'complete checkpoint, {osp.join(work, "iter_6.pth")}' in out
    assert 'resumed epoch: 0, iter: 6' in out
    _assert_same_training_state(_load(newest),
                                _load(osp.join(uninterrupted, f'iter_{MAX_ITERS}.pth')))


# --------------------------------------------------------------------------
# unsafe checkpoints are refused with a message that says what and how
# --------------------------------------------------------------------------
class _Payload:
    def __reduce__(self):
        return os.system, ('echo pwned > /dev/null',)


def _evil(tmp_path, reference):
    ckpt = _load(reference)
    ckpt['meta']['note'] = _Payload()
    path = str(tmp_path / 'iter_8.pth')
    torch.save(ckpt, path)
    FAULTS.append(('iter_8.pth', 'os.system reduce pickled into meta'))
    return path


@needs_unsafe_globals_check
@pytest.mark.slow
@pytest.mark.parametrize('how', ['--resume', 'load_from'])
def test_checkpoint_with_pickled_code_is_refused(tiny, uninterrupted, tmp_path, how):
    _, cfg = tiny
    evil = _evil(tmp_path, osp.join(uninterrupted, f'iter_{MAX_ITERS}.pth'))
    args = ['--resume', evil] if how == '--resume' else ['--cfg-options', f'load_from={evil}']
    code, out = _train(cfg, str(tmp_path / 'work'), *args)
    assert code != 0
    assert 'UnsafeCheckpointError' in out and f'Refusing to load {evil}' in out
    assert 'posix.system' in out and 'torch.serialization.add_safe_globals([system])' in out
    assert 'Iter(train)' not in out


@needs_unsafe_globals_check
def test_unsafe_message_names_each_global_and_safe_one_passes(tmp_path):
    path = str(tmp_path / 'evil.pth')
    torch.save({'state_dict': {'w': torch.zeros(2)}, 'meta': _Payload(),
                'x': pickle.UnpicklingError}, path)
    with pytest.raises(UnsafeCheckpointError) as info:
        check_checkpoint_is_safe(path)
    msg = str(info.value)
    assert 'posix.system' in msg and 'pickle.UnpicklingError' in msg
    assert ('add_safe_globals([system, UnpicklingError])' in msg
            or 'add_safe_globals([UnpicklingError, system])' in msg)
    assert isinstance(info.value, pickle.UnpicklingError)  # callers catching torch's error
    with pytest.raises(pickle.UnpicklingError):  # and torch itself still refuses it
        torch.load(path, weights_only=True)
    ok = str(tmp_path / 'ok.pth')
    torch.save({'state_dict': {'w': torch.zeros(2)}, 'rng_state': get_rng_state()}, ok)
    check_checkpoint_is_safe(ok)
    check_checkpoint_is_safe('torchvision://resnet50')  # remote: left to mmengine


# --------------------------------------------------------------------------
# pieces
# --------------------------------------------------------------------------
def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    import random

    import numpy as np
    state = get_rng_state()
    torch.save({'rng_state': state}, tmp_path / 'rng.pth')
    expected = (random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist())
    random.random(), np.random.rand(5), torch.rand(5)
    set_rng_state(_load(tmp_path / 'rng.pth')['rng_state'])
    assert (random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist()) == expected


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path):
    path = str(tmp_path / 'sub' / 'last_checkpoint')
    atomic_write('a' * 10, path)
    atomic_write(b'b', path)
    assert open(path).read() == 'b' and os.listdir(tmp_path / 'sub') == ['last_checkpoint']
    with pytest.raises(TypeError):
        atomic_write(12, path)  # not bytes: nothing written, nothing left behind
    assert open(path).read() == 'b' and os.listdir(tmp_path / 'sub') == ['last_checkpoint']


def test_find_resumable_checkpoint_cases(tmp_path):
    work = str(tmp_path)
    assert find_resumable_checkpoint(work) is None  # nothing saved yet
    good = str(tmp_path / 'iter_2.pth')
    torch.save({'state_dict': {}}, good)
    atomic_write(good, str(tmp_path / 'last_checkpoint'))
    assert find_resumable_checkpoint(work) == good
    atomic_write('', str(tmp_path / 'last_checkpoint'))  # empty pointer
    assert find_resumable_checkpoint(work) == good
    atomic_write(str(tmp_path / 'iter_4.pth'), str(tmp_path / 'last_checkpoint'))  # missing
    assert find_resumable_checkpoint(work) == good
    with open(good, 'r+b') as f:
        f.truncate(10)
    with pytest.raises(FileNotFoundError, match='no other complete checkpoint'):
        find_resumable_checkpoint(work)
