"""tools/analysis/config_complexity.py and mmplug.analysis.complexity: baselines, exact parameter
deltas, DCN MACs, outputs.

Also ``--speed`` of it and of ``module_overhead.py`` (the shared ``mmplug.analysis.timing``
code): smoke-sized runs whose numbers are checked for structure only, never for speed.
"""
import json
import os
import os.path as osp
import shutil
import statistics
import subprocess
import sys

import pytest
import torch
from torch import nn

from mmplug.analysis import complexity as cc
from mmplug.analysis import options, overhead, report, timing
from mmplug.plugins import SGE

from _harness import ROOT, load_tool


def _load_cli(name):
    """The command line ``tools/analysis/<name>.py`` as a module."""
    return load_tool(f'analysis/{name}.py')


cc_cli = _load_cli('config_complexity')
mo_cli = _load_cli('module_overhead')

SGE_CONFIG = osp.join(ROOT, 'configs/sge/faster-rcnn_r50-sge-c3-c5_fpn_1x_coco.py')
FASTER = 'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py'
DEEPLAB = 'mmseg::deeplabv3/deeplabv3_r50-d8_4xb2-40k_cityscapes-512x1024.py'
SHAPE = (128, 128)
SPEED_SHAPE = (64, 64)
#: What ``--speed`` adds to every measurement (and nothing else).
SPEED_KEYS = {'img_s', 'speed_vs_baseline', 'speed_vs_baseline_iqr', 'fwd_ms', 'fwd_samples_ms',
              'peak_bytes'}
#: The keys of a config row without ``--speed``: as before the option existed.
ROW_KEYS = {'config', 'baseline', 'task', 'shape', 'params', 'macs', 'deform_macs', 'd_params',
            'd_params_pct', 'd_macs', 'd_macs_pct'}
COLUMNS = '| config | baseline | params (M) | d params | GMACs | d GMACs |'

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


def _round_ratio(base_ms, ms):
    """Speed vs baseline as the tools define it: median over rounds of base time / time."""
    return statistics.median(b / t for b, t in zip(base_ms, ms))



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
        cc_cli.parse_args([SGE_CONFIG, '--shape', '100', '128'])
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
    # without --speed: no speed columns, notes or keys (the output the tool always gave)
    assert f'{COLUMNS}\n| --- | --- | ---: | ---: | ---: | ---: |\n' in table
    assert 'img/s' not in table and 'speed' not in table
    assert set(results) == {'baselines', 'configs'} and set(row) == ROW_KEYS
    assert set(results['baselines'][FASTER]) == {'task', 'shape', 'params', 'macs', 'deform_macs'}


def test_progress_without_tqdm_uses_mmengine(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, 'tqdm', None)  # import tqdm now raises ImportError
    assert list(cc._progress(['a', 'b'])) == ['a', 'b']
    err = capsys.readouterr().err
    assert '2/2' in err


# ------------------------------------------------------------ --speed (structure only)

def test_round_robin_rotates_and_drops_the_warmup():
    calls = []

    def measure(key):
        calls.append(key)
        return len(calls)

    samples = timing.round_robin('abc', measure, warmup=1, repeats=3)
    assert ''.join(calls) == 'abc' 'bca' 'cab' 'abc'  # every key once per round, rotating
    assert samples == {'a': [6, 8, 10], 'b': [4, 9, 11], 'c': [5, 7, 12]}  # warm-up dropped


def test_forward_speed_rows():
    grad_enabled = []

    def forward():
        grad_enabled.append(torch.is_grad_enabled())
        torch.ones(64, 64).matmul(torch.ones(64, 64))

    cpu = torch.device('cpu')
    rows = timing.forward_speed({'x': forward, 'y': forward}, 4, cpu, warmup=1, repeats=3)
    assert not any(grad_enabled) and len(grad_enabled) == 2 * (1 + 3)  # no_grad, every round
    assert set(rows) == {'x', 'y'}
    for row in rows.values():
        assert set(row) == SPEED_KEYS and row['speed_vs_baseline'] is None  # no baseline
        assert len(row['fwd_samples_ms']) == 3 and row['peak_bytes'] is None
        assert row['img_s'] == pytest.approx(4 / row['fwd_ms'] * 1e3) and row['img_s'] > 0
    rows = timing.forward_speed({'x': forward, 'y': forward}, 4, cpu, 0, 2, baseline='y')
    assert rows['y']['speed_vs_baseline'] == 1.0
    assert rows['x']['speed_vs_baseline'] == pytest.approx(
        _round_ratio(rows['y']['fwd_samples_ms'], rows['x']['fwd_samples_ms']))


