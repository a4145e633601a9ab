"""tools/analysis/benchmark_plugins.py and mmplug.analysis.benchmark: smoke-run structure, peers,
parity, the saved-bytes rule.

Nothing here asserts a speed: smoke numbers are checked for structure and sanity only.
"""
import json
import statistics

import pytest
import torch
from torch import nn

from mmplug.analysis import benchmark as bench
from mmplug.analysis import peers
from mmplug.plugins.se import SE

from _harness import load_tool


def _load_cli():
    """The command line, ``tools/analysis/benchmark_plugins.py``, as a module."""
    return load_tool('analysis/benchmark_plugins.py')


cli = _load_cli()

SMOKE_MODULES = ('SE', 'SGE', 'NonLocal', 'DCNv2UnitMask')
#: timm's layers join as peers where timm imports (it needs torchvision; the GPU image has it).
TIMM = peers.timm_available()
PEERS = {
    'SE': {'ours': 'ours', 'fightingcv SEAttention': 'peer', 'mmdet SELayer': 'peer',
           **({'timm SEModule': 'peer'} if TIMM else {})},
    'SGE': {'ours': 'ours', 'fightingcv SpatialGroupEnhance': 'peer'},
    'NonLocal': {'ours': 'ours', 'mmcv NonLocal2d': 'peer',
                 **({'timm NonLocalAttn': 'peer'} if TIMM else {})},
    'DCNv2UnitMask': {'ours (torch)': 'ours', 'ours (mmcv op)': 'ours',
                      'mmcv ModulatedDeformConv2dPack': 'peer',
                      'nn.Conv2d 3x3 (replaced conv)': 'reference'},
}
COLUMNS = ('| module | shape | impl | params | MMACs | fwd ms | fwd+bwd ms | saved MiB '
           '| fwd / clone | fwd vs fastest peer | fwd+bwd vs fastest peer |')


