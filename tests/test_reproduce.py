"""tools/reproduce: smoke runs of the paper reproductions write a table and a figure.

The smoke runs are tiny (seconds); they check the structure of the outputs and the
direction of each result where even a tiny run shows it (CoordConv solves the held-out
quadrant, the plain conv cannot), not the paper's numbers.
"""
import json

import pytest
import torch

from mmplug import BlurConv2d, BlurPool2d

from _harness import load_tool

PNG_MAGIC = b'\x89PNG\r\n\x1a\n'


def _load(name):
    return load_tool(f'reproduce/{name}.py')


def _assert_png(path):
    with open(path, 'rb') as f:
        data = f.read()
    assert data[:8] == PNG_MAGIC and len(data) > 10_000  # a drawn figure, not an empty one


@pytest.fixture(scope='module')
def coordconv_run(tmp_path_factory):
    out = tmp_path_factory.mktemp('coordconv')
    threads = torch.get_num_threads()
    results = _load('coordconv_quadrant').main(['--smoke', '--out-dir', str(out)])
    assert torch.get_num_threads() == threads  # restored after the run
    return results, out


def test_coordconv_quadrant_writes_table_json_and_figure(coordconv_run):
    results, out = coordconv_run
    table = (out / 'coordconv_quadrant.md').read_text(encoding='utf-8')
    assert table.startswith('| model | params | steps | train acc | held-out quadrant acc')
    rows = [line for line in table.splitlines() if line.startswith('| ') and '---' not in line]
    assert [r.split('|')[1].strip() for r in rows[1:]] == ['deconv', 'conv', 'coordconv']
    assert 'Smoke run.' in table and '147 train / 49 held-out' in table
    with open(out / 'coordconv_quadrant.json', encoding='utf-8') as f:
        assert json.load(f)['rows'] == results['rows']
    _assert_png(out / 'coordconv_quadrant.png')


def test_coordconv_quadrant_numbers(coordconv_run):
    results, _ = coordconv_run
    rows = {r['model']: r for r in results['rows']}
    for r in rows.values():
        assert 0 <= r['train_acc'] <= 1 and 0 <= r['test_acc'] <= 1 and r['train_time'] > 0
        assert r['params'] > 0 and r['paper']
    # The paper's result, visible even in 150 steps on a 16x16 canvas.
    assert rows['coordconv']['test_acc'] >= 0.9 and rows['coordconv']['train_acc'] >= 0.9
    # Tiled input, 1x1 convs, no coordinates: equal logits everywhere, never a target.
    assert rows['conv']['test_acc'] == 0 and rows['conv']['train_acc'] == 0
    assert rows['deconv']['test_acc'] < rows['coordconv']['test_acc']
    # CoordConv2d adds 2 input channels to the first 1x1 conv: 2 x 32 weights.
    assert rows['coordconv']['params'] - rows['conv']['params'] == 64
    for model, curve in results['curves'].items():
        assert curve[-1]['step'] == rows[model]['steps']
        assert [c['step'] for c in curve] == sorted({c['step'] for c in curve})


def test_coordconv_quadrant_split_holds_out_one_quadrant():
    tool = _load('coordconv_quadrant')
    for held_out in tool.QUADRANTS:
        split = tool.make_split(64, held_out)
        assert len(split['train_x']) == 3 * 28 * 28 and len(split['test_x']) == 28 * 28
        rows, cols = split['test_ij'][:, 0], split['test_ij'][:, 1]
        assert ((rows >= 32) == held_out.startswith('bottom')).all()
        assert ((cols >= 32) == held_out.endswith('right')).all()
        assert not set(split['train_y'].tolist()) & set(split['test_y'].tolist())
        # (x, y) is the pixel's own CoordConv coordinate.
        assert torch.allclose(split['test_x'][:, 0], (2 * cols - 63) / 63)


@pytest.mark.parametrize('argv, words', [
    (['--size', '48'], ['--size', '48']),
    (['--steps', '0'], ['--steps', '0']),
    (['--threads', '0'], ['--threads', '0']),
    (['--held-out', 'middle'], ['--held-out', 'middle']),
])
def test_coordconv_quadrant_rejects_bad_input(argv, words, capsys):
    with pytest.raises(SystemExit):
        _load('coordconv_quadrant').main(argv)
    err = capsys.readouterr().err
    assert all(w in err for w in words), err


@pytest.fixture(scope='module')
def shapes_run(tmp_path_factory):
    out = tmp_path_factory.mktemp('shift')
    threads = torch.get_num_threads()
    results = _load('shift_consistency').main(['--data', 'shapes', '--smoke', '--out-dir',
                                               str(out)])
    assert torch.get_num_threads() == threads
    return results, out


def test_shift_consistency_shapes_writes_table_json_and_figure(shapes_run):
    results, out = shapes_run
    assert set(results) == {'plain', 'blur'}
    table = (out / 'shift_consistency.md').read_text(encoding='utf-8')
    assert table.startswith('| network | params | train time (s) | val accuracy (centre crop) '
                            '| consistency |')
    assert '| resnet18 plain |' in table and '| resnet18 blur |' in table
    assert 'baseline: 69.74 / 85.11' in table and 'Tri-3: 71.69 / 87.51' in table
    assert 'rectangle, ellipse, triangle, star' in table and 'Smoke run.' in table
    with open(out / 'shift_consistency.json', encoding='utf-8') as f:
        saved = json.load(f)
    assert set(saved) == {'args', 'results', 'wall_time', 'meta'}
    assert saved['results'] == results and saved['meta']['num_val'] > 0
    assert saved['args']['data'] == 'shapes' and saved['wall_time'] > 0
    _assert_png(out / 'shift_consistency.png')