def test_speed_options_and_defaults(capsys):
    args = cc_cli.parse_args([SGE_CONFIG])
    assert not args.speed and (args.speed_batch, args.warmup, args.repeats) == (1, 1, 5)
    args = mo_cli.parse_args([])
    assert not args.speed and (args.speed_batch, args.warmup, args.repeats) == (8, 2, 10)
    assert tuple(args.size) == (224, 224)
    for bad in (['--repeats', '0'], ['--speed-batch', '-1'], ['--warmup', '-1']):
        with pytest.raises(SystemExit):
            cc_cli.parse_args([SGE_CONFIG, '--speed', *bad])
        assert 'must be' in capsys.readouterr().err


def _speed_meta(batch=1, repeats=2, warmup=0):
    args = cc_cli.parse_args([SGE_CONFIG, '--speed', '--device', 'cpu', '--speed-batch',
                              str(batch), '--repeats', str(repeats), '--warmup', str(warmup)])
    return options.speed_meta(args, torch.get_num_threads())


@pytest.fixture(scope='module')
def speed_run(tmp_path_factory):
    """``run`` with speed on an mmseg config and a two-stage detector config, 64x64.

    Records how many RoIs the Faster R-CNNs' RoI heads get in the timed forwards.
    """
    seg_config = _write(tmp_path_factory.mktemp('speed') / 'deeplabv3_r50-sge_tmp.py',
                        _SEG_CONFIG)
    rois = {}
    real = cc.forward_speed

    def spy(forwards, *args, **kwargs):
        for job, forward in forwards.items():
            model = forward.func  # functools.partial(model, inputs, samples, mode='tensor')
            assert not model.training
            if getattr(model, 'roi_head', None) is not None:
                rois[job] = []
                model.roi_head.bbox_roi_extractor.register_forward_hook(
                    lambda module, inputs, out, job=job: rois[job].append(len(inputs[1])))
        return real(forwards, *args, **kwargs)

    meta = _speed_meta()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cc, 'forward_speed', spy)
        results = cc.run([SGE_CONFIG, seg_config], SPEED_SHAPE, speed=meta, progress=False)
    return results, meta, seg_config, rois


def test_speed_measurements_are_interleaved_with_the_baseline(speed_run):
    results, meta, _, _ = speed_run
    assert results['speed'] == meta
    assert list(results['baselines']) == [FASTER, DEEPLAB]
    for base in results['baselines'].values():
        assert base['speed_vs_baseline'] == 1.0
    for row in results['configs']:
        base = results['baselines'][row['baseline']]
        assert row['speed_vs_baseline'] == pytest.approx(
            _round_ratio(base['fwd_samples_ms'], row['fwd_samples_ms']))
    for m in [*results['baselines'].values(), *results['configs']]:
        assert SPEED_KEYS <= set(m) and m['peak_bytes'] is None  # CPU: no peak memory
        assert len(m['fwd_samples_ms']) == meta['repeats'] and min(m['fwd_samples_ms']) > 0
        assert m['img_s'] > 0 and m['speed_vs_baseline'] > 0
        assert m['img_s'] == pytest.approx(meta['batch'] / m['fwd_ms'] * 1e3)
    json.dumps(results)  # JSON-able


def test_speed_times_detectors_with_the_rpn_nms_off(speed_run):
    _, meta, _, rois = speed_run
    assert set(rois) == {FASTER, SGE_CONFIG}
    max_per_img = cc.load_config(FASTER).model.test_cfg.rpn.max_per_img
    for counts in rois.values():  # 64x64 has 1023 anchors: NMS off keeps max_per_img
        assert len(counts) == meta['warmup'] + meta['repeats']
        assert set(counts) == {meta['batch'] * max_per_img}


def test_speed_leaves_params_and_macs_as_without_it(speed_run):
    results, _, seg_config, _ = speed_run
    plain = cc.run([seg_config], SPEED_SHAPE, progress=False)

    def strip(m):
        return {k: v for k, v in m.items() if k not in SPEED_KEYS}

    assert strip(results['baselines'][DEEPLAB]) == plain['baselines'][DEEPLAB]
    assert strip(results['configs'][1]) == plain['configs'][0]
    assert set(plain['configs'][0]) == ROW_KEYS


