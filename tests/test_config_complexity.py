"""tools/analysis/config_complexity.py: baselines, exact parameter deltas, DCN MACs, outputs."""
import json
import os
import os.path as osp
import shutil
import subprocess
import sys

import pytest
from torch import nn

from mmplug.plugins import SGE

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, osp.join(ROOT, 'tools', 'analysis'))
import config_complexity as cc  # noqa: E402

SGE_CONFIG = osp.join(ROOT, 'configs/sge/faster-rcnn_r50-sge-c3-c5_fpn_1x_coco.py')
FASTER = 'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py'
DEEPLAB = 'mmseg::deeplabv3/deeplabv3_r50-d8_4xb2-40k_cityscapes-512x1024.py'
SHAPE = (128, 128)

_SEG_CONFIG = f'''
_base_ = '{DEEPLAB}'
custom_imports = dict(imports=['mmplug'], allow_failed_imports=False)
model = dict(backbone=dict(plugins=[
    dict(cfg=dict(type='SGE', groups=32), stages=(False, False, True, True),
         position='after_conv3')]))
'''

_DCN_CONFIG = f'''
_base_ = '{FASTER}'
model = dict(backbone=dict(
    dcn=dict(type='DCNv2', deform_groups=1, fallback_on_stride=False),
    stage_with_dcn=(False, True, True, True)))
'''


@pytest.fixture(scope='module')
def faster_baseline():
    return cc.measure_config(FASTER, SHAPE)


def _write(path, text=''):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def test_baseline_found_through_local_bases(tmp_path):
    assert cc.find_baseline(SGE_CONFIG) == FASTER
    # depth-first in listed order: c.py has no base, then b.py's first OpenMMLab entry
    _write(tmp_path / 'c.py', 'x = 1\n')
    _write(tmp_path / 'sub/b.py', "_base_ = ['../c.py', 'mmseg::a/seg.py', 'mmdet::a/det.py']\n")
    top = _write(tmp_path / 'top.py', "_base_ = './sub/b.py'\n")
    assert cc.find_baseline(top) == 'mmseg::a/seg.py'
    assert cc.find_baseline(str(tmp_path / 'c.py')) is None


def test_find_configs_skips_demo_twins_and_base_folders(tmp_path):
    real = [_write(tmp_path / 'a/x_1x_coco.py'), _write(tmp_path / 'b/c/y_40k_cityscapes.py')]
    _write(tmp_path / 'a/x_demo_coco-shapes.py')
    _write(tmp_path / '_base_/demo/part.py')
    _write(tmp_path / 'a/README.md')
    assert cc.find_configs([str(tmp_path)]) == real
    demo = str(tmp_path / 'a/x_demo_coco-shapes.py')
    assert cc.find_configs([demo, str(tmp_path / 'a')]) == [demo, real[0]]  # files as given
    with pytest.raises(FileNotFoundError, match='nope'):
        cc.find_configs([str(tmp_path / 'nope')])


@pytest.mark.parametrize('shape', [(100, 128), (128, ), (0, 128), (128.0, 128)])
def test_invalid_shape_rejected(shape):
    with pytest.raises(ValueError, match='divisible by 32'):
        cc.check_shape(shape)


def test_invalid_shape_on_the_command_line(capsys):
    with pytest.raises(SystemExit):
        cc.parse_args([SGE_CONFIG, '--shape', '100', '128'])
    assert 'divisible by 32' in capsys.readouterr().err


def test_sge_config_adds_exactly_the_sge_parameters(faster_baseline):
    model, scope = cc.build_model(SGE_CONFIG)
    assert scope == 'mmdet'
    assert 'Pretrained' not in str([m.init_cfg for m in model.modules() if hasattr(m, 'init_cfg')])
    sges = [m for m in model.modules() if isinstance(m, SGE)]
    assert len(sges) == 4 + 6 + 3
    measured = cc.measure(model, scope, SHAPE)
    assert measured['shape'] == list(SHAPE) and measured['task'] == 'detection'
    assert measured['params'] - faster_baseline['params'] == sum(2 * m.groups for m in sges)
    assert sum(2 * m.groups for m in sges) == 13 * 2 * 64
    assert faster_baseline['macs'] > 0 and faster_baseline['deform_macs'] == 0
    assert measured['macs'] >= faster_baseline['macs'] and measured['deform_macs'] == 0


