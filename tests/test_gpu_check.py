"""tools/gpu_check.sh as a dry run on the CPU (DEVICE=cpu): the steps run and log."""
import os
import os.path as osp
import subprocess
import sys

import pytest

from _harness import ROOT


def test_dry_run_on_cpu_logs_every_step(tmp_path):
    env = dict(os.environ, DEVICE='cpu', STEPS='ops bench', PYTHON=sys.executable,
               BENCH_ARGS='--only SE --stages c3', SCRATCH=str(tmp_path / 'scratch'))
    proc = subprocess.run(['bash', osp.join(ROOT, 'tools', 'gpu_check.sh'), str(tmp_path / 'out')],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = (tmp_path / 'out' / 'summary.log').read_text()
    assert 'CPU dry run' in proc.stdout
    assert "ops: mmcv's ops run on cpu already" in summary and 'ops: ok' in summary
    for dtype in ('fp32', 'bf16'):
        assert f'bench {dtype}: rc=0 (0 parity mismatches)' in summary, summary
        table = (tmp_path / 'out' / f'bench_{dtype}.md').read_text()
        assert '| SE |' in table and 'Smoke run' in table
    assert 'bf16 autocast' in (tmp_path / 'out' / 'bench_bf16.md').read_text()
    assert summary.rstrip().endswith('done')


def test_refuses_a_machine_without_cuda(tmp_path):
    import torch
    if torch.cuda.is_available():
        pytest.skip('CUDA is available here')
    proc = subprocess.run(['bash', osp.join(ROOT, 'tools', 'gpu_check.sh'), str(tmp_path)],
                          env=dict(os.environ, PYTHON=sys.executable), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert 'no usable cuda device (DEVICE=cpu for a dry run)' in proc.stdout