def test_speed_markdown_columns(speed_run):
    results, meta, _, _ = speed_run
    table = cc.to_markdown(results)
    header = COLUMNS + ' img/s | speed vs baseline |'
    assert header + '\n| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |\n' in table
    rows = [line for line in table.splitlines() if line.startswith('| ') and '---' not in line]
    assert len(rows) == 1 + 2 + 2
    assert all(line.count('|') == header.count('|') for line in rows)
    for name in results['baselines']:
        line = next(line for line in rows if line.startswith(f'| {name} | (baseline) |'))
        assert line.endswith(' | 1.00x |') and float(line.split('|')[-3]) > 0
    assert 'forward img/s at batch 1' in table and 'RPN\'s NMS off as in note 2' in table
    assert f'median of {meta["repeats"]} rounds after {meta["warmup"]} warm-up' in table
    assert 'peak MiB' not in table  # CUDA only
    # a config without a baseline is timed alone: no ratio
    alone = dict(results, baselines={}, configs=[dict(results['configs'][1], baseline=None,
                                                      speed_vs_baseline=None)])
    assert cc.to_markdown(alone).splitlines()[4].endswith(' | - |')


def test_module_overhead_speed(tmp_path, capsys):
    common = ['--size', *map(str, SPEED_SHAPE), '--only', 'SGE', '--no-progress']
    plain = mo_cli.main(common)
    plain_table = capsys.readouterr().out
    assert plain_table.splitlines()[1] == \
        '| module | placement | params (M) | d params | GMACs | d GMACs |'
    assert 'img/s' not in plain_table and set(plain) == {'size', 'rows'}
    json_path = tmp_path / 'overhead.json'
    threads = torch.get_num_threads()
    results = mo_cli.main(common + ['--speed', '--speed-batch', '2', '--repeats', '2',
                                    '--warmup', '0', '--threads', '1', '--device', 'cpu',
                                    '--json', str(json_path)])
    table = capsys.readouterr().out
    assert torch.get_num_threads() == threads  # restored after the run
    assert json.loads(json_path.read_text()) == json.loads(json.dumps(results))
    speed = results['speed']
    assert (speed['batch'], speed['repeats'], speed['warmup'], speed['threads']) == (2, 2, 0, 1)
    base, sge = results['rows']
    assert (base['module'], sge['module']) == ('ResNet-50', 'SGE')
    assert base['speed_vs_baseline'] == 1.0
    assert sge['speed_vs_baseline'] == pytest.approx(
        _round_ratio(base['fwd_samples_ms'], sge['fwd_samples_ms']))
    for row, plain_row in zip(results['rows'], plain['rows']):
        assert row['img_s'] == pytest.approx(2 / row['fwd_ms'] * 1e3) and row['img_s'] > 0
        assert len(row['fwd_samples_ms']) == 2 and row['peak_bytes'] is None
        assert {k: v for k, v in row.items()
                if k not in SPEED_KEYS | {'time_in_module'}} == plain_row
    lines = table.splitlines()
    assert lines[1] == (plain_table.splitlines()[1]
                        + ' img/s | speed vs baseline | time in module |')
    assert lines[3].endswith(' | 1.00x | - |')  # the baseline inserts no module
    assert base['time_in_module'] is None and 0 < sge['time_in_module'] < 1
    assert lines[4].endswith(f' | {sge["time_in_module"] * 100:.1f}% |')
    # dropping the three speed cells and the note gives the table without --speed
    cut = [line.rsplit(' |', 4)[0] + ' |' if line.startswith('|') else line
           for line in lines[:5]]
    assert '\n'.join(cut) + '\n' == plain_table
    assert lines[5] == '' and 'Input: 2x3x64x64.' in lines[6] and len(lines) == 7