def test_mmseg_config_against_its_baseline(tmp_path):
    cfg_file = _write(tmp_path / 'deeplabv3_r50-sge-c4-c5_tmp.py', _SEG_CONFIG)
    assert cc.find_baseline(cfg_file) == DEEPLAB
    model, scope = cc.build_model(cfg_file)
    assert scope == 'mmseg' and not model.with_auxiliary_head  # training-only head dropped
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())  # base has SyncBN
    sges = [m for m in model.modules() if isinstance(m, SGE)]
    assert len(sges) == 6 + 3
    measured = cc.measure(model, scope, SHAPE)
    base = cc.measure_config(DEEPLAB, SHAPE)
    assert base['task'] == measured['task'] == 'segmentation'
    assert measured['params'] - base['params'] == sum(2 * m.groups for m in sges) == 9 * 64
    assert measured['macs'] >= base['macs'] > 0
    assert cc.SCOPES['mmseg'][2] == (512, 1024) and cc.SCOPES['mmdet'][2] == (800, 1344)


def test_dcn_counted_as_its_dense_conv(tmp_path):
    cfg_file = _write(tmp_path / 'faster-rcnn_r50-dcnv2-c3-c5_tmp.py', _DCN_CONFIG)
    results = cc.run([cfg_file], SHAPE)
    assert list(results['baselines']) == [FASTER]
    row = results['configs'][0]
    assert row['baseline'] == FASTER
    # conv2 of c3-c5 (blocks, planes, output side at 128x128: strides 8, 16, 32);
    # DCNv2's offset conv predicts 3 * 3x3 values per position.
    stages = [(4, 128, 16), (6, 256, 8), (3, 512, 4)]
    dense = sum(n * side * side * c * c * 9 for n, c, side in stages)
    offset = sum(n * side * side * 27 * c * 9 for n, c, side in stages)
    assert row['deform_macs'] == dense == 490_733_568
    # FlopCounterMode sees the offset convs only; the dense MACs replace the plain conv2's.
    assert row['d_macs'] == offset
    assert row['d_params'] == sum(n * (27 * c * 9 + 27) for n, c, _ in stages)
    table = cc.to_markdown(results)
    assert f'| {row["macs"] / 1e9:.3f}* |' in table and 'dense conv' in table
    base_line = next(line for line in table.splitlines() if line.startswith(f'| {FASTER} |'))
    assert '*' not in base_line


def test_table_and_json_from_the_command_line(tmp_path):
    folder = tmp_path / 'configs'
    (folder / 'sge').mkdir(parents=True)
    shutil.copy(SGE_CONFIG, folder / 'sge')
    _write(folder / 'sge/faster-rcnn_r50-sge_demo_coco-shapes.py', "_base_ = './missing.py'\n")
    _write(folder / '_base_/demo/part.py', "_base_ = './missing.py'\n")
    out_md, out_json = tmp_path / 'table.md', tmp_path / 'table.json'
    proc = subprocess.run(
        [sys.executable, osp.join(ROOT, 'tools/analysis/config_complexity.py'), str(folder),
         '--shape', *map(str, SHAPE), '--out', str(out_md), '--json', str(out_json)],
        cwd=str(tmp_path), env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True,
        text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = out_md.read_text()
    assert table == proc.stdout
    assert '| config | baseline | params (M) | d params | GMACs | d GMACs |' in table
    assert f'| {FASTER} | (baseline) |' in table
    assert f'| configs/sge/{osp.basename(SGE_CONFIG)} | {FASTER} |' in table
    assert '+1,664 (' in table and '1x3x128x128' in table
    assert 'Detectors' in table and 'Segmentors' not in table and 'dense conv' not in table
    results = json.loads(out_json.read_text())
    assert list(results['baselines']) == [FASTER]
    [row] = results['configs']
    assert row['d_params'] == 1664 and row['baseline'] == FASTER and row['shape'] == [128, 128]


def test_progress_without_tqdm_uses_mmengine(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, 'tqdm', None)  # import tqdm now raises ImportError
    assert list(cc._progress(['a', 'b'])) == ['a', 'b']
    err = capsys.readouterr().err
    assert '2/2' in err