@pytest.fixture(scope='module')
def smoke(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('bench')
    json_path, md_path = tmp / 'bench.json', tmp / 'bench.md'
    threads = torch.get_num_threads()
    results = cli.main(['--smoke', '--device', 'cpu', '--threads', '1', '--no-progress',
                        '--only', *SMOKE_MODULES, '--json', str(json_path), '--out',
                        str(md_path)])
    assert torch.get_num_threads() == threads  # restored after the run
    return results, json_path, md_path


def _groups(results, module):
    return [g for g in results['groups'] if g['module'] == module]


def test_json_and_markdown_are_written(smoke):
    results, json_path, md_path = smoke
    with open(json_path, encoding='utf-8') as f:
        assert json.load(f) == json.loads(json.dumps(results))
    table = md_path.read_text(encoding='utf-8')
    assert table == bench.to_markdown(results)
    assert COLUMNS in table and 'Smoke run' in table
    rows = [line for line in table.splitlines() if line.startswith('|')]
    assert sum('`x.clone()` floor' in line for line in rows) == len(results['groups'])
    body = [line for line in table.splitlines() if line.startswith(('| SE', '| SGE', '| Non',
                                                                     '| DCN'))]
    assert len(body) == sum(len(g['rows']) + 1 for g in results['groups'])
    assert all(line.count('|') == COLUMNS.count('|') for line in body)
    meta = results['meta']
    assert meta['smoke'] and meta['threads'] == 1 and meta['device'] == 'cpu'
    assert (meta['warmup'], meta['repeats'], meta['batch']) == (1, 2, 2)


def test_groups_at_each_modules_stages_with_smoke_shapes(smoke):
    results, _, _ = smoke
    got = [(g['module'], g['stage']) for g in results['groups']]
    assert got == [('SE', s) for s in ('c2', 'c3', 'c4', 'c5')] + \
        [('SGE', s) for s in ('c2', 'c3', 'c4', 'c5')] + \
        [('NonLocal', 'c3'), ('NonLocal', 'c4')] + \
        [('DCNv2UnitMask', s) for s in ('c3', 'c4', 'c5')]
    by_key = {(g['module'], g['stage']): g for g in results['groups']}
    # Smoke: 2 images of 64x64, a quarter of ResNet-50's widths; conv2 takes C/4.
    assert by_key['SE', 'c3']['shapes'] == [[2, 128, 8, 8]]
    assert by_key['DCNv2UnitMask', 'c3']['shapes'] == [[2, 32, 8, 8]]
    assert by_key['DCNv2UnitMask', 'c3']['shape'] == '2x32x8x8 (c3 conv2)'


def test_every_row_has_positive_times_params_and_macs(smoke):
    results, _, _ = smoke
    for g in results['groups']:
        for row in g['rows']:
            where = (g['module'], g['stage'], row['impl'])
            assert row['error'] is None, where
            assert row['params'] > 0 and row['saved_bytes'] >= 0, where
            # FlopCounterMode skips elementwise ops: fightingcv's SGE counts 0 MACs
            assert row['macs'] > 0 or row['impl'] == 'fightingcv SpatialGroupEnhance', where
            assert len(row['fwd_samples_ms']) == len(row['fwd_bwd_samples_ms']) == 2, where
            assert all(t > 0 for t in row['fwd_samples_ms'] + row['fwd_bwd_samples_ms']), where
            assert row['fwd_ms'] == statistics.median(row['fwd_samples_ms'])
            assert row['fwd_bwd_ms'] == statistics.median(row['fwd_bwd_samples_ms'])
            assert row['peak_bytes'] is None  # CUDA only


def test_clone_floor_and_ratios(smoke):
    results, _, _ = smoke
    for g in results['groups']:
        assert len(g['clone_samples_ms']) == 2 and g['clone_ms'] > 0
        peers = [r for r in g['rows'] if r['kind'] == 'peer']
        assert peers, g['module']
        fastest_fwd = min(r['fwd_ms'] for r in peers)
        fastest_bwd = min(r['fwd_bwd_ms'] for r in peers)
        assert min(r['fwd_vs_peer'] for r in peers) == pytest.approx(1.0)
        for row in g['rows']:
            assert row['fwd_per_clone'] == pytest.approx(row['fwd_ms'] / g['clone_ms'])
            if row['kind'] == 'reference':
                assert row['fwd_vs_peer'] is None and row['fwd_bwd_vs_peer'] is None
            else:
                assert row['fwd_vs_peer'] == pytest.approx(row['fwd_ms'] / fastest_fwd)
                assert row['fwd_bwd_vs_peer'] == pytest.approx(row['fwd_bwd_ms'] / fastest_bwd)


def test_peers_present_where_expected(smoke):
    results, _, _ = smoke
    for module, expected in PEERS.items():
        for g in _groups(results, module):
            assert {r['impl']: r['kind'] for r in g['rows']} == expected
            assert g['rows'][0]['kind'] == 'ours'


def test_peer_outputs_match_ours_and_params_are_equal(smoke):
    results, _, _ = smoke
    checked = 0
    for g in results['groups']:
        ours = g['rows'][0]
        assert ours['parity'] is None
        for row in g['rows'][1:]:
            if row['kind'] == 'reference':
                assert row['parity'] is None
                continue
            p = row['parity']
            assert p['ok'] and p['max_abs_diff'] <= bench.PARITY_TOL * max(1.0, p['scale']), \
                (g['module'], row['impl'], p)
            assert p['scale'] > 0.1  # random weights: a non-trivial output was compared
            checked += 1
            c = g['shapes'][0][1]
            if row['impl'] == 'fightingcv SEAttention':  # no FC biases
                assert row['params'] == ours['params'] - (c // 16 + c)
            elif row['impl'] == 'timm NonLocalAttn':  # output BN (2 C) instead of no norm
                assert row['params'] == ours['params'] + 2 * c
            else:  # mmdet SELayer, timm SEModule, fightingcv SGE, mmcv NonLocal2d and DCN
                assert row['params'] == ours['params'], (g['module'], row['impl'])
    assert checked == 4 * (2 + TIMM) + 4 + 2 * (1 + TIMM) + 3 * 2


def test_dcn_macs_are_the_same_on_every_path(smoke):
    """The plain-PyTorch path is counted by FlopCounterMode, mmcv's op as its dense conv."""
    results, _, _ = smoke
    for g in _groups(results, 'DCNv2UnitMask'):
        macs = {row['impl']: row['macs'] for row in g['rows']}
        assert macs['ours (torch)'] == macs['ours (mmcv op)'] \
            == macs['mmcv ModulatedDeformConv2dPack'], (g['stage'], macs)
        n, c, h, w = g['shapes'][0]
        dense = n * h * w * c * c * 9
        assert macs['nn.Conv2d 3x3 (replaced conv)'] == dense
        assert macs['ours (torch)'] == dense + n * h * w * 27 * c * 9  # + the offset conv


def test_non_local_macs_count_the_attention(smoke):
    """Four 1x1 convs and two HW x HW products, whichever attention kernel runs."""
    results, _, _ = smoke
    for g in _groups(results, 'NonLocal'):
        macs = {row['impl']: row['macs'] for row in g['rows']}
        n, c, h, w = g['shapes'][0]
        hw, inter = h * w, c // 2
        expected = 4 * n * hw * c * inter + 2 * n * hw * hw * inter
        assert macs['ours'] == macs['mmcv NonLocal2d'] == expected, (g['stage'], macs)


def test_parity_check_is_not_vacuous():
    from mmdet.models.layers import SELayer
    ours, peer = SE(32), SELayer(32, ratio=16)
    x = [torch.randn(2, 32, 5, 5)]
    assert bench.check_parity(ours, peer, peers.parity_se_selayer, x)['ok']
    # without the weight mapping the random weights differ
    assert not bench.check_parity(ours, peer, lambda a, b: ('nothing copied', None), x)['ok']


class _Scale(nn.Module):
    """``y = f(x) * w`` with a per-channel parameter ``w``."""

    def __init__(self, channels, fn=None):
        super().__init__()
        self.w = nn.Parameter(torch.randn(1, channels, 1, 1))
        self.fn = fn

    def forward(self, x):
        return (x if self.fn is None else self.fn(x)) * self.w


def test_saved_bytes_known_cases():
    x = torch.randn(2, 3, 4, 5, requires_grad=True)
    # y = x * w keeps x (for dw) and w (for dx): the input and a parameter, not counted.
    saved, out = bench.saved_tensor_bytes(_Scale(3), [x])
    assert saved == 0 and out.shape == x.shape
    # y = exp(x) * w: exp keeps its result, mul keeps it again (one storage) and w.
    saved, _ = bench.saved_tensor_bytes(_Scale(3, torch.exp), [x])
    assert saved == x.numel() * 4
    # A view of an intermediate counts as its whole storage, once.
    saved, _ = bench.saved_tensor_bytes(_Scale(1, lambda t: torch.exp(t)[:, :1]), [x])
    assert saved == x.numel() * 4
    # Three intermediates: exp's result (kept by exp), the product with a Python
    # scalar (kept by sin; the scalar is not saved) and sin's result (kept for dw).
    saved, _ = bench.saved_tensor_bytes(_Scale(3, lambda t: torch.sin(torch.exp(t) * 2.0)), [x])
    assert saved == 3 * x.numel() * 4


def test_default_shapes_are_resnet50_stage_outputs():
    jobs = {(name, stage): shapes for name, stage, shapes in
            bench.plan(['SE', 'DCNv2UnitMask', 'BlurConv2d', 'ASFF', 'NonLocal'])}
    assert jobs['SE', 'c3'] == [(8, 512, 28, 28)]  # the default c3 shape
    assert jobs['SE', 'c2'] == [(8, 256, 56, 56)] and jobs['SE', 'c5'] == [(8, 2048, 7, 7)]
    assert jobs['DCNv2UnitMask', 'c4'] == [(8, 256, 14, 14)]  # conv2: C/4
    assert jobs['BlurConv2d', 'c3'] == [(8, 128, 56, 56)]  # the stride-2 conv2's input
    assert jobs['ASFF', 'p3'] == [(8, 256, 28, 28), (8, 256, 14, 14), (8, 256, 7, 7)]
    assert sorted(stage for name, stage in jobs if name == 'NonLocal') == ['c3', 'c4']
    scaled = bench.plan(['SE'], stages=['c3'], scale=2)
    assert scaled == [('SE', 'c3', [(8, 512, 56, 56)])]
    custom = bench.plan(['NonLocal', 'CoordConv2d'], shape=(2, 1024, 64, 64))
    assert custom == [('NonLocal', None, [(2, 1024, 64, 64)]),
                      ('CoordConv2d', None, [(2, 256, 64, 64)])]


def test_arguments():
    args = cli.parse_args(['--smoke'])
    assert (args.batch, args.image, args.warmup, args.repeats) == (2, (64, 64), 1, 2)
    args = cli.parse_args(['--smoke', '--repeats', '5', '--only', 'SE', 'SK'])
    assert args.repeats == 5 and args.only == ['SE', 'SK']
    args = cli.parse_args([])
    assert (args.batch, tuple(args.image), args.warmup, args.repeats) == (8, (224, 224), 2, 10)
    for bad in (['--repeats', '0'], ['--only', 'Nope'], ['--shape', '1', '2', '3'],
                ['--shape', '1', '8', '4', '4', '--stages', 'c3'], ['--scale', '-1']):
        with pytest.raises(SystemExit):
            cli.parse_args(bad)
    assert set(peers.MODULES) == {
        'SE', 'CBAM', 'SGE', 'SK', 'NonLocal', 'STN', 'StripPooling', 'CoordConvPlugin',
        'CoordConv2d', 'GhostConv2d', 'BlurConv2d', 'BlurPool2d', 'DCNv2UnitMask', 'ASFF',
        'RFBBlock', 'ASPPBlock', 'MPMBlock'}


def test_sk_per_branch_loop_is_our_function_in_the_common_structure():
    """The SK target's reference: same parameters, same outputs, train and eval."""
    import mmplug
    torch.manual_seed(0)
    ours, loop = mmplug.SK(64), peers.SKPerBranchLoop(64)
    loop.load_state_dict(ours.state_dict())
    x = torch.randn(2, 64, 9, 9)
    for train in (True, False):
        ours.train(train)
        loop.train(train)
        y = ours(x)
        assert y.std() > 0.05  # a non-trivial output
        torch.testing.assert_close(loop(x), y, rtol=1e-5, atol=1e-5)
    assert [(c.impl, c.kind) for c in peers.sk_candidates(64)] == [
        ('ours', 'ours'), ('per-branch loop (our function)', 'peer'),
        ('fightingcv SKAttention', 'peer')] + [('timm SelectiveKernel', 'peer')] * TIMM


@pytest.mark.skipif(not TIMM, reason='timm.layers does not import here (it needs torchvision)')
@pytest.mark.parametrize('module, impl', [('SE', 'timm SEModule'), ('CBAM', 'timm CbamModule'),
                                          ('SK', 'timm SelectiveKernel'),
                                          ('NonLocal', 'timm NonLocalAttn'),
                                          ('BlurPool2d', 'timm BlurPool2d')])
def test_timm_peers_compute_our_function(module, impl):
    c = 64
    candidates = {cand.impl: cand for cand in peers.MODULES[module][2](c)}
    ours, peer = candidates['ours'].build(), candidates[impl].build()
    x = [torch.randn(2, c, 12, 10)]
    assert bench.check_parity(ours, peer, candidates[impl].parity, x)['ok']
    assert not bench.check_parity(ours, peer, lambda a, b: ('nothing copied', None), x)['ok'] \
        or module == 'BlurPool2d'  # no parameters: equal without a mapping


def test_bf16_autocast_and_compile_options():
    results = cli.main(['--smoke', '--device', 'cpu', '--threads', '1', '--no-progress',
                        '--only', 'SE', '--stages', 'c3', '--dtype', 'bf16', '--compile',
                        'aot_eager'])
    meta = results['meta']
    assert (meta['dtype'], meta['compile']) == ('bf16', 'aot_eager')
    assert "bf16 autocast, torch.compile(backend='aot_eager')" in bench.to_markdown(results)
    (group,) = results['groups']
    for row in group['rows']:
        assert row['error'] is None and row['fwd_ms'] > 0 and row['fwd_bwd_ms'] > 0, row
        assert row['parity'] is None or row['parity']['ok']  # parity stays fp32
    args = cli.parse_args(['--compile'])
    assert (args.compile, args.dtype) == ('inductor', 'fp32')
    with pytest.raises(SystemExit):
        cli.parse_args(['--dtype', 'int8'])


def test_parity_runs_without_tf32_and_restores_it():
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        with bench.full_fp32():
            assert not torch.backends.cuda.matmul.allow_tf32
            assert not torch.backends.cudnn.allow_tf32
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