def test_shift_consistency_shapes_numbers(shapes_run):
    results, _ = shapes_run
    for res in results.values():
        for key in ('accuracy', 'consistency', 'random_crop_accuracy'):
            assert 0 <= res[key] <= 1, (key, res[key])
        assert len(res['diagonal_p_correct']) == len(res['diagonal_agreement']) == 9
        assert res['diagonal_agreement'][0] == 1  # shift 0 agrees with itself
        assert all(0 <= p <= 1 for p in res['diagonal_p_correct'])
        assert res['train_time'] > 0
    # BlurConv2d and BlurPool2d add no parameters.
    assert results['plain']['params'] == results['blur']['params']


def test_shift_consistency_blur_variant_is_antialiased_everywhere():
    tool = _load('shift_consistency')
    plain = tool.build('resnet18', 'plain', 3, width=8, num_classes=4)
    blur = tool.build('resnet18', 'blur', 3, width=8, num_classes=4)
    assert plain.state_dict().keys() == blur.state_dict().keys()
    strided = [m for m in blur.modules() if isinstance(m, torch.nn.Conv2d) and m.stride != (1, 1)]
    # The stem, and conv1 and downsample of stages 2-4: conv at stride 1, then the blur.
    assert len(strided) == 1 + 3 * 2
    assert all(isinstance(m, BlurConv2d) and not m.blur_first for m in strided)
    pool = blur.backbone.maxpool  # MaxBlurPool
    assert pool[0].stride == 1 and isinstance(pool[1], BlurPool2d) and pool[1].stride == 2
    x = torch.randn(2, 3, 64, 64)
    assert plain.eval()(x).shape == blur.eval()(x).shape == (2, 4)


def test_shift_consistency_blurpool_variant_follows_the_paper_order():
    tool = _load('shift_consistency')
    plain = tool.build('resnet18', 'plain', 3, width=8, num_classes=4)
    net = tool.build('resnet18', 'blurpool', 3, width=8, num_classes=4)
    assert plain.state_dict().keys() == net.state_dict().keys()
    assert not [m for m in net.modules() if isinstance(m, torch.nn.Conv2d) and m.stride != (1, 1)]
    pools = [m for m in net.modules() if isinstance(m, BlurPool2d)]
    # stem: after the ReLU and after the max pool; stages 2-4: main path and downsample.
    assert len(pools) == 2 + 3 * 2 and all(p.stride == 2 and p.filt_size == 3 for p in pools)


@pytest.mark.parametrize('variant', ['blur', 'blur_first', 'blurpool'])
def test_shift_consistency_variants_without_blur_equal_the_plain_network(variant):
    # filt_size=1 keeps the subsampling and drops the low-pass filter: what is left must be
    # the plain network, so each blur sits at a subsampling and nowhere else.
    tool = _load('shift_consistency')
    plain = tool.build('resnet18', 'plain', 1, width=8, num_classes=4).eval()
    net = tool.build('resnet18', variant, 1, width=8, num_classes=4).eval()
    net.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 67, 64)
    with torch.no_grad():
        torch.testing.assert_close(net(x), plain(x), rtol=1e-4, atol=1e-5)
        smooth = tool.build('resnet18', variant, 3, width=8, num_classes=4).eval()
        smooth.load_state_dict(plain.state_dict())
        assert not torch.allclose(smooth(x), plain(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('model', [[], ['--model', 'resnet18', '--width', '8']])
def test_shift_consistency_noise_mode(model, tmp_path):
    results = _load('shift_consistency').main(
        model + ['--pairs', '4', '--size', '32', '--max-shift', '3', '--batch', '4', '--out',
                 str(tmp_path / 'res.json')])
    assert set(results) == {'plain', 'blur', 'blur_first'}
    for res in results.values():
        assert 0 <= res['consistency'] <= 1 and -1 <= res['cosine'] <= 1
    with open(tmp_path / 'res.json', encoding='utf-8') as f:
        saved = json.load(f)
    assert set(saved) == {'args', 'results', 'wall_time'}
    assert saved['results'] == results and saved['args']['pairs'] == 4


@pytest.mark.parametrize('argv, words', [
    (['--data', 'shapes', '--train-images', '0'], ['--train-images', '0']),
    (['--data', 'shapes', '--epochs', '0'], ['--epochs', '0']),
    (['--data', 'shapes', '--max-shift', '0'], ['--max-shift', '0']),
    (['--data', 'shapes', '--lr', '-1'], ['--lr', '-1']),
])
def test_shift_consistency_rejects_bad_input(argv, words, capsys):
    with pytest.raises(SystemExit):
        _load('shift_consistency').main(argv)
    err = capsys.readouterr().err
    assert all(w in err for w in words), err
