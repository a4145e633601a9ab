"""tools/analysis/visualize_plugins.py: figures for every supported module type, hooks only.

Each run builds a demo twin (random init or the config's init; no checkpoint is needed), pushes
one demo image through the test pipeline and writes PNGs; every PNG must open, be non-empty and
hold more than one colour. One mmdet config carries SE, CBAM, SGE, NonLocal, StripPooling, STN
and mmcv's DCNv2 at once; the DCN+ASFF demo covers DCNv2UnitMask and ASFF; the SPNet demo covers
StripPooling and MPMBlock in mmseg.
"""
import os.path as osp
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, osp.join(ROOT, 'tools', 'analysis'))
import visualize_plugins as vp  # noqa: E402

DCN_ASFF = osp.join(ROOT, 'configs/faster_rcnn_r50_dcn_asff_demo_coco-shapes.py')
SE_DEMO = osp.join(ROOT, 'configs/se/faster-rcnn_r50-se-c2-c5_fpn_demo_coco-shapes.py')
SPNET = osp.join(ROOT, 'configs/strip_pooling/deeplabv3_r50-d8-spnet_demo_cityscapes-shapes.py')

#: One plugin type per stage (and two in stage 3), DCNv2 (mmcv) in stage 4; the residual BNs
#: are not zero-initialised so that the gates see non-zero inputs.
_MIXED = f'''
_base_ = {SE_DEMO!r}
model = dict(backbone=dict(
    zero_init_residual=False,
    dcn=dict(type='DCNv2', deform_groups=1, fallback_on_stride=False),
    stage_with_dcn=(False, False, False, True),
    plugins=[
        dict(cfg=dict(type='SE'), stages=(True, False, False, False), position='after_conv3'),
        dict(cfg=dict(type='CBAM'), stages=(False, True, False, False), position='after_conv3'),
        dict(cfg=dict(type='SGE', groups=16), stages=(False, False, True, False),
             position='after_conv3'),
        dict(cfg=dict(type='NonLocal'), stages=(False, False, True, False),
             position='after_conv3'),
        dict(cfg=dict(type='StripPooling'), stages=(False, False, False, True),
             position='after_conv2'),
        dict(cfg=dict(type='STN'), stages=(False, False, False, True), position='after_conv3'),
    ]))
'''


def _check_png(path):
    assert osp.getsize(path) > 0, path
    with Image.open(path) as im:
        assert im.width > 100 and im.height > 100, (path, im.size)
        pixels = np.asarray(im.convert('RGB'))
    colours = np.unique(pixels.reshape(-1, 3), axis=0)
    assert len(colours) > 50, f'{path}: only {len(colours)} colours'


def _check_outputs(out_dir, entries):
    files = [e['file'] for e in entries]
    assert 'predictions.png' in files
    for name in files + ['summary.png']:
        _check_png(osp.join(out_dir, name))
    with open(osp.join(out_dir, 'index.md')) as f:
        index = f.read()
    for e in entries:
        assert f']({e["file"]})' in index, e['file']
    return {e['kind']: e for e in entries}


@pytest.fixture(scope='module')
def mixed_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('vis_mixed')
    config = tmp / 'mixed.py'
    config.write_text(_MIXED)
    out = str(tmp / 'out')
    entries = vp.run(str(config), out_dir=out, max_per_kind=1, query=(64, 40),
                     points=[(30, 30), (100, 90)], progress=False)
    return out, entries


@pytest.mark.slow
def test_many_plugin_types_in_one_model(mixed_run):
    out, entries = mixed_run
    kinds = _check_outputs(out, entries)
    assert set(kinds) == {'SE', 'CBAM', 'SGE', 'NonLocal', 'StripPooling', 'STN',
                          'ModulatedDeformConv2dPack', 'mmdet'}
    # one PNG per instance, named after the module path
    assert kinds['SE']['file'] == 'backbone.layer1.0.se.png'
    assert kinds['CBAM']['file'] == 'backbone.layer2.0.cbam.png'
    assert kinds['ModulatedDeformConv2dPack']['file'] == 'backbone.layer4.0.conv2.png'
    # the config's init: SGE's gamma is 0, so every gate is sigmoid(1); STN is the identity
    assert 'mean 0.731 (min 0.731, max 0.731)' in kinds['SGE']['summary']
    assert 'max |theta - I| = 0' in kinds['STN']['summary']
    assert 'config init' in entries[0]['note']