def test_time_in_modules_is_the_hooked_share_of_the_forward(monkeypatch):
    """A fake clock: the hooked module advances it by 3, the rest of the forward by 1."""
    import time
    clock = [0.0]
    monkeypatch.setattr(time, 'perf_counter', lambda: clock[0])

    class Tick(torch.nn.Module):
        def __init__(self, dt):
            super().__init__()
            self.dt = dt

        def forward(self, x):
            clock[0] += self.dt
            return x

    inner, outer = Tick(3.0), Tick(1.0)
    model = torch.nn.Sequential(outer, inner)
    share = overhead.time_in_modules([inner], lambda: model(torch.zeros(1)),
                                     torch.device('cpu'), warmup=2, repeats=3)
    assert share == pytest.approx(0.75)
    assert not inner._forward_hooks and not inner._forward_pre_hooks  # removed afterwards
    # the plugin variants' inserted modules are found; conv replacements insert none
    sge = overhead.build_resnet50(**overhead.VARIANTS['SGE'][0])
    assert len(overhead.plugin_modules(sge, overhead.VARIANTS['SGE'][0])) == 16  # every bottleneck
    ghost = overhead.build_resnet50(**overhead.VARIANTS['GhostConv2d'][0])
    assert overhead.plugin_modules(ghost, overhead.VARIANTS['GhostConv2d'][0]) == []


def test_paired_speed_times_every_config_against_the_baseline_alone(monkeypatch):
    """A fake clock: the baseline's forward takes 2, config a 1, config b 4."""
    import time
    clock, calls = [0.0], []
    monkeypatch.setattr(time, 'perf_counter', lambda: clock[0])

    def forward(name, dt):
        def run():
            calls.append(name)
            clock[0] += dt
        return run

    forwards = {'base': forward('base', 2.0), 'a': forward('a', 1.0), 'b': forward('b', 4.0)}
    rows = cc._paired_speed(forwards, 1, torch.device('cpu'), warmup=1, repeats=3,
                            baseline='base')
    # a's pair first, then b's; each pair alternates, the order swapped every round
    assert calls == ['base', 'a', 'a', 'base', 'base', 'a', 'a', 'base',
                     'base', 'b', 'b', 'base', 'base', 'b', 'b', 'base']
    assert rows['a']['speed_vs_baseline'] == 2.0 and rows['b']['speed_vs_baseline'] == 0.5
    assert rows['base']['speed_vs_baseline'] == 1.0
    assert rows['base']['fwd_samples_ms'] == [2e3] * 6  # pooled from both pairs
    assert rows['base']['img_s'] == pytest.approx(0.5) and rows['b']['img_s'] == 0.25
    # a config without a baseline is timed alone
    alone = cc._paired_speed({'a': forwards['a']}, 1, torch.device('cpu'), 0, 2)
    assert alone['a']['speed_vs_baseline'] is None and len(alone['a']['fwd_samples_ms']) == 2
    assert cc._timed_pairs(['base', 'a', 'b'], 'base') == 2
    assert cc._timed_pairs(['a'], None) == 1


def test_speed_cell_shows_the_median_ratio_and_its_quartiles():
    assert timing.quartiles([1.0, 2.0, 3.0, 4.0, 5.0]) == [2.0, 4.0]
    assert timing.quartiles([0.9]) == [0.9, 0.9]
    assert report.fmt_speed(dict(speed_vs_baseline=0.93, speed_vs_baseline_iqr=[0.9, 0.95])) \
        == '0.93x (0.90-0.95)'
    assert report.fmt_speed(dict(speed_vs_baseline=1.0, speed_vs_baseline_iqr=[1.0, 1.0])) \
        == '1.00x'  # the baseline itself
    assert report.fmt_speed(dict(speed_vs_baseline=None, speed_vs_baseline_iqr=None)) == '-'


def test_round_robin_shuffled_varies_order_and_predecessors_reproducibly():
    keys = list('abcd')

    def schedule(seed=0):
        calls = []
        samples = timing.round_robin(keys, lambda k: calls.append(k) or len(calls), 2, 20,
                                     shuffle=True, seed=seed)
        return calls, samples

    calls, samples = schedule()
    rounds = [calls[i:i + 4] for i in range(0, len(calls), 4)]
    assert len(rounds) == 22 and all(sorted(r) == keys for r in rounds)  # each once per round
    assert all(len(samples[k]) == 20 for k in keys)  # the 2 warm-up rounds dropped
    before_a = {r[r.index('a') - 1] for r in rounds if r[0] != 'a'}
    assert len(before_a) > 1 and len({r[0] for r in rounds}) > 1  # not a fixed cyclic order
    assert schedule()[0] == calls and schedule(seed=1)[0] != calls  # seeded
    # two keys alternate, as without shuffle
    pair = []
    timing.round_robin(['x', 'y'], pair.append, 0, 4, shuffle=True)
    assert pair == list('xyyxxyyx')
