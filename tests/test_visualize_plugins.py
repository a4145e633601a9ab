"""tools/analysis/visualize_plugins.py and mmplug.analysis.visualize: figures for every supported
module type, hooks and the modules' public methods only.

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

from mmplug.analysis.drawing import Context
from mmplug.analysis.figures import draw_probe
from mmplug.analysis.probes import VisualizeError, find_probes
from mmplug.analysis.visualize import run

from _harness import ROOT, load_tool

CLI = osp.join(ROOT, 'tools', 'analysis', 'visualize_plugins.py')


def _load_cli():
    """The command line, ``tools/analysis/visualize_plugins.py``, as a module."""
    return load_tool('analysis/visualize_plugins.py')


DCN_ASFF = osp.join(ROOT, 'configs/faster_rcnn_r50_dcn_asff_demo_coco-shapes.py')
SE_DEMO = osp.join(ROOT, 'configs/se/faster-rcnn_r50-se-c3-c5_fpn_demo_coco-shapes.py')
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
    entries = run(str(config), out_dir=out, max_per_kind=1, query=(64, 40),
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
    probes = {p.kind: p for p in find_probes(model, max_per_kind=1)}
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
    ctx = Context(np.zeros((64, 64, 3), np.uint8), (64, 64), (1.0, 1.0), (10, 10),
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


def test_non_local_stn_and_cbam_probes_read_the_modules(tmp_path):
    """The attention row, theta and a channel-only CBAM gate are those the modules apply."""
    import matplotlib
    import torch.nn.functional as F

    from mmplug.plugins import CBAM, STN, NonLocal

    matplotlib.use('Agg')
    torch.manual_seed(0)
    nl, stn, cbam = NonLocal(32, sub_sample=True), STN(32), CBAM(32, no_spatial=True)
    model = torch.nn.Sequential(nl, stn, cbam).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    probes = {p.kind: p for p in find_probes(model)}
    assert set(probes) == {'NonLocal', 'STN', 'CBAM'}
    for probe in probes.values():
        probe.attach()
    x = torch.randn(1, 32, 12, 10)
    with torch.no_grad():
        y_nl = nl(x)
        y_stn = stn(y_nl)
        y = cbam(y_stn)
        model(x)
    for probe in probes.values():
        probe.detach_hooks()
    # feature cell (5, 7) of the 12x10 grid holds pixel (20, 30) of a 48x40 input
    ctx = Context(np.zeros((48, 40, 3), np.uint8), (48, 40), (1.0, 1.0), (20, 30), [(20, 30)],
                  5, '', '')
    for probe in probes.values():
        probe.compute(ctx)
    r = probes['NonLocal'].result
    assert r['q'] == (5, 7) and r['keys_hw'] == (6, 5)  # keys pooled 2x2, ceil mode
    with torch.no_grad():
        query = nl.theta(x)[0, :, 5, 7]
        keys = nl.pool(nl.phi(x))[0]
    expected = ((query[:, None, None] * keys).sum(0).flatten() * nl.scale).softmax(0)
    assert expected.max() > 2 / expected.numel()  # not uniform: the check has teeth
    torch.testing.assert_close(torch.from_numpy(r['attn']).flatten(), expected)
    theta = torch.from_numpy(probes['STN'].result['theta'])
    assert (theta - torch.tensor([[1.0, 0, 0], [0, 1.0, 0]])).abs().max() > 0.05
    grid = F.affine_grid(theta[None], y_nl.shape, align_corners=False)  # as the figure warps
    torch.testing.assert_close(y_stn, F.grid_sample(y_nl, grid, align_corners=False),
                               rtol=1e-4, atol=1e-4)
    r = probes['CBAM'].result
    assert r['spatial'] is None and 'spatial' not in probes['CBAM'].summary
    torch.testing.assert_close(y, y_stn * torch.from_numpy(r['channel'])[:, None, None])
    path = str(tmp_path / 'cbam.png')
    draw_probe(probes['CBAM'], ctx, path)
    _check_png(path)


@pytest.mark.slow
def test_dcn_and_asff_demo(tmp_path):
    out = str(tmp_path / 'out')
    entries = run(DCN_ASFF, out_dir=out, modules=['backbone.layer4.0.*', 'neck.*'],
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
    entries = run(SPNET, out_dir=out, max_per_kind=1, progress=False)
    kinds = _check_outputs(out, entries)
    assert set(kinds) == {'StripPooling', 'MPMBlock', 'mmseg'}
    assert kinds['MPMBlock']['file'] == 'neck.blocks.0.0.png' or \
        kinds['MPMBlock']['file'].startswith('neck.')


def test_no_supported_module_lists_what_was_found():
    from mmdet.models.backbones import ResNet
    from mmengine.registry import init_default_scope

    import mmplug  # noqa: F401
    from mmplug.conv import GhostConv2d

    init_default_scope('mmdet')
    model = ResNet(50)
    model.layer1[0].conv2 = GhostConv2d(64, 64, 3, padding=1)
    with pytest.raises(VisualizeError,
                       match=r'Supported: SE, CBAM.*ResNet \(conv1 Conv2d.*GhostConv2d x1'):
        find_probes(model)
    with pytest.raises(VisualizeError, match=r'matching --modules'):
        find_probes(model, patterns=['neck.*'])


def test_errors_point_to_the_fix(tmp_path):
    with pytest.raises(VisualizeError, match='does not exist.*tools/train.py'):
        run(SE_DEMO, checkpoint=str(tmp_path / 'missing.pth'), out_dir=str(tmp_path))
    with pytest.raises(VisualizeError, match='config .* does not exist'):
        run(str(tmp_path / 'nope.py'), out_dir=str(tmp_path))
    with pytest.raises(SystemExit):
        _load_cli().parse_args([SE_DEMO, '--points', '1', '2', '3'])


def test_cli_reports_missing_image(tmp_path):
    res = subprocess.run([sys.executable, CLI, SE_DEMO, '--image', str(tmp_path / 'none.png'),
                          '--out-dir', str(tmp_path)], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode != 0
    assert 'none.png' in res.stderr and 'leave out --image' in res.stderr
