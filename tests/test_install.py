"""The package installed from a built wheel into a fresh environment beside an existing
OpenMMLab stack, as a user with their own environment installs it."""
import glob
import os
import os.path as osp
import site
import subprocess
import sys

import pytest

from _harness import ROOT


def _run(args, **kwargs):
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600, **kwargs)
    assert proc.returncode == 0, (args, proc.stdout[-2000:], proc.stderr[-3000:])
    return proc.stdout


@pytest.mark.slow
def test_wheel_installs_without_deps_and_ships_its_configs(tmp_path):
    pytest.importorskip('build')
    _run([sys.executable, '-m', 'build', '--wheel', '--no-isolation', '--outdir',
          str(tmp_path / 'dist'), ROOT])
    (wheel, ) = glob.glob(str(tmp_path / 'dist' / 'mmplug-*.whl'))
    venv = tmp_path / 'venv'
    _run([sys.executable, '-m', 'venv', str(venv)])
    python = str(venv / 'bin' / 'python')
    _run([python, '-m', 'pip', 'install', '--no-deps', '--no-index', '-q', wheel])
    venv_site = _run([python, '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'])
    venv_site = venv_site.strip()
    assert not glob.glob(osp.join(venv_site, 'torch*')), 'the wheel pulled torch in'
    # The existing stack (torch, mmcv with its ops, mmdet, mmseg): this interpreter's
    # site-packages, after the venv's own, so mmplug comes from the wheel.
    with open(osp.join(venv_site, 'existing_stack.pth'), 'w') as f:
        f.write('\n'.join(site.getsitepackages()) + '\n')
    code = (
        'import os.path as osp, sys\n'
        'import mmplug\n'
        f'assert mmplug.__file__.startswith({venv_site!r}), mmplug.__file__\n'
        'from mmengine.config import Config\n'
        'from mmplug.configs import config_path\n'
        "path = config_path('mmplug::faster_rcnn_r50_dcn_asff.py')\n"
        f'assert path.startswith({venv_site!r}) and osp.isfile(path), path\n'
        'cfg = Config.fromfile(path)\n'
        'cfg.model.backbone.init_cfg = None\n'
        'from mmdet.registry import MODELS\n'
        'from mmdet.utils import register_all_modules\n'
        'register_all_modules()\n'
        'model = MODELS.build(cfg.model)\n'
        'print(type(model).__name__, type(model.neck[1]).__name__,\n'
        '      type(model.backbone.layer2[0].conv2).__name__)\n'
        "print(osp.isfile(config_path('mmplug::_base_/demo/faster-rcnn_coco-shapes.py')))\n")
    out = _run([python, '-c', code], cwd=str(tmp_path),
               env={k: v for k, v in os.environ.items() if k != 'PYTHONPATH'})
    assert out.split() == ['FasterRCNN', 'ASFF', 'DCNv2UnitMask', 'True'], out