def test_gates_match_the_modules_outputs(mixed_run):
    """What the figures show is what the modules multiplied their inputs by."""
    from mmengine.config import Config
    from mmengine.registry import MODELS, init_default_scope

    import mmplug  # noqa: F401
    from mmplug.plugins import CBAM, SE, SGE, StripPooling

    init_default_scope('mmdet')
    cfg = Config.fromstring(_MIXED, '.py')
    model = MODELS.build(cfg.model).backbone
    model.eval()  # mmdet's ResNet.train returns None
    probes = {p.kind: p for p in vp.find_probes(model, max_per_kind=1)}
    outs = {}

    def record(name):
        def hook(module, args, out):
            # clones: mmdet's Bottleneck adds the identity into the output in place
            outs.setdefault(name, (args[0].clone(), out.clone()))  # None: the output is kept
        return hook

    handles = [m.register_forward_hook(record(type(m).__name__)) for m in model.modules()
               if isinstance(m, (SE, CBAM, SGE, StripPooling))]
    for probe in probes.values():
        probe.attach()
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    for h in handles:
        h.remove()
    for probe in probes.values():
        probe.detach_hooks()
    ctx = vp.Context(np.zeros((64, 64, 3), np.uint8), (64, 64), (1.0, 1.0), (10, 10),
                     [(10, 10)], 5, '', '')
    for kind in ('SE', 'CBAM', 'SGE', 'StripPooling'):
        probes[kind].compute(ctx)
    x, y = outs['SE']
    gate = torch.from_numpy(probes['SE'].result['channel'])
    torch.testing.assert_close(y[0], x[0] * gate[:, None, None], rtol=1e-5, atol=1e-6)
    x, y = outs['CBAM']
    r = probes['CBAM'].result
    expected = x[0] * torch.from_numpy(r['channel'])[:, None, None] \
        * torch.from_numpy(r['spatial'])[None]
    torch.testing.assert_close(y[0], expected, rtol=1e-4, atol=1e-5)
    x, y = outs['SGE']
    groups = torch.from_numpy(probes['SGE'].result['groups'])  # [G, H, W]
    g = groups.shape[0]
    expected = (x[0].view(g, -1, *x.shape[-2:]) * groups[:, None]).view_as(x[0])
    torch.testing.assert_close(y[0], expected, rtol=1e-5, atol=1e-6)
    x, y = outs['StripPooling']
    r = probes['StripPooling'].result
    full = torch.from_numpy(r['gate_full'])  # [C, H, W]
    torch.testing.assert_close(y[0], x[0] * full, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.from_numpy(r['gate']), full.mean(0))


@pytest.mark.slow
def test_dcn_and_asff_demo(tmp_path):
    out = str(tmp_path / 'out')
    entries = vp.run(DCN_ASFF, out_dir=out, modules=['backbone.layer4.0.*', 'neck.*'],
                     progress=False)
    kinds = _check_outputs(out, entries)
    assert [e['file'] for e in entries] == ['backbone.layer4.0.conv2.png', 'neck.1.png',
                                            'predictions.png']
    assert set(kinds) == {'DCNv2UnitMask', 'ASFF', 'mmdet'}
    # at init: zero offsets, mask 2 * sigmoid(0) = 1, ASFF weights exactly 1/5
    assert 'mean offset 0 px' in kinds['DCNv2UnitMask']['summary']
    assert 'mask mean 1 (min 1, max 1)' in kinds['DCNv2UnitMask']['summary']
    assert kinds['ASFF']['summary'].count('0.20') == 25


@pytest.mark.slow
def test_mmseg_strip_pooling_and_mpm(tmp_path):
    out = str(tmp_path / 'out')
    entries = vp.run(SPNET, out_dir=out, max_per_kind=1, progress=False)
    kinds = _check_outputs(out, entries)
    assert set(kinds) == {'StripPooling', 'MPMBlock', 'mmseg'}
    assert kinds['MPMBlock']['file'] == 'neck.blocks.0.0.png' or \
        kinds['MPMBlock']['file'].startswith('neck.')


def test_no_supported_module_lists_what_was_found():
    import mmplug  # noqa: F401
    from mmengine.registry import init_default_scope
    from mmdet.models.backbones import ResNet

    from mmplug.conv import GhostConv2d

    init_default_scope('mmdet')
    model = ResNet(50)
    model.layer1[0].conv2 = GhostConv2d(64, 64, 3, padding=1)
    with pytest.raises(vp.VisualizeError,
                       match=r'Supported: SE, CBAM.*ResNet \(conv1 Conv2d.*GhostConv2d x1'):
        vp.find_probes(model)
    with pytest.raises(vp.VisualizeError, match=r'matching --modules'):
        vp.find_probes(model, patterns=['neck.*'])


def test_errors_point_to_the_fix(tmp_path):
    with pytest.raises(vp.VisualizeError, match='does not exist.*tools/train.py'):
        vp.run(SE_DEMO, checkpoint=str(tmp_path / 'missing.pth'), out_dir=str(tmp_path))
    with pytest.raises(vp.VisualizeError, match='config .* does not exist'):
        vp.run(str(tmp_path / 'nope.py'), out_dir=str(tmp_path))
    with pytest.raises(SystemExit):
        vp.parse_args([SE_DEMO, '--points', '1', '2', '3'])


def test_cli_reports_missing_image(tmp_path):
    res = subprocess.run([sys.executable, osp.join(ROOT, 'tools/analysis/visualize_plugins.py'),
                          SE_DEMO, '--image', str(tmp_path / 'none.png'), '--out-dir',
                          str(tmp_path)], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode != 0
    assert 'none.png' in res.stderr and 'leave out --image' in res.stderr
